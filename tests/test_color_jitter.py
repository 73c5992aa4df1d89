"""Tests of `ColorJitter` (per-layer colour jitter of the distilled U-Net's composites)."""

import keras
import numpy as np
import pytest

from keras_layered.layers import ColorJitter

# Pixel 0 is 0 and pixel 1 is 0.5 in every channel: out0 = o and out1 = 0.5 g + o read back the
# gain and the offset exactly while no clip binds (strength 0.25: |0.5 g + o| <= 0.875).
PROBE = np.array([0.0, 0.5], np.float32)


def probe_batch(batch, channels=3):
    return np.broadcast_to(PROBE[None, None, :, None], (batch, 1, 2, channels)).astype(np.float32).copy()


def gains_and_offsets(out):
    offset = out[:, 0, 0, :]
    gain = (out[:, 0, 1, :] - offset) / 0.5
    return gain, offset


def test_gain_and_offset_per_sample_and_channel_in_range():
    s = 0.25  # 0.5 * 1.25 + 0.25 < 1: no clip binds on the probe
    out = np.asarray(ColorJitter(s, seed=0)(probe_batch(512), training=True)).astype(np.float64)
    gain, offset = gains_and_offsets(out)
    assert np.all(gain >= 1 - s - 1e-5) and np.all(gain <= 1 + s + 1e-5)
    assert np.all(offset >= -s - 1e-6) and np.all(offset <= s + 1e-6)
    # Uniform over the whole ranges, both ends approached.
    assert gain.min() < 1 - s + 0.02 and gain.max() > 1 + s - 0.02
    assert offset.min() < -s + 0.02 and offset.max() > s - 0.02
    assert gain.std() == pytest.approx(2 * s / np.sqrt(12), rel=0.1)
    # Drawn per channel, not shared by the channels of a sample, and not shared by the samples.
    assert np.mean(np.abs(gain[:, 0] - gain[:, 1]) > 1e-3) > 0.95
    assert np.mean(np.abs(offset[1:, 0] - offset[:-1, 0]) > 1e-3) > 0.95
    # Gain and offset are independent draws.
    assert abs(np.corrcoef(gain.ravel(), offset.ravel())[0, 1]) < 0.1


def test_output_is_the_clipped_affine_map_of_each_pixel():
    layer = ColorJitter(0.9, seed=1)
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (16, 4, 4, 3)).astype(np.float32)
    x[:, 0, 0], x[:, 0, 1] = 0.0, 0.5  # probes
    out = np.asarray(layer(x, training=True)).astype(np.float64)
    # The probes can clip at strength 0.9, so draw the same jitter on an unclipped scale: the
    # layer with the same seed on x / 4 reads back g and o exactly (|0.125 g + o| < 1).
    small = np.asarray(ColorJitter(0.9, seed=1)(x * 0.25, training=True)).astype(np.float64)
    offset = small[:, 0, 0, :]
    gain = (small[:, 0, 1, :] - offset) / 0.125
    expected = np.clip(x * gain[:, None, None, :] + offset[:, None, None, :], -1.0, 1.0)
    np.testing.assert_allclose(out, expected, atol=1e-5)
    assert out.min() >= -1.0 and out.max() <= 1.0
    assert np.any(out == 1.0) or np.any(out == -1.0)  # strength 0.9 does clip somewhere


def test_keeps_the_dtype_of_its_input():
    x = keras.ops.cast(probe_batch(4), "bfloat16")
    out = ColorJitter(0.3, seed=2)(x, training=True)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    assert out.shape == (4, 1, 2, 3)


def test_identity_at_inference_and_for_zero_strength():
    x = np.random.default_rng(3).uniform(-1, 1, (8, 3, 3, 3)).astype(np.float32)
    layer = ColorJitter(0.5, seed=3)
    np.testing.assert_array_equal(np.asarray(layer(x, training=False)), x)
    np.testing.assert_array_equal(np.asarray(layer(x)), x)
    np.testing.assert_array_equal(np.asarray(ColorJitter(0.0, seed=3)(x, training=True)), x)


def test_same_seed_same_jitter_and_each_call_draws_anew():
    x = probe_batch(16)
    a, b = ColorJitter(0.5, seed=11), ColorJitter(0.5, seed=11)
    first_a, first_b = np.asarray(a(x, training=True)), np.asarray(b(x, training=True))
    np.testing.assert_array_equal(first_a, first_b)
    assert not np.allclose(first_a, np.asarray(ColorJitter(0.5, seed=12)(x, training=True)))
    # A second call (the trainer's call on the other layer) draws other colours.
    assert not np.allclose(first_a, np.asarray(a(x, training=True)))


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_invalid_strength_raises(bad):
    with pytest.raises(ValueError, match=r"ColorJitter: strength must be in \[0, 1\]") as info:
        ColorJitter(strength=bad)
    assert str(bad) in str(info.value)


def test_config_round_trip():
    layer = ColorJitter(strength=0.4, seed=9, name="layer_jitter")
    config = layer.get_config()
    assert config["strength"] == 0.4 and config["seed"] == 9
    revived = keras.layers.deserialize(keras.layers.serialize(layer))
    assert isinstance(revived, ColorJitter)
    assert (revived.strength, revived.seed, revived.name) == (0.4, 9, "layer_jitter")
    assert revived.get_config() == config
    x = probe_batch(8)
    np.testing.assert_array_equal(np.asarray(revived(x, training=True)),
                                  np.asarray(ColorJitter(0.4, seed=9)(x, training=True)))
