"""The discriminator: image -> realness logit."""

import keras
from keras import layers

from keras_layered.config import DataConfig, ModelConfig
from keras_layered.layers.equalized import EqualizedConv2D, EqualizedDense
from keras_layered.models.widths import check_resolution, level_widths


@keras.saving.register_keras_serializable(package="keras_layered")
class Discriminator(keras.Model):
    """Strided 4x4 convs with LeakyReLU from full resolution down to 4x4, then a linear logit.
    No normalisation layers, so gradient penalties (R1, WGAN-GP) see a per-sample function.

    Args:
        resolution: input size in pixels, a power of two in [8, 256].
        base_width: channels at the coarsest (4x4) level ...
        min_width: ... halved per level towards full resolution, never below this.
        spectral_norm: wrap every conv / dense in `keras.layers.SpectralNormalization`.
        equalized_lr: equalized learning rate in every conv / dense (`layers.EqualizedConv2D`,
            `EqualizedDense`), as the ProGAN / StyleGAN discriminator of the paper, whose learning
            rate of 1e-3 assumes it. Not together with spectral_norm.

    Call: images (B, H, W, 3) in [-1, 1] -> logits (B, 1).
    """

    def __init__(self, resolution=DataConfig.resolution, base_width=ModelConfig.d_base_width,
                 min_width=ModelConfig.d_min_width, spectral_norm=ModelConfig.spectral_norm,
                 equalized_lr=ModelConfig.d_equalized_lr, **kwargs):
        super().__init__(**kwargs)
        check_resolution(resolution, "Discriminator")
        if spectral_norm and equalized_lr:
            raise ValueError("Discriminator: choose spectral_norm or equalized_lr, not both (each rescales the "
                             "same weights in its own way).")
        self.resolution = resolution
        self.base_width = base_width
        self.min_width = min_width
        self.spectral_norm = spectral_norm
        self.equalized_lr = equalized_lr
        wrap = layers.SpectralNormalization if spectral_norm else (lambda layer: layer)
        if equalized_lr:
            conv, dense = EqualizedConv2D, EqualizedDense
        else:
            def conv(filters, kernel_size, strides=1, **kw):
                return layers.Conv2D(filters, kernel_size, strides=strides, padding="same", **kw)
            dense = layers.Dense
        widths = level_widths(resolution, base_width, min_width)[::-1]  # full res -> 4x4
        blocks = [wrap(conv(widths[0], 3, name="from_rgb")), layers.LeakyReLU(0.2)]
        for i, width in enumerate(widths[1:]):
            blocks.append(wrap(conv(width, 4, strides=2, name=f"down{i}")))
            blocks.append(layers.LeakyReLU(0.2))
        # A float32 logit under a mixed-precision policy: the losses stay float32.
        blocks += [layers.Flatten(), wrap(dense(1, name="logit", dtype="float32"))]
        self.net = keras.Sequential(blocks, name="net")

    def build(self, input_shape):
        self.net.build(input_shape)

    def call(self, images, training=False):
        return self.net(images, training=training)

    def get_config(self):
        config = super().get_config()
        config.update(
            resolution=self.resolution,
            base_width=self.base_width,
            min_width=self.min_width,
            spectral_norm=self.spectral_norm,
            equalized_lr=self.equalized_lr,
        )
        return config
