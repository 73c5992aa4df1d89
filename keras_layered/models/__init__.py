from keras_layered.models.discriminator import Discriminator
from keras_layered.models.layered_generator import LayeredGenerator
from keras_layered.models.style_generator import StyleLayeredGenerator

__all__ = ["Discriminator", "LayeredGenerator", "StyleLayeredGenerator"]
