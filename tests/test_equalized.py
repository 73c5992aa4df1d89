"""Equalized learning rate: the layers (values by hand, against Keras' own layers), the
discriminator that uses them, and the config key that turns them on."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import assert_config_round_trip

from keras_layered.config import load_config
from keras_layered.errors import ConfigError
from keras_layered.layers import EqualizedConv2D, EqualizedDense
from keras_layered.models.discriminator import Discriminator
from keras_layered.recipes import recipe

PAPER_RECIPES = ["cub_64", "cub_128", "flowers_64", "flowers_128", "lsun_car_64", "lsun_car_128"]


def numpy(x):
    return keras.ops.convert_to_numpy(x)


def test_dense_scales_kernel_and_bias_by_hand():
    layer = EqualizedDense(2, lr_multiplier=0.5)
    layer.build((None, 3))
    layer.kernel.assign([[1.0, 2.0], [0.0, -1.0], [4.0, 0.5]])
    layer.bias.assign([2.0, -4.0])
    x = np.array([[1.0, 1.0, 1.0], [2.0, 0.0, -1.0]], "float32")
    scale = 0.5 * math.sqrt(2.0 / 3)  # lr_multiplier x He constant of fan-in 3
    expected = np.array([[5.0, 1.5], [-2.0, 3.5]]) * scale + np.array([1.0, -2.0])  # bias x 0.5
    np.testing.assert_allclose(numpy(layer(x)), expected, rtol=1e-6)


def test_dense_initial_scale_is_he_normal():
    keras.utils.set_random_seed(0)
    layer = EqualizedDense(256, lr_multiplier=0.01)
    layer.build((None, 512))
    stored = numpy(layer.kernel)
    assert stored.std() == pytest.approx(100.0, rel=0.02)  # N(0, 1 / lr_multiplier)
    assert (stored * layer.kernel_scale).std() == pytest.approx(math.sqrt(2.0 / 512), rel=0.02)
    np.testing.assert_array_equal(numpy(layer.bias), 0.0)


@pytest.mark.parametrize("strides,kernel_size", [(1, 3), (2, 4), (1, 1)])
def test_conv_is_keras_conv_with_the_he_scaled_kernel(strides, kernel_size):
    keras.utils.set_random_seed(1)
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 5)).astype("float32")
    layer = EqualizedConv2D(6, kernel_size, strides=strides)
    layer.build(x.shape)
    layer.bias.assign(np.arange(6, dtype="float32"))
    reference = keras.layers.Conv2D(6, kernel_size, strides=strides, padding="same")
    reference.build(x.shape)
    scale = math.sqrt(2.0 / (kernel_size**2 * 5))
    assert layer.kernel_scale == pytest.approx(scale)
    reference.set_weights([numpy(layer.kernel) * scale, np.arange(6, dtype="float32")])
    y = numpy(layer(x))
    assert y.shape == (2, 8 // strides, 8 // strides, 6)
    assert tuple(layer.compute_output_shape(x.shape)) == y.shape
    np.testing.assert_allclose(y, numpy(reference(x)), atol=1e-5)


def test_gradient_of_the_stored_kernel_is_he_scaled():
    # Adam's steps have a fixed size per stored weight: the effective weight then moves by the
    # He constant times that, in every layer alike (the point of the equalized learning rate).
    layer = EqualizedConv2D(3, 3)
    x = tf.constant(np.random.default_rng(1).normal(size=(1, 4, 4, 2)).astype("float32"))
    layer.build(x.shape)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(x) ** 2)
    stored_grad = tape.gradient(loss, layer.kernel)
    effective = tf.Variable(layer.kernel * layer.kernel_scale)
    with tf.GradientTape() as tape:
        y = tf.nn.conv2d(x, effective, 1, "SAME") + layer.bias
        loss = tf.reduce_sum(y**2)
    np.testing.assert_allclose(numpy(stored_grad), numpy(tape.gradient(loss, effective)) * layer.kernel_scale,
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cls,args", [
    (EqualizedDense, dict(units=7, lr_multiplier=0.01)),
    (EqualizedConv2D, dict(filters=5, kernel_size=4, strides=2)),
])
def test_layer_config_round_trip(cls, args):
    assert_config_round_trip(cls, args)


def test_dense_rejects_a_non_positive_lr_multiplier():
    with pytest.raises(ValueError, match="lr_multiplier must be > 0, got 0"):
        EqualizedDense(4, lr_multiplier=0)


def test_equalized_discriminator_uses_the_layers_and_round_trips(tmp_path):
    keras.utils.set_random_seed(0)
    disc = Discriminator(resolution=16, base_width=32, min_width=8, equalized_lr=True)
    x = np.random.default_rng(2).uniform(-1, 1, (4, 16, 16, 3)).astype("float32")
    logits = numpy(disc(x))
    assert logits.shape == (4, 1) and np.all(np.isfinite(logits))
    kinds = {layer.name: type(layer) for layer in disc.net.layers}
    assert kinds["from_rgb"] is EqualizedConv2D and kinds["down0"] is EqualizedConv2D
    assert kinds["logit"] is EqualizedDense
    assert disc.net.get_layer("down1").strides == 2
    assert tuple(disc.net.get_layer("down1").kernel.shape) == (4, 4, 16, 32)  # the same widths as without
    path = tmp_path / "discriminator.keras"
    disc.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.equalized_lr is True
    np.testing.assert_array_equal(numpy(loaded(x)), logits)
    assert_config_round_trip(Discriminator, dict(resolution=16, base_width=32, min_width=8, equalized_lr=True))


def test_discriminator_refuses_equalized_lr_with_spectral_norm():
    with pytest.raises(ValueError, match="spectral_norm or equalized_lr, not both"):
        Discriminator(resolution=8, base_width=16, min_width=8, spectral_norm=True, equalized_lr=True)


def test_config_refuses_equalized_lr_with_spectral_norm():
    with pytest.raises(ConfigError, match="model.d_equalized_lr must be false with model.spectral_norm=true"):
        load_config(recipe("cub_64"), ["model.spectral_norm=true"])


@pytest.mark.parametrize("name", PAPER_RECIPES)
def test_paper_recipes_use_the_papers_discriminator_and_background_mixing(name):
    cfg = load_config(recipe(name))
    assert cfg.model.d_equalized_lr is True
    assert cfg.perturb.background_mixing == 1.0
    assert cfg.train.d_lr == pytest.approx(1e-3)  # the learning rate the equalized layers go with


def test_the_default_discriminator_is_unchanged():
    assert load_config(recipe("synthetic")).model.d_equalized_lr is False
    disc = Discriminator(resolution=8, base_width=16, min_width=8)
    disc(np.zeros((1, 8, 8, 3), "float32"))
    assert all(type(layer) is not EqualizedConv2D for layer in disc.net.layers)
