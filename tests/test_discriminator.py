import keras
import numpy as np
import pytest
from helpers import assert_config_round_trip

from keras_layered.models.discriminator import Discriminator


def images(n, resolution, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, resolution, resolution, 3)).astype("float32")


@pytest.fixture(scope="module")
def discriminators():
    keras.utils.set_random_seed(0)
    return {res: Discriminator(resolution=res, base_width=32, min_width=8) for res in (8, 16)}


def kernel_shape(disc, name):
    return tuple(disc.net.get_layer(name).kernel.shape)


@pytest.mark.parametrize("resolution", [8, 16])
def test_output_shape(discriminators, resolution):
    logits = keras.ops.convert_to_numpy(discriminators[resolution](images(4, resolution)))
    assert logits.shape == (4, 1)
    assert np.all(np.isfinite(logits))
    assert not np.allclose(logits[0], logits[1])  # a per-sample function of the image


def test_width_schedule(discriminators):
    disc = discriminators[16]  # 8 channels at 16 px -> 16 at 8 px -> 32 at 4 px
    assert kernel_shape(disc, "from_rgb") == (3, 3, 3, 8)
    assert kernel_shape(disc, "down0") == (4, 4, 8, 16)
    assert kernel_shape(disc, "down1") == (4, 4, 16, 32)
    assert kernel_shape(disc, "logit") == (4 * 4 * 32, 1)


def test_width_schedule_floored_at_min_width():
    disc = Discriminator(resolution=16, base_width=16, min_width=12)
    disc(images(1, 16))
    assert kernel_shape(disc, "from_rgb") == (3, 3, 3, 12)
    assert kernel_shape(disc, "down0") == (4, 4, 12, 12)
    assert kernel_shape(disc, "down1") == (4, 4, 12, 16)


def test_no_normalization_layers(discriminators):
    disc = discriminators[16]
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in disc.net.layers)
    assert disc.non_trainable_weights == []


@pytest.mark.parametrize("resolution", [12, 512, 4])
def test_bad_resolution_raises(resolution):
    with pytest.raises(ValueError, match="resolution"):
        Discriminator(resolution=resolution, base_width=16, min_width=8)


@pytest.mark.parametrize("spectral_norm", [False, True])
def test_get_config_from_config_round_trip(spectral_norm):
    args = dict(resolution=16, base_width=24, min_width=8, spectral_norm=spectral_norm)
    assert_config_round_trip(Discriminator, args)


def test_keras_save_load_round_trip(discriminators, tmp_path):
    disc = discriminators[16]
    x = images(4, 16, seed=1)
    path = tmp_path / "discriminator.keras"
    disc.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, Discriminator)
    assert loaded.get_config() == disc.get_config()
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded(x)), keras.ops.convert_to_numpy(disc(x)))


def test_spectral_norm_builds_saves_and_loads(tmp_path):
    keras.utils.set_random_seed(0)
    disc = Discriminator(resolution=8, base_width=16, min_width=8, spectral_norm=True)
    x = images(4, 8, seed=2)
    logits = keras.ops.convert_to_numpy(disc(x))
    assert logits.shape == (4, 1) and np.all(np.isfinite(logits))
    wrapped = [layer for layer in disc.net.layers if isinstance(layer, keras.layers.SpectralNormalization)]
    assert len(wrapped) == 3  # from_rgb, down0, logit
    u_vectors = [w for w in disc.weights if "vector_u" in w.path]
    assert len(u_vectors) == 3
    assert all(not w.trainable for w in u_vectors)
    # A training-mode call runs the power iteration, which updates u and renormalises the kernels.
    before = [keras.ops.convert_to_numpy(w) for w in u_vectors]
    disc(x, training=True)
    assert any(not np.allclose(b, keras.ops.convert_to_numpy(w)) for b, w in zip(before, u_vectors))

    path = tmp_path / "sn_discriminator.keras"
    disc.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.spectral_norm is True
    assert len(loaded.weights) == len(disc.weights)
    assert len([w for w in loaded.weights if "vector_u" in w.path]) == 3
    for a, b in zip(loaded.weights, disc.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b), err_msg=b.path)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded(x)), keras.ops.convert_to_numpy(disc(x)))
