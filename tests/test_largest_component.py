import collections

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import assert_config_round_trip

from keras_layered.layers import LargestComponent


def reference(masks, threshold=0.5):
    """Breadth-first search over 8-neighbours: the masks with all but the largest regions zeroed."""
    out = np.zeros_like(masks)
    for b, mask in enumerate(masks[..., 0]):
        inside = mask > threshold
        labels = np.zeros(mask.shape, int)
        areas = [0]
        for start in zip(*np.nonzero(inside)):
            if labels[start]:
                continue
            areas.append(0)
            labels[start] = len(areas) - 1
            queue = collections.deque([start])
            while queue:
                i, j = queue.popleft()
                areas[-1] += 1
                for di in (-1, 0, 1):
                    for dj in (-1, 0, 1):
                        n = (i + di, j + dj)
                        if 0 <= n[0] < mask.shape[0] and 0 <= n[1] < mask.shape[1] and inside[n] and not labels[n]:
                            labels[n] = labels[start]
                            queue.append(n)
        if max(areas):
            keep = np.isin(labels, [k for k, a in enumerate(areas) if a == max(areas) and k])
            out[b, ..., 0] = np.where(keep, mask, 0.0)
    return out


def run(masks, **kwargs):
    return keras.ops.convert_to_numpy(LargestComponent(**kwargs)(masks))


def test_keeps_the_largest_region_with_its_soft_values_by_hand():
    masks = np.zeros((1, 6, 6, 1), "float32")
    masks[0, 0:2, 0:2, 0] = [[0.9, 0.8], [0.7, 0.6]]  # 4 pixels
    masks[0, 4:6, 3:6, 0] = 0.55  # 6 pixels: the largest
    masks[0, 3, 0, 0] = 0.99  # 1 pixel
    masks[0, 2, 2, 0] = 0.4  # below the threshold: not part of anything
    expected = np.zeros_like(masks)
    expected[0, 4:6, 3:6, 0] = 0.55
    np.testing.assert_array_equal(run(masks), expected)


def test_diagonal_neighbours_are_connected_and_ties_are_all_kept():
    masks = np.zeros((1, 5, 5, 1), "float32")
    for i in range(3):  # a 3-pixel diagonal
        masks[0, i, i, 0] = 1.0
    masks[0, 4, 2:5, 0] = 0.7  # a 3-pixel row: tied
    masks[0, 0, 4, 0] = 0.8  # 1 pixel
    expected = masks.copy()
    expected[0, 0, 4, 0] = 0.0
    np.testing.assert_array_equal(run(masks), expected)


def test_a_winding_region_longer_than_the_image_is_one_region():
    # A zigzag of 26 pixels in an 8x8 image, whose largest label needs about 20 max-pools to reach
    # its other end (more than the 16 of a loop bounded by height + width), against a block of 6.
    masks = np.zeros((1, 8, 8, 1), "float32")
    masks[0, 0, :, 0] = masks[0, 2, :, 0] = masks[0, 4, :, 0] = 1.0
    masks[0, 1, 7, 0] = masks[0, 3, 0, 0] = 1.0
    masks[0, 6:8, 5:8, 0] = 0.9  # 6 pixels, apart from the zigzag
    expected = masks.copy()
    expected[0, 6:8, 5:8, 0] = 0.0
    np.testing.assert_array_equal(run(masks), expected)


def test_matches_a_breadth_first_search_on_random_masks_per_image():
    masks = np.random.default_rng(0).random((6, 16, 16, 1)).astype("float32") ** 2  # many small regions
    out = run(masks)
    np.testing.assert_array_equal(out, reference(masks))
    assert (out > 0).sum() < (masks > 0.5).sum()  # something was removed
    np.testing.assert_array_equal(run(masks, threshold=0.2), reference(masks, 0.2))


def test_empty_and_full_masks():
    masks = np.stack([np.zeros((4, 4, 1)), np.full((4, 4, 1), 0.75)]).astype("float32")
    np.testing.assert_array_equal(run(masks), masks)


def test_unknown_batch_in_a_tf_function_and_float32_under_bfloat16():
    masks = np.random.default_rng(1).random((3, 8, 8, 1)).astype("float32")
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    layer = LargestComponent()
    fn = tf.function(layer, input_signature=[tf.TensorSpec((None, 8, 8, 1), tf.float32)])
    out = fn(masks)
    assert out.dtype == tf.float32  # soft values are not rounded to bfloat16
    np.testing.assert_array_equal(out.numpy(), reference(masks))


def test_under_xla():
    masks = np.random.default_rng(3).random((2, 8, 8, 1)).astype("float32")
    out = tf.function(LargestComponent(), jit_compile=True)(masks)
    np.testing.assert_array_equal(out.numpy(), reference(masks))


@pytest.mark.parametrize("bad", [-0.1, 1.0])
def test_bad_threshold_raises(bad):
    with pytest.raises(ValueError, match=r"threshold must be in \[0, 1\)"):
        LargestComponent(threshold=bad)


def test_config_round_trip():
    clone = assert_config_round_trip(LargestComponent, {"threshold": 0.3})
    masks = np.random.default_rng(2).random((2, 8, 8, 1)).astype("float32")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(clone(masks)), reference(masks, 0.3))
