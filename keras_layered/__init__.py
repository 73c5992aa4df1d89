"""keras-layered: unsupervised object segmentation with perturbed layered GANs in Keras 3."""

# Registers the model classes, so `keras.saving.load_model` opens saved models after
# `import keras_layered`.
from keras_layered import models  # noqa: F401

__version__ = "0.1.0"
