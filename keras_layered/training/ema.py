"""BatchNorm statistics of an exponential-moving-average (EMA) generator.

The EMA generator averages the generator's weights, but BatchNorm's moving mean and variance are
not weights to average: they describe the activations of the weights that produced them. Before
the EMA generator is used in inference mode (grids, generator.keras: the segmentation stage, FID,
export), its own are recomputed on fresh latents, as "precise BN" (Wu & Johnson 2021) does.
"""

import keras
import numpy as np


def fixed_latents(num_batches, batch_size, latent_dim, seed=0):
    """(num_batches, batch_size, latent_dim) float32 draws of N(0, I) from NumPy: the same on every
    call, and no draw from the training's random generators (a resumed run stays bit-identical)."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((num_batches, batch_size, latent_dim)).astype("float32")


def recompute_batch_norm_statistics(generator, latents):
    """Sets the moving mean and variance of every BatchNormalization layer of `generator` to the
    average over the batches of `latents` (each (B, latent_dim)) of the batch statistics its own
    weights produce in training mode; nothing else of `generator` changes. Returns the number of
    layers set (0: no BatchNorm, nothing is run)."""
    norms = [layer for layer in _layers(generator) if isinstance(layer, keras.layers.BatchNormalization)]
    if not norms:
        return 0
    if not all(norm.trainable for norm in norms):
        raise ValueError("recompute_batch_norm_statistics: a frozen BatchNormalization layer ignores training=True; "
                         "unfreeze the generator first")
    momenta = [norm.momentum for norm in norms]
    try:
        for k, z in enumerate(latents):
            for norm in norms:
                norm.momentum = k / (k + 1)  # a running mean: batch k weighs 1 / (k + 1), the first replaces
            generator(z, training=True)
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
    return len(norms)


def _layers(layer):
    """`layer` and its sublayers, depth first (models' `layers`, recursively)."""
    yield layer
    for sublayer in getattr(layer, "layers", ()):
        yield from _layers(sublayer)
