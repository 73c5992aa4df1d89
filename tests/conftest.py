import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras
import pytest


@pytest.fixture(autouse=True)
def float32_policy():
    """Every test starts and ends in float32: building from a config sets Keras' process-global
    dtype policy (`distribute.mixed_precision`, "auto" in configs/synthetic.yaml)."""
    keras.mixed_precision.set_dtype_policy("float32")
    yield
    keras.mixed_precision.set_dtype_policy("float32")
