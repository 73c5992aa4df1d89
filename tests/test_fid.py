"""FID: the Frechet distance against hand-computed cases, the InceptionV3 pipeline with an untrained
network (weights=None; nothing is downloaded), the statistics cache, the weights errors, the CLI."""

import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner
from PIL import Image


from keras_layered import fid
from keras_layered.config import load_config
from keras_layered.training.build import build_generator

SMALL = 75  # InceptionV3's smallest input; 299 is the standard, 16x the work
LOAD_INCEPTION = fid.load_inception


@pytest.fixture(scope="module")
def inception():
    keras.utils.set_random_seed(0)
    return fid.load_inception(None, image_size=SMALL)


# The distance


def test_frechet_distance_of_diagonal_gaussians():
    # |mu1 - mu2|^2 = 1 + 4; tr S1 + tr S2 = 5 + 13; (S1 S2)^(1/2) = diag(2, 6): 5 + 18 - 2 * 8 = 7.
    assert fid.frechet_distance([0, 0], np.diag([1.0, 4.0]), [1, 2], np.diag([4.0, 9.0])) == pytest.approx(7.0)


def test_frechet_distance_of_non_commuting_covariances():
    # S1 S2 = [[2, 4], [1, 8]] has eigenvalues 5 +- sqrt(13), so tr (S1 S2)^(1/2) = sqrt(5 + sqrt 13) + sqrt(5 - sqrt 13).
    s1, s2 = np.array([[2.0, 1.0], [1.0, 2.0]]), np.diag([1.0, 4.0])
    expected = 4 + 5 - 2 * (math.sqrt(5 + math.sqrt(13)) + math.sqrt(5 - math.sqrt(13)))
    assert fid.frechet_distance([1, 1], s1, [1, 1], s2) == pytest.approx(expected, abs=1e-12)
    assert fid.frechet_distance([1, 1], s2, [1, 1], s1) == pytest.approx(expected, abs=1e-12)  # symmetric


def test_frechet_distance_of_identical_and_singular_gaussians():
    rng = np.random.default_rng(0)
    low_rank = rng.standard_normal((5, 2)) @ rng.standard_normal((2, 5))
    sigma = low_rank @ low_rank.T  # rank 2 of 5: like features from fewer images than dimensions
    mu = rng.standard_normal(5)
    # sqrt of eigenvalues that round-off leaves at ~1e-13 instead of 0: errors ~1e-7, never below 0.
    assert 0.0 <= fid.frechet_distance(mu, sigma, mu, sigma) < 1e-5
    assert fid.frechet_distance(mu, sigma, mu + 1, np.eye(5)) > 5.0 - 1e-9  # at least |mu1 - mu2|^2


def test_frechet_distance_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shapes do not match"):
        fid.frechet_distance([0, 0], np.eye(2), [0, 0, 0], np.eye(3))


def test_statistics_are_the_mean_and_unbiased_covariance():
    mu, sigma = fid.statistics([[0.0, 1.0], [2.0, 1.0], [4.0, 4.0]])
    np.testing.assert_allclose(mu, [2.0, 2.0])
    np.testing.assert_allclose(sigma, [[4.0, 3.0], [3.0, 3.0]])  # divided by N - 1 = 2
    with pytest.raises(ValueError, match="N >= 2"):
        fid.statistics([[1.0, 2.0]])


# The pipeline


def test_features_of_an_untrained_inception(inception):
    images = np.random.default_rng(0).uniform(-1, 1, (3, 8, 8, 3)).astype(np.float32)
    features = fid.inception_features(inception, images)
    assert features.shape == (3, 2048) and features.dtype == np.float64
    assert np.all(np.isfinite(features)) and np.all(features >= 0)  # after ReLU and average pooling


def test_dataset_statistics_are_cached_per_description(inception, tmp_path, monkeypatch):
    images = tf.data.Dataset.from_tensor_slices(
        np.random.default_rng(1).uniform(-1, 1, (7, 8, 8, 3)).astype(np.float32)).batch(3)
    cache = tmp_path / "stats" / "data.npz"
    mu, sigma = fid.dataset_statistics(inception, images, 5, cache, {"data": "a"})  # 3 + 2 of the 7 images
    assert mu.shape == (2048,) and sigma.shape == (2048, 2048) and cache.is_file()
    assert int(np.load(cache)["num_images"]) == 5

    def no_inference(*args):
        raise AssertionError("the cached statistics must be reused")

    monkeypatch.setattr(fid, "inception_features", no_inference)
    mu_again, sigma_again = fid.dataset_statistics(inception, images, 5, cache, {"data": "a"})
    np.testing.assert_array_equal(mu, mu_again)
    np.testing.assert_array_equal(sigma, sigma_again)
    with pytest.raises(AssertionError, match="reused"):  # another description: computed anew
        fid.dataset_statistics(inception, images, 5, cache, {"data": "b"})


