"""The segmenter: one model from raw images (uint8 or float) to foreground masks, for serving."""

import keras
import numpy as np
from keras import ops

from keras_layered.config import SegmentConfig
from keras_layered.layers.largest_component import LargestComponent


def _rescale(images, from_uint8):
    """float32 `images` -> [-1, 1]: from [0, 255] if they were uint8, else from [0, 1] or [0, 255].

    A float image whose maximum exceeds 2 is read as [0, 255] (a uint8 image converted to float,
    as TF Serving's JSON API and `np.asarray(..., float)` do); per image, so batches may mix. The
    margin above 1 keeps [0, 1] images that a resize overshot slightly in [0, 1]; a [0, 255]
    image whose maximum is 2 or less is black anyway.
    """
    if from_uint8:
        return images / 127.5 - 1.0
    peak = ops.max(images, axis=(1, 2, 3), keepdims=True)
    scale = ops.where(peak > 2.0, 1.0 / 255.0, 1.0)
    return images * (2.0 * scale) - 1.0


def _shape_message(resolution, owner, got):
    return (
        f"{owner}: expected images of shape (batch, {resolution}, {resolution}, 3), got {got}. "
        f"Convert grayscale/RGBA images to RGB, add a batch axis for single images, and resize to "
        f"{resolution}x{resolution} (`python cli.py segment` does all of this for you)."
    )


def check_image_shape(images_or_shape, resolution, owner):
    """Raises a ValueError naming the expected shape unless images are (B, resolution, resolution, 3).

    Static dimensions are checked in Python. Under TensorFlow, dimensions unknown while tracing (a
    `predict` retraced for a new shape, a SavedModel with free shapes) are checked when the graph
    runs: float images come back through a guard that fails with the same message, and with a
    static shape, so the network behind traces with a known rank.
    """
    shape = getattr(images_or_shape, "shape", images_or_shape)
    if getattr(shape, "rank", 0) is not None:  # a TensorShape of unknown rank is checked at run time
        shape = tuple(shape)
        ok = len(shape) == 4 and shape[3] in (3, None) and all(s in (resolution, None) for s in shape[1:3])
        if not ok:
            raise ValueError(_shape_message(resolution, owner, shape))
    if not hasattr(images_or_shape, "shape") or keras.backend.backend() != "tensorflow":
        return images_or_shape
    import tensorflow as tf

    actual = tf.shape(images_or_shape)
    padded = tf.pad(actual, [[0, 4]])  # so that a rank below 4 cannot index out of range
    ok = tf.logical_and(tf.equal(tf.size(actual), 4), tf.reduce_all(tf.equal(padded[1:4], [resolution, resolution, 3])))
    # A NaN that check_numerics rejects, added to the images: a data dependency, so the check runs
    # before any op that reads them. The static shape comes from a reshape, which tells graph
    # optimisation nothing about the input's shape: `set_shape` / `ensure_shape` let grappler fold
    # `ok` to true and drop the check.
    guard = tf.debugging.check_numerics(
        tf.where(ok, 0.0, float("nan")), _shape_message(resolution, owner, "another shape")
    )
    return tf.reshape(images_or_shape + tf.cast(guard, images_or_shape.dtype), (-1, resolution, resolution, 3))


def network_masks(network, images, flip_average=False):
    """`network`'s masks of `images` in [-1, 1] (its output, or the "mask" of a dict output), in inference
    mode; with `flip_average`, the mean with the mirrored masks of the mirrored images."""

    def masks(x):
        out = network(x, training=False)
        return out["mask"] if isinstance(out, dict) else out

    if not flip_average:
        return masks(images)
    return (masks(images) + ops.flip(masks(ops.flip(images, axis=2)), axis=2)) / 2.0


def _translate(x, dy, dx):
    """x (B, H, W, C) moved down by dy and right by dx pixels, the edge rows and columns repeated
    into the uncovered border: one gather of clipped indices per moved axis."""
    for axis, d in ((1, dy), (2, dx)):
        if d:
            size = x.shape[axis]
            x = ops.take(x, np.clip(np.arange(size) - d, 0, size - 1), axis=axis)
    return x


