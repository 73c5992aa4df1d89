"""Tests of `BackgroundMixing` (composites over the background of another latent)."""

import numpy as np
import pytest

from helpers import assert_config_round_trip

from keras_layered.layers import BackgroundMixing


def numbered(batch, size=4):
    """Backgrounds whose every pixel holds the row's own index: row i is all i."""
    return np.broadcast_to(np.arange(batch, dtype=np.float32)[:, None, None, None], (batch, size, size, 3)).copy()


def sources(out):
    """The input row each output row came from (rows of `numbered` are constant)."""
    assert np.all(out == out[:, :1, :1, :1]), "a row is taken whole, never mixed pixel by pixel"
    return out[:, 0, 0, 0].astype(int)


def test_rate_one_gives_every_row_the_next_rows_background():
    out = np.asarray(BackgroundMixing(rate=1.0, seed=0)(numbered(5), training=True))
    np.testing.assert_array_equal(sources(out), [1, 2, 3, 4, 0])


def test_rate_zero_and_inference_return_the_input():
    x = numbered(6)
    np.testing.assert_array_equal(np.asarray(BackgroundMixing(rate=0.0, seed=0)(x, training=True)), x)
    np.testing.assert_array_equal(np.asarray(BackgroundMixing(rate=1.0, seed=0)(x, training=False)), x)


def test_a_fraction_of_rows_swapped_each_from_its_neighbour():
    batch = 2000
    source = sources(np.asarray(BackgroundMixing(rate=0.3, seed=1)(numbered(batch, size=1), training=True)))
    own, swapped = source == np.arange(batch), source == (np.arange(batch) + 1) % batch
    assert np.all(own | swapped)
    assert 0.26 < swapped.mean() < 0.34  # Bernoulli(0.3) over 2000 rows: std 0.01


def test_seeded_draws_repeat():
    x = numbered(64, size=1)
    a = np.asarray(BackgroundMixing(rate=0.5, seed=7)(x, training=True))
    b = np.asarray(BackgroundMixing(rate=0.5, seed=7)(x, training=True))
    np.testing.assert_array_equal(a, b)


def test_config_round_trip():
    assert_config_round_trip(BackgroundMixing, {"rate": 0.25, "seed": 3})


@pytest.mark.parametrize("rate", [-0.1, 1.5])
def test_rate_out_of_range_is_refused(rate):
    with pytest.raises(ValueError, match=r"rate must be in \[0, 1\]"):
        BackgroundMixing(rate=rate)
