"""Tests of `BackgroundContrastJitter` (the optional background perturbation)."""

import keras
import numpy as np
import pytest

from keras_layered.layers import BackgroundContrastJitter

# One 1 x 4 image, two channels with different statistics.
# Channel 0: [0, 0.1, 0.2, 1.0], mean 0.325; channel 1: [2, 3, 3.5, 5], mean 3.375.
# Pixel 2 sits close to the mean in both channels (-0.125 and +0.125), so for any factor
# c <= 1.5 it stays inside [min, max] and the factor can be read back from it exactly.
PATTERN = np.array([[[0.0, 2.0], [0.1, 3.0], [0.2, 3.5], [1.0, 5.0]]], np.float64)  # (1, 4, 2)
PROBE = 2


def pattern_batch(batch, rng):
    """The pattern, scaled and offset differently per sample and channel (same geometry)."""
    scale = rng.uniform(0.5, 2.0, size=(batch, 1, 1, 2))
    offset = rng.uniform(-1.0, 1.0, size=(batch, 1, 1, 2))
    return (PATTERN[None] * scale + offset).astype(np.float32)


def recovered_factors(x, out):
    """c = (out - mean) / (in - mean) at the probe pixel, per sample and channel: (B, 2)."""
    mean = x.mean(axis=(1, 2))
    return (out[:, 0, PROBE] - mean) / (x[:, 0, PROBE] - mean)


def expected_output(x, factor):
    """clip((x - mean) * c + mean, per-image per-channel min, max) with c per sample."""
    x = x.astype(np.float64)
    mean = x.mean(axis=(1, 2), keepdims=True)
    low = x.min(axis=(1, 2), keepdims=True)
    high = x.max(axis=(1, 2), keepdims=True)
    return np.clip((x - mean) * factor[:, None, None, None] + mean, low, high)


def test_factor_range_and_variation():
    strength = 0.5
    layer = BackgroundContrastJitter(strength=strength, seed=0)
    x = pattern_batch(512, np.random.default_rng(0))
    out = np.asarray(layer(x, training=True))
    c = recovered_factors(x.astype(np.float64), out.astype(np.float64))
    # One factor per image, shared by its channels.
    np.testing.assert_allclose(c[:, 0], c[:, 1], atol=1e-4)
    c = c[:, 0]
    assert np.all(c >= 1 - strength - 1e-4) and np.all(c <= 1 + strength + 1e-4)
    # Uniform over the whole range: both ends approached, both sides of 1 used.
    assert c.min() < 1 - strength + 0.05 and c.max() > 1 + strength - 0.05
    assert 0.35 < np.mean(c < 1) < 0.65
    assert c.std() > 0.2  # U[0.5, 1.5] has std 0.289


def test_output_matches_formula_for_the_recovered_factor():
    layer = BackgroundContrastJitter(strength=0.5, seed=1)
    x = pattern_batch(64, np.random.default_rng(1))
    out = np.asarray(layer(x, training=True)).astype(np.float64)
    c = recovered_factors(x.astype(np.float64), out)[:, 0]
    np.testing.assert_allclose(out, expected_output(x, c), atol=1e-5)
    # Hand check of one case: c > 1 clips the extremes of channel 0 to its own [0, 1] range.
    # x = [0, 0.1, 0.2, 1.0], mean 0.325, c = 1.4 -> [-0.13, 0.01, 0.15, 1.275] -> clipped.
    hand = expected_output(PATTERN[None], np.array([1.4]))[0, 0, :, 0]
    np.testing.assert_allclose(hand, [0.0, 0.325 - 0.225 * 1.4, 0.325 - 0.125 * 1.4, 1.0])


def test_output_within_each_images_channel_range():
    layer = BackgroundContrastJitter(strength=0.9, seed=2)
    rng = np.random.default_rng(2)
    # Different ranges per image and channel, so a global or per-image clip would be caught.
    x = (rng.normal(size=(32, 6, 6, 3)) * rng.uniform(0.1, 3.0, size=(32, 1, 1, 3))
         + rng.uniform(-2, 2, size=(32, 1, 1, 3))).astype(np.float32)
    out = np.asarray(layer(x, training=True))
    assert out.shape == x.shape and out.dtype == x.dtype
    low, high = x.min(axis=(1, 2), keepdims=True), x.max(axis=(1, 2), keepdims=True)
    assert np.all(out >= low) and np.all(out <= high)
    assert not np.allclose(out, x)  # it did something


