"""Encoder followed by the frozen generator: image -> latent -> layers (the paper's segmentation path)."""

import keras

from keras_layered.config import SegmentConfig
from keras_layered.layers import composite
from keras_layered.models.latent_refinement import refine_latents


@keras.saving.register_keras_serializable(package="keras_layered")
class GeneratorInversion(keras.Model):
    """Decodes the encoder's latent for an image with the generator, unshifted.

    Args:
        encoder: images (B, H, W, 3) in [-1, 1] -> latents (B, latent_dim).
        generator: latents -> {"background", "foreground", "mask"}; it is not trained through
            this model (the encoder trainer freezes it; this model only reads it).
        refine_steps: at inference (`training=False`), this many Adam steps refine each image's
            latent to reconstruct it better (`refine_latents`); 0 = the encoder's latent as is.
        refine_learning_rate: the step size of that refinement.

    Call: images -> {"latent", "background", "foreground", "mask", "composite"}; "composite" is the
    reconstruction of the input and "mask" its segmentation.
    """

    def __init__(self, encoder, generator, refine_steps=SegmentConfig.refine_steps,
                 refine_learning_rate=SegmentConfig.refine_lr, **kwargs):
        super().__init__(**kwargs)
        if encoder.latent_dim != generator.latent_dim:
            raise ValueError(
                f"GeneratorInversion: the encoder outputs {encoder.latent_dim} values but the generator "
                f"takes latents of size {generator.latent_dim}; build the encoder with latent_dim="
                f"{generator.latent_dim}."
            )
        if encoder.resolution != generator.resolution:
            raise ValueError(
                f"GeneratorInversion: the encoder reads {encoder.resolution} px images but the generator "
                f"paints {generator.resolution} px; build the encoder with resolution={generator.resolution}."
            )
        self.encoder = encoder
        self.generator = generator
        self.resolution = generator.resolution
        self.refine_steps = refine_steps
        self.refine_learning_rate = refine_learning_rate

    def build(self, input_shape):
        # Sub-models may arrive built (a trained generator); build only what is not.
        if not self.encoder.built:
            self.encoder.build(input_shape)
        if not self.generator.built:
            self.generator.build((None, self.generator.latent_dim))

    def call(self, images, training=False):
        latent = self.encoder(images, training=training)
        if self.refine_steps and not training:
            latent = refine_latents(self.generator, latent, images, self.refine_steps, self.refine_learning_rate)
        layers = self.generator(latent, training=False)  # BatchNorm statistics stay frozen
        return {
            "latent": latent,
            **layers,
            "composite": composite(layers["background"], layers["foreground"], layers["mask"]),
        }

    def get_config(self):
        config = super().get_config()
        config.update(
            encoder=keras.saving.serialize_keras_object(self.encoder),
            generator=keras.saving.serialize_keras_object(self.generator),
            refine_steps=self.refine_steps,
            refine_learning_rate=self.refine_learning_rate,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["encoder"] = keras.saving.deserialize_keras_object(config["encoder"])
        config["generator"] = keras.saving.deserialize_keras_object(config["generator"])
        return cls(**config)
