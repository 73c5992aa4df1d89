"""The encoder: image -> generator latent, the inverse of the frozen generator (the paper's second stage)."""

import keras
from keras import layers

from keras_layered.config import DataConfig, ModelConfig, SegmentConfig
from keras_layered.models.widths import check_resolution, level_widths


@keras.saving.register_keras_serializable(package="keras_layered")
class Encoder(keras.Model):
    """Strided 3x3 convs from full resolution down to 4x4, then two dense layers to the latent.
    No normalisation layers: the same function at training and inference time, on generated and
    on real images alike.

    Args:
        resolution: input size in pixels, a power of two in [8, 256].
        latent_dim: size of the generator's latent z.
        base_width: channels at the coarsest (4x4) level, halved per level towards full
            resolution, never below `min_width`.
        min_width: channels at full resolution.
        hidden_dim: width of the dense layer before the latent.

    Call: images (B, H, W, 3) in [-1, 1] -> latents (B, latent_dim).
    """

    def __init__(self, resolution=DataConfig.resolution, latent_dim=ModelConfig.latent_dim,
                 base_width=SegmentConfig.encoder_base_width, min_width=SegmentConfig.encoder_min_width,
                 hidden_dim=512, **kwargs):
        super().__init__(**kwargs)
        check_resolution(resolution, "Encoder")
        self.resolution = resolution
        self.latent_dim = latent_dim
        self.base_width = base_width
        self.min_width = min_width
        self.hidden_dim = hidden_dim
        widths = level_widths(resolution, base_width, min_width)[::-1]  # full res -> 4x4
        blocks = [layers.Conv2D(widths[0], 3, padding="same", name="from_rgb"), layers.LeakyReLU(0.2)]
        for i, width in enumerate(widths[1:]):
            blocks.append(layers.Conv2D(width, 3, strides=2, padding="same", name=f"down{i}"))
            blocks.append(layers.LeakyReLU(0.2))
            blocks.append(layers.Conv2D(width, 3, padding="same", name=f"conv{i}"))
            blocks.append(layers.LeakyReLU(0.2))
        blocks += [
            layers.Flatten(),
            layers.Dense(hidden_dim, name="hidden"),
            layers.LeakyReLU(0.2),
            layers.Dense(latent_dim, name="latent", dtype="float32"),  # float32 under mixed precision
        ]
        self.net = keras.Sequential(blocks, name="net")

    def build(self, input_shape):
        self.net.build(input_shape)

    def call(self, images, training=False):
        return self.net(images, training=training)

    def get_config(self):
        config = super().get_config()
        config.update(
            resolution=self.resolution,
            latent_dim=self.latent_dim,
            base_width=self.base_width,
            min_width=self.min_width,
            hidden_dim=self.hidden_dim,
        )
        return config
