"""Colour jitter of one layer of a composite (the distilled U-Net's training images)."""

import keras
from keras import ops

from keras_layered import distribute
from keras_layered.config import SegmentConfig
from keras_layered.layers.perturbation import Perturbation


@keras.saving.register_keras_serializable(package="keras_layered")
class ColorJitter(Perturbation):
    """Random per-sample, per-channel gain and offset of images in [-1, 1].

    x' = clip(x * g + o, -1, 1), with g ~ U[1 - strength, 1 + strength] and
    o ~ U[-strength, strength] drawn per sample and channel. Called on the foreground and the
    background of a generated composite separately, it gives the object and its surroundings
    colours the generator did not pair: a segmenter taught on such composites must find the
    object by its outline and its contrast with what surrounds it, not by the few colour schemes
    one generator happens to draw. Active in training only.

    Args:
        strength: half-width of the gain's and the offset's ranges, in [0, 1].
        seed: seed of the layer's own random generator.
    """

    def __init__(self, strength=SegmentConfig.layer_jitter, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"ColorJitter: strength must be in [0, 1], got {strength}.")
        self.strength = strength

    def call(self, images, training=None):
        if not training or self.strength == 0.0:
            return images
        shape = (ops.shape(images)[0], 1, 1, ops.shape(images)[-1])
        s = self.strength
        gain = distribute.uniform(shape, self.seed_generator, 1.0 - s, 1.0 + s)
        offset = distribute.uniform(shape, self.seed_generator, -s, s)
        jittered = ops.cast(images, "float32") * gain + offset
        return ops.cast(ops.clip(jittered, -1.0, 1.0), images.dtype)

    def get_config(self):
        config = super().get_config()
        config.update(strength=self.strength)
        return config
