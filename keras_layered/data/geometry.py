"""The crop geometry of real images as TensorFlow ops, shared by the folder and TFDS readers (the original's `org_to_crop`).

The rule itself (the size of the shorter side, the centre crop's box) is `keras_layered.io`'s,
which `segment` follows too. The shorter side of an image is first resized to
round(crop_scale * resolution) (files: by Pillow in `io.resize_shorter_side`; TFDS tensors: by
tf.image.resize at `shorter_side_size`), then this module takes a random crop (training) or the
centre crop (evaluation) of resolution x resolution and, when training, flips it horizontally with
probability 0.5. Image and mask travel as one uint8 tensor (mask as a 4th channel), so crop and
flip can never move them apart.
"""

import numpy as np
import tensorflow as tf

from keras_layered import io

__all__ = ["CACHE_BUDGET", "cached", "check_crop_scale", "crop_and_flip", "shorter_side_size", "to_floats"]

# data.cache "auto" keeps the decoded images in memory up to this size. A fixed size, not a share
# of this machine's memory: the choice then depends on the data alone, so a run resumed elsewhere
# reads the same stream.
CACHE_BUDGET = 2**30


def check_crop_scale(crop_scale):
    if isinstance(crop_scale, bool) or not isinstance(crop_scale, (int, float)) or not crop_scale >= 1.0:
        raise ValueError(f"crop_scale must be a number >= 1, so the crop fits the resized image, got {crop_scale!r}.")


def cached(cache, count, resolution, crop_scale, channels=3):
    """Whether a reader keeps its decoded images in memory: `cache` itself when True or False; for
    "auto", whether `count` images (None: unknown, so no) of about (crop_scale x resolution)^2 x 4/3
    pixels (a 4:3 aspect ratio) of `channels` bytes fit in CACHE_BUDGET."""
    if cache != "auto":
        return bool(cache)
    per_image = channels * round(crop_scale * resolution) ** 2 * 4 / 3
    return count is not None and count * per_image <= CACHE_BUDGET


def shorter_side_size(height, width, shorter):
    """int32 tensor [new height, new width] of an image of (`height`, `width`) tensors:
    `io.shorter_side_size`, the rule files are resized by, computed on the image's dynamic shape."""

    def size(h, w):
        new_width, new_height = io.shorter_side_size((int(w), int(h)), shorter)
        return np.array([new_height, new_width], np.int32)

    hw = tf.numpy_function(size, [height, width], tf.int32, stateful=False)
    return tf.ensure_shape(hw, (2,))


def crop_and_flip(pixels, position, resolution, *, training, flip, seed):
    """A (resolution, resolution, C) crop of uint8 `pixels` (H, W, C): the centre one, or when
    `training` a random one, flipped left-right with probability 0.5 if `flip`.

    The random draws are a pure function of (`seed`, `position` in the stream), so a run is
    reproducible and does not depend on how many threads map the dataset.
    """
    crop_shape = (resolution, resolution, pixels.shape[-1])
    if not training:
        top, left = io.centre_crop_box(tf.shape(pixels)[0], tf.shape(pixels)[1], resolution)  # as `segment` crops
        return tf.ensure_shape(pixels[top:top + resolution, left:left + resolution], crop_shape)
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(
        tf.stack([tf.constant(seed, tf.int64), tf.cast(position, tf.int64)]), 2))
    pixels = tf.image.stateless_random_crop(pixels, crop_shape, seed=crop_seed)
    return tf.image.stateless_random_flip_left_right(pixels, seed=flip_seed) if flip else pixels


def to_floats(pixels, with_masks):
    """uint8 (B, R, R, 3 or 4) -> images float32 in [-1, 1], or {"image", "mask": exact 0/1 (B, R, R, 1)}."""
    image = tf.cast(pixels[..., :3], tf.float32) / 127.5 - 1.0
    return {"image": image, "mask": tf.cast(pixels[..., 3:], tf.float32)} if with_masks else image
