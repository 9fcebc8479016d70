"""Shared test setup: quiet TensorFlow logs; two logical CPU devices for replica tests.

The devices must be configured before TensorFlow initialises its runtime, so
this runs at collection time, before any test creates a tensor.
"""
import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    _cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups off the markers
def pytest_collection_modifyitems(items):
    """Tests sharing an expensive module fixture (a training run) run on one xdist worker
    (`--dist loadgroup` in setup.cfg), so that fixture is built once per suite, not once
    per worker; the slow tests are scheduled first."""
    for item in items:
        if "smoke_run" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("smoke_run"))
    # The longest tests (and the shared run) start first, so that neither worker is left
    # with a long test while the other has finished: xdist hands out work in this order.
    items.sort(key=lambda item: not (item.get_closest_marker("slow")
                                     or item.get_closest_marker("xdist_group")))


@pytest.fixture(scope="session")
def smoke_dataset(tmp_path_factory):
    """The `smoke` config's dataset (L = 8), generated once and only read by tests."""
    from tf_holstein import datagen
    from tf_holstein.configs import get_config

    return datagen.generate(get_config("smoke").data, tmp_path_factory.mktemp("smoke_data"),
                            progress=False)


@pytest.fixture(scope="session")
def smoke_meta(smoke_dataset):
    from tf_holstein import records

    return records.read_meta(smoke_dataset)


@pytest.fixture(scope="session")
def perturbed_cnn(smoke_meta):
    """A tiny CNN whose output conv has small random weights, so that a step changes
    every variable (an untrained one is the identity)."""
    import keras
    import numpy as np

    from tf_holstein import models
    from tf_holstein.configs import ModelConfig

    keras.utils.set_random_seed(1)
    model = models.build_model(ModelConfig(), smoke_meta["scales"])
    conv = model.cnn.network.output_conv
    conv.kernel.assign(0.05 * np.random.default_rng(0).normal(size=conv.kernel.shape))
    return model
