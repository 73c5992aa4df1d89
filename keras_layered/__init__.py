"""keras-layered: unsupervised object segmentation with perturbed layered GANs in Keras 3."""

__version__ = "0.1.0"
