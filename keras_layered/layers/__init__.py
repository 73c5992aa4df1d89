from keras_layered.layers.background_contrast_jitter import BackgroundContrastJitter
from keras_layered.layers.background_mixing import BackgroundMixing
from keras_layered.layers.color_jitter import ColorJitter
from keras_layered.layers.composite import composite
from keras_layered.layers.equalized import EqualizedConv2D, EqualizedDense
from keras_layered.layers.largest_component import LargestComponent
from keras_layered.layers.random_shift import RandomShift, shift

__all__ = [
    "BackgroundContrastJitter", "BackgroundMixing", "ColorJitter", "EqualizedConv2D", "EqualizedDense", "LargestComponent", "RandomShift",
    "composite", "shift",
]
