"""StyleGAN-v1 layered generator: z -> background, foreground and mask (the paper's generator).

Mapping decision: as in the original code's default model (`BgFgMask` in
adambielski/perturbed-seg, used by its sample training command), the background and the
object branches each have their own mapping network, both fed the same z. The model still
exposes a single w space by concatenating the two: `mapping(z)` returns
`[w_background | w_object]` of size `w_dim = 2 * latent_dim`, and `synthesis(ws)` reads the
first half of every row of `ws` in the background branch and the second half in the object
branch, so an encoder can invert into w (or w+) without knowing about the split.
"""

import keras
import numpy as np
from keras import ops

from keras_layered import distribute
from keras_layered.config import DataConfig, ModelConfig
from keras_layered.layers.equalized import EqualizedConv2D, EqualizedDense
from keras_layered.models.widths import check_resolution, level_widths

_SLOPE = 0.2  # LeakyReLU slope used throughout StyleGAN.


def _upsample(x):
    """Nearest-neighbour x2 upsampling."""
    return ops.repeat(ops.repeat(x, 2, axis=1), 2, axis=2)  # (B, 2H, 2W, C)


def _blur(x):
    """[1, 2, 1] binomial low-pass that StyleGAN applies after each upsampling conv."""
    taps = np.array([1.0, 2.0, 1.0])
    kernel = np.outer(taps, taps) / 16.0
    kernel = np.tile(kernel[:, :, None, None], (1, 1, x.shape[-1], 1))  # (3, 3, C, 1)
    return ops.depthwise_conv(x, ops.cast(kernel, x.dtype), padding="same", data_format="channels_last")


# Saved generators name their weights after these layers' class names: the private names stay.
class _EqualizedDense(EqualizedDense):
    pass


class _EqualizedConv2D(EqualizedConv2D):
    pass


class _NoiseAdaIN(keras.layers.Layer):
    """Per-pixel noise with learned per-channel strength, LeakyReLU, then AdaIN from w."""

    def __init__(self, style_dim, **kwargs):
        super().__init__(**kwargs)
        self.style_dim = style_dim

    def build(self, input_shape):
        channels = input_shape[-1]
        # Zero strength: noise starts switched off and is learned in, as in StyleGAN.
        self.noise_strength = self.add_weight(name="noise_strength", shape=(channels,), initializer="zeros")
        self.style = _EqualizedDense(2 * channels, name="style")
        self.style.build((None, self.style_dim))

    def call(self, x, noise, w):
        # x: (B, H, W, C), noise: (B, H, W, 1), w: (B, style_dim)
        x = ops.leaky_relu(x + self.noise_strength * noise, _SLOPE)
        mean = ops.mean(x, axis=(1, 2), keepdims=True)
        variance = ops.var(x, axis=(1, 2), keepdims=True)
        x = (x - mean) * ops.rsqrt(variance + 1e-5)
        scale, shift = ops.split(self.style(w)[:, None, None, :], 2, axis=-1)  # (B, 1, 1, C) each
        # 1 + scale: zero-initialised bias gives unit gain at the start.
        return x * (1.0 + scale) + shift

    def get_config(self):
        config = super().get_config()
        config.update(style_dim=self.style_dim)
        return config


class _MappingNetwork(keras.layers.Layer):
    """Pixel-normalised z -> `num_layers` equalized dense layers with LeakyReLU -> w."""

    def __init__(self, num_layers, units, lr_multiplier, **kwargs):
        super().__init__(**kwargs)
        self.num_layers = num_layers
        self.units = units
        self.lr_multiplier = lr_multiplier
        self.dense_layers = [_EqualizedDense(units, lr_multiplier, name=f"dense_{i}") for i in range(num_layers)]

    def build(self, input_shape):
        shape = input_shape
        for layer in self.dense_layers:
            layer.build(shape)
            shape = (*shape[:-1], self.units)

    def call(self, z):
        x = z * ops.rsqrt(ops.mean(ops.square(z), axis=-1, keepdims=True) + 1e-8)
        for layer in self.dense_layers:
            x = ops.leaky_relu(layer(x), _SLOPE)
        return x  # (B, units)

    def get_config(self):
        config = super().get_config()
        config.update(num_layers=self.num_layers, units=self.units, lr_multiplier=self.lr_multiplier)
        return config