def shift_averaged_masks(network, images, flip_average=False, radius=0):
    """`network_masks` averaged over the (2 radius + 1)^2 translations of `images` by up to `radius`
    pixels each way, each mask moved back before the mean (radius 0: `network_masks` itself)."""
    if radius == 0:
        return network_masks(network, images, flip_average)
    offsets = [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)]
    total = 0.0
    for dy, dx in offsets:
        masks = ops.cast(network_masks(network, _translate(images, dy, dx), flip_average), "float32")
        total = total + _translate(masks, -dy, -dx)
    return total / len(offsets)


@keras.saving.register_keras_serializable(package="keras_layered")
class Segmenter(keras.Model):
    """Preprocessing + a segmentation network, as one model to save, export and `predict` with.

    Args:
        network: images (B, H, W, 3) in [-1, 1] -> masks (B, H, W, 1) in [0, 1], or a dict holding
            them under "mask" (e.g. `GeneratorInversion`, `UNet`).
        resolution: the image size the network was trained at.
        largest_component: keep only the largest connected region of each mask (`LargestComponent`):
            for images that show one object each.
        flip_average: each mask is the mean of the network's mask of the image and the mirrored mask
            of its left-right mirror image (twice the network's cost): objects are as likely seen
            mirrored, and the network's errors at their outlines differ between the two views.
        threshold: the level of the network's masks that the served masks put at 0.5, where the
            protocol, `segment` and most clients cut them: values are rescaled piecewise linearly
            ([0, threshold] -> [0, 0.5], [threshold, 1] -> [0.5, 1]) before the largest-region
            step, so mask > 0.5 is the network's mask > threshold. 0.5 leaves them as they are.
        shift_average: each mask is the mean over the image moved by up to this many pixels each
            way ((2 shift_average + 1)^2 times the network's cost), each mask moved back: outlines
            the network misplaces by a pixel in one view are outvoted by the others. 0 = off.

    Call: images (B, resolution, resolution, 3), uint8 in [0, 255] or float in [0, 1] -> masks
    (B, resolution, resolution, 1) in [0, 1]. Images of another numeric dtype are read as float,
    and a float image whose maximum exceeds 2 as [0, 255], per image (see `_rescale`).
    """

    def __init__(self, network, resolution, largest_component=SegmentConfig.largest_component,
                 flip_average=SegmentConfig.unet_flip_average, threshold=SegmentConfig.mask_threshold,
                 shift_average=SegmentConfig.shift_average, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"Segmenter: threshold must be in (0, 1), got {threshold!r}")
        whole = isinstance(shift_average, int) and not isinstance(shift_average, bool)
        if not whole or not 0 <= shift_average < resolution // 2:
            raise ValueError(f"Segmenter: shift_average must be a whole number of pixels in [0, {resolution // 2}), "
                             f"got {shift_average!r}")
        self.network = network
        self.resolution = resolution
        self.largest_component = largest_component
        self.flip_average = flip_average
        self.threshold = float(threshold)
        self.shift_average = shift_average
        self.keep_largest = LargestComponent(name="keep_largest") if largest_component else None

    def build(self, input_shape):
        check_image_shape(input_shape, self.resolution, "Segmenter")
        if not self.network.built:
            self.network.build((None, *input_shape[1:]))

    def call(self, images):
        dtype = keras.backend.standardize_dtype(images.dtype)
        if dtype == "bool" or not dtype.startswith(("uint", "int", "float", "bfloat")):
            raise TypeError(f"Segmenter: images must be uint8 in [0, 255] or float in [0, 1], got dtype {dtype}; "
                            "convert them, e.g. np.asarray(image, np.uint8).")
        from_uint8 = dtype == "uint8"
        images = check_image_shape(ops.cast(images, "float32"), self.resolution, "Segmenter")
        images = _rescale(images, from_uint8)
        masks = shift_averaged_masks(self.network, images, self.flip_average, self.shift_average)
        if self.threshold != 0.5:
            t = self.threshold
            masks = ops.cast(masks, "float32")
            # The upper branch from 1 down: values just above t stay above 0.5 in float32.
            masks = ops.where(masks <= t, masks * (0.5 / t), 1.0 - (1.0 - masks) * (0.5 / (1.0 - t)))
        return self.keep_largest(masks) if self.keep_largest is not None else masks

    def get_config(self):
        config = super().get_config()
        config.update(network=keras.saving.serialize_keras_object(self.network), resolution=self.resolution,
                      largest_component=self.largest_component, flip_average=self.flip_average,
                      threshold=self.threshold, shift_average=self.shift_average)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["network"] = keras.saving.deserialize_keras_object(config["network"])
        return cls(**config)