def test_mean_preserved_when_clipping_cannot_bind():
    # For c <= 1 every value moves toward its mean, so the clip never binds and the per-image,
    # per-channel mean is exactly preserved.
    layer = BackgroundContrastJitter(strength=0.5, seed=3)
    x = pattern_batch(256, np.random.default_rng(3))
    out = np.asarray(layer(x, training=True)).astype(np.float64)
    c = recovered_factors(x.astype(np.float64), out)[:, 0]
    shrunk = c <= 1.0
    assert 50 < shrunk.sum() < 206
    np.testing.assert_allclose(
        out[shrunk].mean(axis=(1, 2)), x[shrunk].astype(np.float64).mean(axis=(1, 2)), atol=1e-5
    )
    # And the contrast really changed: the spread is scaled by c.
    np.testing.assert_allclose(
        out[shrunk].std(axis=(1, 2)), x[shrunk].std(axis=(1, 2)) * c[shrunk, None], rtol=1e-4
    )


def test_mean_preserved_for_symmetric_images_even_when_clipped():
    # Values symmetric about the mean clip symmetrically, so the mean survives any factor.
    layer = BackgroundContrastJitter(strength=0.8, seed=4)
    rng = np.random.default_rng(4)
    base = np.array([-1.0, -0.3, 0.3, 1.0])
    x = (base[None, None, :, None] * rng.uniform(0.5, 2, (64, 1, 1, 3))
         + rng.uniform(-1, 1, (64, 1, 1, 3))).astype(np.float32)
    out = np.asarray(layer(x, training=True))
    np.testing.assert_allclose(out.mean(axis=(1, 2)), x.mean(axis=(1, 2)), atol=1e-5)


def test_constant_background_is_unchanged():
    layer = BackgroundContrastJitter(strength=0.5, seed=5)
    x = np.full((4, 3, 3, 3), 0.7, np.float32)
    out = np.asarray(layer(x, training=True))
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, x, atol=1e-6)


def test_identity_at_inference_and_for_zero_strength():
    x = pattern_batch(8, np.random.default_rng(6))
    layer = BackgroundContrastJitter(strength=0.5, seed=6)
    np.testing.assert_array_equal(np.asarray(layer(x, training=False)), x)
    np.testing.assert_array_equal(np.asarray(layer(x)), x)
    zero = BackgroundContrastJitter(strength=0.0, seed=6)
    np.testing.assert_array_equal(np.asarray(zero(x, training=True)), x)


def test_same_seed_same_jitter():
    x = pattern_batch(16, np.random.default_rng(7))
    a = np.asarray(BackgroundContrastJitter(strength=0.5, seed=11)(x, training=True))
    b = np.asarray(BackgroundContrastJitter(strength=0.5, seed=11)(x, training=True))
    c = np.asarray(BackgroundContrastJitter(strength=0.5, seed=12)(x, training=True))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5])
def test_invalid_strength_raises(bad):
    with pytest.raises(ValueError, match="strength") as info:
        BackgroundContrastJitter(strength=bad)
    assert str(bad) in str(info.value)


def test_config_round_trip():
    layer = BackgroundContrastJitter(strength=0.25, seed=9, name="jitter")
    config = layer.get_config()
    assert config["strength"] == 0.25 and config["seed"] == 9
    clone = BackgroundContrastJitter.from_config(config)
    assert (clone.strength, clone.seed, clone.name) == (0.25, 9, "jitter")
    assert clone.get_config() == config
    revived = keras.layers.deserialize(keras.layers.serialize(layer))
    assert isinstance(revived, BackgroundContrastJitter)
    assert (revived.strength, revived.seed) == (0.25, 9)
    x = pattern_batch(8, np.random.default_rng(8))
    np.testing.assert_array_equal(
        np.asarray(clone(x, training=True)),
        np.asarray(BackgroundContrastJitter(strength=0.25, seed=9)(x, training=True)),
    )