class _SynthesisNetwork(keras.layers.Layer):
    """Styled synthesis from a learned 4x4 constant to `out_channels` raw maps.

    Each resolution has two styled layers (conv -> noise -> LeakyReLU -> AdaIN); the 4x4
    one starts from the constant instead of a conv and the others start with nearest
    upsampling, the conv and a blur. Layer i reads style `ws[:, i]`.
    """

    def __init__(self, resolution, style_dim, base_width, min_width, out_channels, **kwargs):
        super().__init__(**kwargs)
        self.resolution = resolution
        self.style_dim = style_dim
        self.base_width = base_width
        self.min_width = min_width
        self.out_channels = out_channels
        self.widths = level_widths(resolution, base_width, min_width)
        # convs[0] is the 4x4 second conv; then (upsampling conv, conv) per higher resolution.
        self.convs = [_EqualizedConv2D(self.widths[0], name="conv_4")]
        for level, width in enumerate(self.widths[1:], start=1):
            size = 4 * 2**level
            self.convs += [_EqualizedConv2D(width, name=f"conv_{size}_up"), _EqualizedConv2D(width, name=f"conv_{size}")]
        self.styles = [_NoiseAdaIN(style_dim, name=f"adain_{i}") for i in range(2 * len(self.widths))]
        # float32 under a mixed-precision policy: the layers, masks and losses stay float32.
        self.to_output = _EqualizedConv2D(out_channels, kernel_size=1, name="to_output", dtype="float32")

    def build(self, input_shape):
        self.constant = self.add_weight(
            name="constant", shape=(1, 4, 4, self.widths[0]), initializer=keras.initializers.RandomNormal(stddev=1.0)
        )
        size, channels = 4, self.widths[0]
        self.styles[0].build((None, size, size, channels))
        for i, conv in enumerate(self.convs):
            if i % 2 == 1:  # upsampling conv: its input is the previous level at double size
                size *= 2
            conv.build((None, size, size, channels))
            channels = conv.filters
            self.styles[i + 1].build((None, size, size, channels))
        self.to_output.build((None, size, size, channels))

    def call(self, ws, noises):
        # ws: (B, num_ws, style_dim); noises: one (B, h, w, 1) map per styled layer.
        batch = ops.shape(ws)[0]
        x = ops.tile(self.constant, (batch, 1, 1, 1))  # (B, 4, 4, C)
        x = self.styles[0](x, noises[0], ws[:, 0])
        for i, conv in enumerate(self.convs):
            if i % 2 == 1:
                x = _blur(conv(_upsample(x)))  # (B, 2H, 2W, C')
            else:
                x = conv(x)
            x = self.styles[i + 1](x, noises[i + 1], ws[:, i + 1])
        return self.to_output(x)  # (B, H, W, out_channels)

    def get_config(self):
        config = super().get_config()
        config.update(
            resolution=self.resolution,
            style_dim=self.style_dim,
            base_width=self.base_width,
            min_width=self.min_width,
            out_channels=self.out_channels,
        )
        return config


