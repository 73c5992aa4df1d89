"""The layered generator: z -> background, foreground and mask (DCGAN-style, fast on CPU)."""

import keras
from keras import layers, ops

from keras_layered.config import DataConfig, ModelConfig, choices
from keras_layered.models.widths import check_resolution, level_widths


def _branch(widths, norm, upsampling, channels, name):
    """Dense to 4x4, then per level (x2 upsampling -> norm -> LeakyReLU), then a 3x3 conv to `channels`.
    The x2 upsampling is "nearest" (repeat, then a 3x3 conv) or "transposed" (a 4x4 stride-2
    transposed conv: 16 instead of 4 x 9 multiply-adds per input pixel and channel pair, and no
    repeated tensor to write)."""
    stack = [
        layers.Dense(4 * 4 * widths[0], name=f"{name}_dense"),
        layers.Reshape((4, 4, widths[0]), name=f"{name}_reshape"),
        layers.LeakyReLU(0.2, name=f"{name}_act"),
    ]
    for i, width in enumerate(widths[1:]):
        if upsampling == "nearest":
            stack.append(layers.UpSampling2D(2, name=f"{name}_up{i}"))
            stack.append(layers.Conv2D(width, 3, padding="same", use_bias=norm == "none", name=f"{name}_conv{i}"))
        else:
            stack.append(layers.Conv2DTranspose(width, 4, strides=2, padding="same", use_bias=norm == "none",
                                                name=f"{name}_conv{i}"))
        if norm == "batch":
            stack.append(layers.BatchNormalization(momentum=0.9, name=f"{name}_bn{i}"))
        stack.append(layers.LeakyReLU(0.2, name=f"{name}_act{i}"))
    # float32 under a mixed-precision policy: the layers, masks and losses stay float32.
    stack.append(layers.Conv2D(channels, 3, padding="same", name=f"{name}_out", dtype="float32"))
    return keras.Sequential(stack, name=name)


@keras.saving.register_keras_serializable(package="keras_layered")
class LayeredGenerator(keras.Model):
    """Two DCGAN-like synthesis branches sharing the latent z: one paints the background, the
    other the object layer (foreground RGB + mask logit).

    Args:
        resolution: output size in pixels, a power of two in [8, 256].
        latent_dim: size of z.
        base_width: channels at 4x4; halved at every doubling of resolution ...
        min_width: ... but never below this.
        norm: "batch" (BatchNormalization after each conv) or "none".
        upsampling: "nearest" (x2 repeat, then a 3x3 conv) or "transposed" (a 4x4 stride-2
            transposed conv, DCGAN's; fewer FLOPs).

    Call: z (B, latent_dim) -> {"background": (B, H, W, 3) in [-1, 1],
    "foreground": (B, H, W, 3) in [-1, 1], "mask": (B, H, W, 1) in [0, 1]}.
    """

    def __init__(self, resolution=DataConfig.resolution, latent_dim=ModelConfig.latent_dim,
                 base_width=ModelConfig.base_width, min_width=ModelConfig.min_width, norm=ModelConfig.norm,
                 upsampling=ModelConfig.upsampling, **kwargs):
        super().__init__(**kwargs)
        check_resolution(resolution, "LayeredGenerator")
        if norm not in choices("model.norm"):
            raise ValueError(f"LayeredGenerator: norm must be one of {', '.join(choices('model.norm'))}, got {norm!r}.")
        if upsampling not in choices("model.upsampling"):
            raise ValueError(f"LayeredGenerator: upsampling must be one of {', '.join(choices('model.upsampling'))}, "
                             f"got {upsampling!r}.")
        self.resolution = resolution
        self.latent_dim = latent_dim
        self.base_width = base_width
        self.min_width = min_width
        self.norm = norm
        self.upsampling = upsampling
        widths = level_widths(resolution, base_width, min_width)
        self.background_branch = _branch(widths, norm, upsampling, 3, "background")
        self.object_branch = _branch(widths, norm, upsampling, 4, "object")  # foreground RGB + mask logit

    def build(self, input_shape):
        self.background_branch.build(input_shape)
        self.object_branch.build(input_shape)

    def call(self, z, training=False):
        background = self.background_branch(z, training=training)  # (B, H, W, 3)
        obj = self.object_branch(z, training=training)  # (B, H, W, 4)
        return {
            "background": ops.tanh(background),
            "foreground": ops.tanh(obj[..., :3]),
            "mask": ops.sigmoid(obj[..., 3:]),
        }

    def get_config(self):
        config = super().get_config()
        config.update(
            resolution=self.resolution,
            latent_dim=self.latent_dim,
            base_width=self.base_width,
            min_width=self.min_width,
            norm=self.norm,
            upsampling=self.upsampling,
        )
        return config
