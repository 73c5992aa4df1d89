"""Equalized learning rate (Karras et al. 2018): weights stored at unit scale, He-scaled at runtime.

With Adam, whose steps have about the same size for every weight, a weight stored N(0, 1) and
multiplied by its layer's He constant sqrt(2 / fan_in) in the forward pass learns at the same
relative speed in every layer, whatever its fan-in. The ProGAN / StyleGAN generators and
discriminators, the paper's among them, rely on it, and their learning rate of 1e-3 assumes it.
"""

import math

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_layered")
class EqualizedDense(keras.layers.Layer):
    """Dense layer with equalized learning rate.

    The stored kernel is N(0, 1 / lr_multiplier) and is scaled at runtime by
    lr_multiplier * sqrt(2 / fan_in), so Adam steps act lr_multiplier times more slowly on the
    effective weights while their initial scale is He-normal; the bias (stored 0) is scaled by
    lr_multiplier.

    Args:
        units: output size.
        lr_multiplier: learning-rate multiplier (StyleGAN's mapping network: 0.01), > 0.
    """

    def __init__(self, units, lr_multiplier=1.0, **kwargs):
        super().__init__(**kwargs)
        if not lr_multiplier > 0:
            raise ValueError(f"EqualizedDense: lr_multiplier must be > 0, got {lr_multiplier!r}.")
        self.units = units
        self.lr_multiplier = lr_multiplier

    def build(self, input_shape):
        fan_in = input_shape[-1]
        self.kernel_scale = self.lr_multiplier * math.sqrt(2.0 / fan_in)
        self.kernel = self.add_weight(
            name="kernel",
            shape=(fan_in, self.units),
            initializer=keras.initializers.RandomNormal(stddev=1.0 / self.lr_multiplier),
        )
        self.bias = self.add_weight(name="bias", shape=(self.units,), initializer="zeros")

    def call(self, x):
        return ops.matmul(x, self.kernel * self.kernel_scale) + self.bias * self.lr_multiplier

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def get_config(self):
        config = super().get_config()
        config.update(units=self.units, lr_multiplier=self.lr_multiplier)
        return config


@keras.saving.register_keras_serializable(package="keras_layered")
class EqualizedConv2D(keras.layers.Layer):
    """"Same"-padded 2D convolution (channels last) with equalized learning rate: the kernel is
    stored N(0, 1) and multiplied by sqrt(2 / (kernel_size^2 x input channels)) in the forward
    pass; the bias is stored as is, 0 at the start.

    Args:
        filters: output channels.
        kernel_size: side of the square kernel.
        strides: 1, or 2 to halve the resolution (as `keras.layers.Conv2D`'s "same" padding).
    """

    def __init__(self, filters, kernel_size=3, strides=1, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.kernel_size = kernel_size
        self.strides = strides

    def build(self, input_shape):
        in_channels = input_shape[-1]
        self.kernel_scale = math.sqrt(2.0 / (self.kernel_size**2 * in_channels))
        self.kernel = self.add_weight(
            name="kernel",
            shape=(self.kernel_size, self.kernel_size, in_channels, self.filters),
            initializer=keras.initializers.RandomNormal(stddev=1.0),
        )
        self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer="zeros")

    def call(self, x):
        x = ops.conv(x, self.kernel * self.kernel_scale, strides=self.strides, padding="same",
                     data_format="channels_last")
        return x + self.bias

    def compute_output_shape(self, input_shape):
        batch, height, width, _ = input_shape
        size = [None if side is None else -(-side // self.strides) for side in (height, width)]
        return (batch, *size, self.filters)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, kernel_size=self.kernel_size, strides=self.strides)
        return config
