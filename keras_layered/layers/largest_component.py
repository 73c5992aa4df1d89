"""Keeps only the largest connected region of each mask: a single-object prior for inference."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_layered")
class LargestComponent(keras.layers.Layer):
    """Zeroes every mask pixel outside the largest 8-connected region of `mask > threshold`.

    Why: on images with one object (the built-in scenes, a bird, a car), a segmenter's mistakes are
    mostly small detached fragments, e.g. along a sharp edge in the background that the generator
    never learned to paint. Keeping the largest region removes them. Values inside the kept region
    are left as they are, so soft masks stay soft. Regions tied for the largest are all kept.

    Components are found by label propagation: every pixel above the threshold starts with its own
    label and takes the largest label of its 3x3 neighbourhood until nothing changes (a loop of
    max-pools, as many as the longest path inside a region), then each label's area is counted.

    Args:
        threshold: a pixel belongs to the object where mask > threshold.

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
            new = ops.max_pool(labels, 3, strides=1, padding="same", data_format="channels_last") * inside
            return new, ops.any(new != labels)

        labels, _ = ops.while_loop(lambda _, changed: changed, spread, (labels, ops.array(True)))
        # Area of each (image, label) pair; label 0 (outside) gets area 0 so it is never kept.
        ids = ops.cast(labels, "int64") + ops.arange(batch, dtype="int64")[:, None, None, None] * (pixels + 1)
        ids = ops.reshape(ids, (-1,))  # int64: batch x pixels may pass 2**31 at large sizes
        areas = ops.segment_sum(ops.reshape(inside, (-1,)), ids, num_segments=batch * (pixels + 1))
        area = ops.reshape(ops.take(areas, ids), shape)
        largest = ops.max(area, axis=(1, 2, 3), keepdims=True)
        return masks * ops.cast(ops.logical_and(area == largest, area > 0), "float32")

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(threshold=self.threshold)
        return config
