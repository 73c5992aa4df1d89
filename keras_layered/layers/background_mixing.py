"""Background mixing: composites over the background of another, independent latent."""

import keras
from keras import ops

from keras_layered import distribute
from keras_layered.config import PerturbConfig
from keras_layered.layers.perturbation import Perturbation


@keras.saving.register_keras_serializable(package="keras_layered")
class BackgroundMixing(Perturbation):
    """Gives a random fraction of the samples the background of the next sample in the batch.

    The latents of a batch are independent, so a swapped row's objects (foreground + mask of z)
    end up over a background drawn from an independent z' (ILSGAN's mixing="layer", Copy-Pasting
    GAN, GANSeg). An object pasted on any background still looks real; a whole scene with a hole
    pasted on another scene does not, so the discriminator rules out the inverted layering (the
    object kept in the background layer, the mask everything around it) that a shared z allows.

    Per sample, with probability `rate`, row i takes row (i + 1) mod B of the batch (under
    tf.distribute, of this replica's rows). Active in training only; rate 0 returns the input.

    Args:
        rate: probability that a sample's background comes from another latent, in [0, 1].
        seed: seed of the layer's own random generator.
    """

    def __init__(self, rate=PerturbConfig.background_mixing, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"BackgroundMixing: rate must be in [0, 1], got {rate}.")
        self.rate = rate

    def call(self, background, training=None):
        if not training or self.rate == 0.0:
            return background
        other = ops.roll(background, shift=-1, axis=0)  # row i <- row i + 1
        swapped = distribute.uniform((ops.shape(background)[0], 1, 1, 1), self.seed_generator) < self.rate
        return ops.where(swapped, other, background)

    def get_config(self):
        config = super().get_config()
        config.update(rate=self.rate)
        return config
