"""Image grids of the generator's layers: what a person looks at to judge a run."""

import numpy as np
from keras import ops

from keras_layered.layers import BackgroundContrastJitter, RandomShift, composite

COLUMNS = ("composite", "background", "foreground", "mask", "shifted composite")


def layer_grid(gan, z, seed=0):
    """One row per latent: composite | background | foreground | mask | shifted composite.

    Uses the EMA generator in inference mode; the last column applies the training-time
    perturbation (shift, background jitter) with draws of its own, seeded by `seed`: the same in
    every grid, and none taken from the training generators, so drawing a grid never changes how
    training continues. Returns an (N*H, 5*W, 3) uint8 array.
    """
    layers = gan(z, training=False)
    shift = RandomShift(gan.shift.max_shift, seed=seed)
    jitter = BackgroundContrastJitter(gan.jitter.strength, seed=seed + 1)
    foreground, mask = shift([layers["foreground"], layers["mask"]], training=True)
    columns = [
        composite(layers["background"], layers["foreground"], layers["mask"]),
        layers["background"],
        layers["foreground"],
        ops.repeat(layers["mask"] * 2.0 - 1.0, 3, axis=-1),
        composite(jitter(layers["background"], training=True), foreground, mask),
    ]
    images = np.stack([ops.convert_to_numpy(c) for c in columns], axis=1)  # (N, 5, H, W, 3)
    n, c, h, w, _ = images.shape
    images = images.transpose(0, 2, 1, 3, 4).reshape(n * h, c * w, 3)
    return np.clip((images + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