@keras.saving.register_keras_serializable(package="keras_layered")
class StyleLayeredGenerator(keras.Model):
    """StyleGAN-v1 layered generator (Bielski & Favaro, 2019).

    Two styled synthesis networks share z: one paints the background (3 channels), the
    other the object (3 foreground channels + 1 mask logit). Each has its own 8-layer
    mapping network (see the module docstring for why and how w is exposed).

    Args:
        resolution: output size in pixels, a power of two in [8, 256].
        latent_dim: size of z and of each branch's w (so `w_dim = 2 * latent_dim`).
        mapping_layers: dense layers per mapping network.
        mapping_lr_multiplier: learning-rate multiplier of the mapping networks.
        base_width: channels at 4x4; halved at every doubling of resolution ...
        min_width: ... but never below this.
        style_mixing_prob: in training, the probability per sample of switching to the w of
            a second random z from a random layer on.
        seed: seed of the generator's own noise and style-mixing draws (weight init follows
            `keras.utils.set_random_seed`). They are per-replica draws (`distribute`): under
            tf.distribute each replica gets its rows of what one device draws for the global batch.

    Call: z (B, latent_dim) -> {"background": (B, H, W, 3) in [-1, 1],
    "foreground": (B, H, W, 3) in [-1, 1], "mask": (B, H, W, 1) in [0, 1]}.
    Per-layer noise is applied in training and at inference.
    """

    def __init__(
        self,
        resolution=DataConfig.resolution,
        latent_dim=ModelConfig.latent_dim,
        mapping_layers=ModelConfig.mapping_layers,
        mapping_lr_multiplier=0.01,
        base_width=ModelConfig.base_width,
        min_width=ModelConfig.min_width,
        style_mixing_prob=ModelConfig.style_mixing_prob,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_resolution(resolution, "StyleLayeredGenerator")
        if not 0.0 <= style_mixing_prob <= 1.0:
            raise ValueError(f"StyleLayeredGenerator: style_mixing_prob must be in [0, 1], got {style_mixing_prob!r}.")
        self.resolution = resolution
        self.latent_dim = latent_dim
        self.mapping_layers = mapping_layers
        self.mapping_lr_multiplier = mapping_lr_multiplier
        self.base_width = base_width
        self.min_width = min_width
        self.style_mixing_prob = style_mixing_prob
        self.seed = seed
        self.w_dim = 2 * latent_dim
        self.num_ws = 2 * len(level_widths(resolution, base_width, min_width))
        # Resolution of each styled layer, i.e. of each noise map.
        self.noise_sizes = [4 * 2 ** (i // 2) for i in range(self.num_ws)]
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.background_mapping = _MappingNetwork(
            mapping_layers, latent_dim, mapping_lr_multiplier, name="background_mapping"
        )
        self.object_mapping = _MappingNetwork(mapping_layers, latent_dim, mapping_lr_multiplier, name="object_mapping")
        self.background_synthesis = _SynthesisNetwork(
            resolution, latent_dim, base_width, min_width, out_channels=3, name="background_synthesis"
        )
        self.object_synthesis = _SynthesisNetwork(
            resolution, latent_dim, base_width, min_width, out_channels=4, name="object_synthesis"
        )
        # Every shape is known from the config: build now, so the weights exist before the first call.
        self.build((None, latent_dim))

    def build(self, input_shape):
        self.background_mapping.build(input_shape)
        self.object_mapping.build(input_shape)
        ws_shape = (input_shape[0], self.num_ws, self.latent_dim)
        self.background_synthesis.build(ws_shape)
        self.object_synthesis.build(ws_shape)

    def _mapping(self, z):
        """z (B, latent_dim) -> w (B, w_dim) = [w_background | w_object]."""
        return ops.concatenate([self.background_mapping(z), self.object_mapping(z)], axis=-1)

    def call(self, z, training=False):
        w = self._mapping(z)  # (B, w_dim)
        if training and self.style_mixing_prob > 0:
            ws = self._mix_styles(z, w)
        else:
            ws = ops.repeat(w[:, None, :], self.num_ws, axis=1)  # (B, num_ws, w_dim)
        # Synthesis, noise included, is the same in training and at inference.
        batch = ops.shape(ws)[0]
        background = self.background_synthesis(ws[..., : self.latent_dim], self._draw_noise(batch))
        obj = self.object_synthesis(ws[..., self.latent_dim :], self._draw_noise(batch))
        return {
            "background": ops.tanh(background),  # (B, H, W, 3)
            "foreground": ops.tanh(obj[..., :3]),  # (B, H, W, 3)
            "mask": ops.sigmoid(obj[..., 3:]),  # (B, H, W, 1)
        }

    def _draw_noise(self, batch):
        return [
            distribute.normal((batch, size, size, 1), self.seed_generator, dtype=self.compute_dtype)
            for size in self.noise_sizes
        ]

    def _mix_styles(self, z, w):
        """Per sample, with probability style_mixing_prob, use the w of a fresh z from a
        random crossover layer in [1, num_ws) on; returns ws (B, num_ws, w_dim)."""
        batch = ops.shape(z)[0]
        w_mix = self._mapping(distribute.normal(ops.shape(z), self.seed_generator, dtype=z.dtype))
        crossover = distribute.randint((batch, 1), self.seed_generator, 1, self.num_ws)
        mixed = distribute.uniform((batch, 1), self.seed_generator) < self.style_mixing_prob
        crossover = ops.where(mixed, crossover, self.num_ws)  # num_ws: no layer switches
        use_mix = ops.arange(self.num_ws)[None, :] >= crossover  # (B, num_ws)
        return ops.where(use_mix[:, :, None], w_mix[:, None, :], w[:, None, :])  # (B, num_ws, w_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            resolution=self.resolution,
            latent_dim=self.latent_dim,
            mapping_layers=self.mapping_layers,
            mapping_lr_multiplier=self.mapping_lr_multiplier,
            base_width=self.base_width,
            min_width=self.min_width,
            style_mixing_prob=self.style_mixing_prob,
            seed=self.seed,
        )
        return config
