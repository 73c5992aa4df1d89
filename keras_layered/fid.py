"""Frechet Inception Distance (Heusel et al., 2017) of a generator against a dataset.

FID = ||mu_1 - mu_2||^2 + tr(S_1) + tr(S_2) - 2 tr((S_1 S_2)^(1/2)), with mu, S the mean and
covariance of InceptionV3's 2048 pool features of each image set. The features come from
`keras.applications.InceptionV3` (ImageNet weights, images resized to 299 x 299), not from the
TF1 graph of the reference implementation (TTUR / pytorch-fid), so values are comparable
between runs of this package, not exactly with published numbers.

Nothing here downloads silently: weights are "imagenet" (Keras' cache, ~/.keras/models, or a
download), a local .h5 file, or None (untrained, for tests).
"""

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

__all__ = ["FidWeightsError", "frechet_distance", "generator_statistics", "inception_features", "load_inception",
           "dataset_statistics", "statistics", "weights_tag"]

log = logging.getLogger("keras_layered")

INCEPTION_NOTOP = "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"


class FidWeightsError(RuntimeError):
    """InceptionV3's weights cannot be loaded; the message says how to provide them."""


def _sqrt_psd(matrix):
    """Symmetric square root of a symmetric positive semi-definite matrix (eigenvalues below 0,
    from round-off, are clipped)."""
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(mu1, sigma1, mu2, sigma2):
    """The Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64.

    tr((S1 S2)^(1/2)) = tr((S1^(1/2) S2 S1^(1/2))^(1/2)): the inner matrix is symmetric PSD, so
    eigh gives its square root's trace without scipy's general sqrtm (and without its complex
    round-off parts).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shapes do not match: mu {mu1.shape} and {mu2.shape}, sigma {sigma1.shape} and {sigma2.shape}")
    root1 = _sqrt_psd((sigma1 + sigma1.T) / 2)
    inner = root1 @ sigma2 @ root1
    trace_sqrt = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0.0, None)))
    distance = np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt
    # Round-off in the square roots of near-zero eigenvalues (singular covariances: fewer images
    # than features) can take a distance of 0 slightly below it.
    return float(max(distance, 0.0))


def statistics(features):
    """(mean (D,), covariance (D, D)) of features (N, D), N >= 2, in float64."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"need features of shape (N >= 2, D), got {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def load_inception(weights="imagenet", image_size=299):
    """InceptionV3 without its classifier, global average pool: images (B, S, S, 3) in [-1, 1] ->
    features (B, 2048). weights: "imagenet", the path of a notop .h5 file, or None (random).
    image_size: what images are resized to (299, InceptionV3's own; >= 75; smaller only in tests).
    """
    import keras

    if weights not in ("imagenet", None):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FidWeightsError(f"no InceptionV3 weights file at {weights}: give the path of {INCEPTION_NOTOP}")
        weights = str(path)
    try:
        return keras.applications.InceptionV3(include_top=False, weights=weights, pooling="avg",
                                              input_shape=(image_size, image_size, 3))
    except Exception as err:  # the download's network errors come as plain Exceptions
        if weights != "imagenet":
            raise FidWeightsError(f"cannot load InceptionV3 weights from {weights}: {err}") from err
        cache = Path(os.environ.get("KERAS_HOME", "~/.keras")) / "models"
        raise FidWeightsError(
            f"cannot load InceptionV3's ImageNet weights ({err}). Keras downloads them once into "
            f"{cache / INCEPTION_NOTOP}; without internet, copy that file from a machine where\n"
            f"  python -c \"import keras; keras.applications.InceptionV3(include_top=False)\"\n"
            f"ran, into {cache}/, or pass its path with --weights PATH") from err


def inception_features(model, images):
    """Pool features (B, 2048) float64 of images (B, H, W, 3) in [-1, 1] (InceptionV3's own input
    range), bilinearly resized to the model's input size."""
    import tensorflow as tf

    size = model.input_shape[1:3]
    images = tf.image.resize(tf.convert_to_tensor(images, tf.float32), size, method="bilinear")
    return np.asarray(model(images, training=False), np.float64)  # eager: no retracing per batch size


def dataset_statistics(model, dataset, num_images, cache_path=None, description=None):
    """(mu, sigma) of the first `num_images` images of `dataset` (batches (B, H, W, 3) in [-1, 1]).

    With `cache_path`, the statistics are read from that .npz when it was written for the same
    `description` (the data, resolution, count and weights, as a dict) and written there otherwise.
    Raises ValueError if the dataset holds fewer than 2 images.
    """
    key = json.dumps(description or {}, sort_keys=True)
    if cache_path is not None and Path(cache_path).is_file():
        with np.load(cache_path) as cached:
            if str(cached["description"]) == key:
                return cached["mu"], cached["sigma"]
    parts, seen = [], 0
    for batch in dataset:
        batch = np.asarray(batch)[: num_images - seen]
        parts.append(inception_features(model, batch))
        seen += len(batch)
        if seen >= num_images:
            break
    if seen < 2:
        raise ValueError(f"FID needs at least 2 images of the data, got {seen}")
    if seen < num_images:
        log.warning("the data holds %d images, fewer than the %d asked for: its statistics use those", seen,
                    num_images)
    mu, sigma = statistics(np.concatenate(parts))
    if cache_path is not None:
        Path(cache_path).parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache_path, mu=mu, sigma=sigma, description=key, num_images=seen)
    return mu, sigma


def generator_statistics(model, generator, num_images, batch_size=50, seed=0):
    """(mu, sigma) of `num_images` composites of `generator` (z ~ N(0, I) -> {"background",
    "foreground", "mask"}), unshifted: what the generator means a scene to look like."""
    import tensorflow as tf

    from keras_layered.layers.composite import composite

    rng = np.random.default_rng(seed)
    parts = []
    for start in range(0, num_images, batch_size):
        z = rng.standard_normal((min(batch_size, num_images - start), generator.latent_dim)).astype(np.float32)
        layers = generator(tf.constant(z), training=False)
        images = tf.clip_by_value(composite(layers["background"], layers["foreground"], layers["mask"]), -1.0, 1.0)
        parts.append(inception_features(model, images))
    return statistics(np.concatenate(parts))


def weights_tag(weights):
    """A short, stable name of the weights for cache file names: imagenet, random, or a file hash."""
    if weights is None:
        return "random"
    if weights == "imagenet":
        return "imagenet"
    return "h5-" + hashlib.sha1(Path(weights).expanduser().read_bytes()).hexdigest()[:10]