def test_generator_statistics_and_distance_to_data(inception):
    cfg = load_config(overrides=["data.resolution=8", "model.latent_dim=4", "model.base_width=8",
                                 "model.min_width=4"])
    generator = build_generator(cfg)
    mu, sigma = fid.generator_statistics(inception, generator, 5, batch_size=2)
    assert mu.shape == (2048,) and sigma.shape == (2048, 2048)
    np.testing.assert_allclose(sigma, sigma.T)
    data = tf.data.Dataset.from_tensor_slices(np.zeros((4, 8, 8, 3), np.float32)).batch(4)
    distance = fid.frechet_distance(*fid.dataset_statistics(inception, data, 4), mu, sigma)
    assert np.isfinite(distance) and distance > 0


# Weights


def test_missing_weights_file_is_named(tmp_path):
    with pytest.raises(fid.FidWeightsError, match=f"no InceptionV3 weights file at {tmp_path}/none.h5"):
        fid.load_inception(str(tmp_path / "none.h5"))


def test_imagenet_weights_without_internet_say_how_to_provide_them(monkeypatch, tmp_path):
    def offline(**kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- [Errno -2] "
                        "Name or service not known")

    monkeypatch.setattr(keras.applications, "InceptionV3", offline)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    with pytest.raises(fid.FidWeightsError) as info:
        fid.load_inception("imagenet")
    message = str(info.value)
    assert "URL fetch failure" in message
    assert f"{tmp_path}/models/{fid.INCEPTION_NOTOP}" in message and "--weights PATH" in message


def test_weights_tag():
    assert fid.weights_tag(None) == "random" and fid.weights_tag("imagenet") == "imagenet"


# The command


def small_features(weights):
    """A stand-in for InceptionV3 with 8 features: the 2048 x 2048 eigendecompositions of the real
    one take tens of seconds on 2 busy cores (test_generator_statistics_and_distance_to_data runs them)."""
    if weights not in (None, "imagenet"):
        return LOAD_INCEPTION(weights)  # the weights-file checks
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(8, 3, activation="relu"),
                             keras.layers.GlobalAveragePooling2D()])


def test_fid_command_on_a_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(fid, "load_inception", small_features)
    images = tmp_path / "photos"
    images.mkdir()
    for i in range(5):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(
            images / f"{i}.png")
    run = tmp_path / "run"
    run.mkdir()
    cfg = load_config(overrides=["data.resolution=8", "model.latent_dim=4", "model.base_width=8",
                                 "model.min_width=4", f"data.source=folder:{images}"])
    cfg.save(run / "config.yaml")
    generator = build_generator(cfg)
    generator(np.zeros((1, 4), np.float32))  # built, so its weights are saved
    generator.save(run / "generator.keras")

    from keras_layered import cli

    result = CliRunner().invoke(cli.main, ["fid", "--run", str(run), "--num-images", "4", "--weights", "none",
                                           "--batch-size", "3"])
    assert result.exit_code == 0, result.output
    assert f"4 generated images vs folder:{images} at 8 px (random InceptionV3 weights)" in result.output
    line = json.loads((run / "fid.jsonl").read_text())
    assert line["fid"] > 0 and line["num_images"] == 4 and line["data"] == f"folder:{images}"
    assert not (tmp_path / "fid_stats").exists()  # random weights: nothing worth caching

    result = CliRunner().invoke(cli.main, ["fid", "--run", str(run), "--weights", str(tmp_path / "x.h5")])
    assert result.exit_code != 0 and "no InceptionV3 weights file" in result.output


def test_fid_command_needs_a_trained_run(tmp_path):
    from keras_layered import cli

    result = CliRunner().invoke(cli.main, ["fid", "--run", str(tmp_path)])
    assert result.exit_code != 0 and "holds no generator.keras" in result.output
