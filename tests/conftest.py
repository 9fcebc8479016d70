"""Shared test setup: quiet TensorFlow logs; two logical CPU devices for replica tests.

The devices must be configured before TensorFlow initialises its runtime, so
this runs at collection time, before any test creates a tensor.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    _cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
