"""Background contrast jitter: the paper's second, optional perturbation."""

import keras
from keras import ops

from keras_layered import distribute
from keras_layered.config import PerturbConfig
from keras_layered.layers.perturbation import Perturbation


@keras.saving.register_keras_serializable(package="keras_layered")
class BackgroundContrastJitter(Perturbation):
    """Scales each background's contrast by a random factor around its own mean.

    Per sample c ~ U[1 - strength, 1 + strength]; bg' = (bg - mean) * c + mean with the mean per
    image and channel, then clipped to that image's own per-channel [min, max], so the jitter
    never invents values the generator did not produce. Active in training only.

    Args:
        strength: half-width of the contrast factor's range, in [0, 1).
        seed: seed of the layer's own random generator.
    """

    def __init__(self, strength=PerturbConfig.bg_contrast_jitter, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        if not 0.0 <= strength < 1.0:
            raise ValueError(
                f"BackgroundContrastJitter: strength must be in [0, 1), got {strength}."
            )
        self.strength = strength

    def call(self, background, training=None):
        if not training or self.strength == 0.0:
            return background
        batch = ops.shape(background)[0]
        factor = distribute.uniform(
            (batch, 1, 1, 1), self.seed_generator, 1.0 - self.strength, 1.0 + self.strength
        )
        mean = ops.mean(background, axis=(1, 2), keepdims=True)  # (B, 1, 1, C)
        low = ops.min(background, axis=(1, 2), keepdims=True)
        high = ops.max(background, axis=(1, 2), keepdims=True)
        jittered = (background - mean) * ops.cast(factor, background.dtype) + mean
        return ops.clip(jittered, low, high)

    def get_config(self):
        config = super().get_config()
        config.update(strength=self.strength)
        return config
