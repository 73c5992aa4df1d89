"""Keeps only the largest connected region of each mask: a single-object prior for inference."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_layered")
class LargestComponent(keras.layers.Layer):
    """Keeps, at every level, the part of each mask connected to its largest region.

    Why: on images with one object (the built-in scenes, a bird, a car), a segmenter's mistakes are
    mostly small detached fragments, e.g. along a sharp edge in the background that the generator
    never learned to paint. Keeping the largest region removes them.

    What is kept: the object is the largest 8-connected region of `mask > threshold` (regions tied
    for the largest are all kept). A pixel keeps its value v when a path of pixels all >= v joins
    it to the object; otherwise it gets the highest level v' < v at which such a path exists (0 for
    a pixel that only zeros separate from the object). So at every level t <= threshold,
    `output >= t` is the 8-connected region of `mask >= t` that holds the object, and above the
    threshold it is the object's own pixels >= t: thresholding the output at any level gives that
    level's largest-object mask, and soft values around the object (its soft edge, a faint part of
    it) stay as they are. This is the morphological reconstruction by dilation of the mask from the
    object (Vincent 1993): the object's values, grown by 3x3 max-pools clipped to the mask until
    nothing changes. Values of the object itself are never changed.

    Regions are found by label propagation: every pixel above the threshold starts with its own
    label and takes the largest label of its 3x3 neighbourhood until nothing changes (a loop of
    max-pools, as many as the longest path inside a region), then each label's area is counted.

    Args:
        threshold: a pixel belongs to a region where mask > threshold.

    Call: masks (B, H, W, 1) in [0, 1] -> masks (B, H, W, 1), float32.
    """

    def __init__(self, threshold=0.5, **kwargs):
        kwargs.setdefault("dtype", "float32")  # labels must stay exact under a mixed precision policy
        super().__init__(**kwargs)
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"LargestComponent: threshold must be in [0, 1), got {threshold!r}.")
        self.threshold = threshold

    def call(self, masks):
        masks = ops.cast(masks, "float32")
        shape = ops.shape(masks)
        batch, pixels = shape[0], shape[1] * shape[2]
        inside = ops.cast(masks > self.threshold, "float32")
        # Labels 1..H*W in raster order (exact in float32 up to 4096 x 4096 images), 0 outside.
        labels = ops.reshape(ops.arange(1, pixels + 1, dtype="float32"), (1, shape[1], shape[2], 1)) * inside

        def spread(labels, _):
            new = _max_pool(labels) * inside
            return new, ops.any(new != labels)

        labels, _ = ops.while_loop(lambda _, changed: changed, spread, (labels, ops.array(True)))
        # Area of each (image, label) pair; label 0 (outside) gets area 0 so it is never kept.
        ids = ops.cast(labels, "int64") + ops.arange(batch, dtype="int64")[:, None, None, None] * (pixels + 1)
        ids = ops.reshape(ids, (-1,))  # int64: batch x pixels may pass 2**31 at large sizes
        areas = ops.segment_sum(ops.reshape(inside, (-1,)), ids, num_segments=batch * (pixels + 1))
        area = ops.reshape(ops.take(areas, ids), shape)
        largest = ops.max(area, axis=(1, 2, 3), keepdims=True)
        kept = masks * ops.cast(ops.logical_and(area == largest, area > 0), "float32")

        def grow(kept, _):
            # Never above the mask, never below `kept`: exact values, and the loop ends.
            new = ops.minimum(_max_pool(kept), masks)
            return new, ops.any(new != kept)

        kept, _ = ops.while_loop(lambda _, changed: changed, grow, (kept, ops.array(True)))
        return kept

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(threshold=self.threshold)
        return config


def _max_pool(x):
    return ops.max_pool(x, 3, strides=1, padding="same", data_format="channels_last")
