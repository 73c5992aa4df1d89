"""keras-layered: unsupervised object segmentation with perturbed layered GANs in Keras 3."""

# oneDNN on where it is faster (AVX2 + FMA CPUs), before TensorFlow loads: TensorFlow reads the
# setting at import (`kernels`; a TF_ENABLE_ONEDNN_OPTS set by the user wins).
from keras_layered import kernels

kernels.configure_onednn("auto")

# Registers the model classes, so `keras.saving.load_model` opens saved models after
# `import keras_layered`.
from keras_layered import models  # noqa: F401

__version__ = "0.1.0"
