from keras_layered.models.discriminator import Discriminator
from keras_layered.models.encoder import Encoder
from keras_layered.models.generator_inversion import GeneratorInversion
from keras_layered.models.layered_generator import LayeredGenerator
from keras_layered.models.mask_ensemble import MaskEnsemble
from keras_layered.models.segmenter import Segmenter
from keras_layered.models.style_generator import StyleLayeredGenerator
from keras_layered.models.unet import UNet

__all__ = [
    "Discriminator",
    "Encoder",
    "GeneratorInversion",
    "LayeredGenerator",
    "MaskEnsemble",
    "Segmenter",
    "StyleLayeredGenerator",
    "UNet",
]
