"""Shared test setup: quiet TensorFlow logging, float64 tolerance helpers."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
