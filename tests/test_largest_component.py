import collections
import heapq

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import assert_config_round_trip

from keras_layered.layers import LargestComponent


def largest_regions(masks, threshold=0.5):
    """Breadth-first search over 8-neighbours: (B, H, W) bool, the largest regions of mask > threshold."""
    keep = np.zeros(masks.shape[:3], bool)
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
                for n in neighbours(i, j, mask.shape):
                    if inside[n] and not labels[n]:
                        labels[n] = labels[start]
                        queue.append(n)
        if max(areas):
            keep[b] = np.isin(labels, [k for k, a in enumerate(areas) if a == max(areas) and k])
    return keep


def neighbours(i, j, shape):
    return [(i + di, j + dj) for di in (-1, 0, 1) for dj in (-1, 0, 1)
            if (di or dj) and 0 <= i + di < shape[0] and 0 <= j + dj < shape[1]]


def reference(masks, threshold=0.5):
    """Each pixel's widest path to the largest regions (Dijkstra with a max-heap): the highest v
    such that a path of pixels all >= v joins it to them, the pixel included; 0 if none."""
    out = np.zeros_like(masks)
    for b, keep in enumerate(largest_regions(masks, threshold)):
        mask, best = masks[b, ..., 0], out[b, ..., 0]
        best[keep] = mask[keep]
        heap = [(-best[p], p) for p in zip(*np.nonzero(keep))]
        heapq.heapify(heap)
        while heap:
            value, (i, j) = heapq.heappop(heap)
            if -value < best[i, j]:
                continue
            for n in neighbours(i, j, mask.shape):
                reach = min(-value, mask[n])
                if reach > best[n]:
                    best[n] = reach
                    heapq.heappush(heap, (-reach, n))
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


def test_soft_values_joined_to_the_largest_region_stay_by_hand():
    masks = np.zeros((1, 7, 10, 1), "float32")
    masks[0, 1:4, 1:4, 0] = 0.9  # 9 pixels: the largest region
    masks[0, 4, 1:4, 0] = [0.3, 0.45, 0.2]  # its soft edge: stays
    masks[0, 5, 0, 0] = 0.25  # joined through the edge's 0.3: stays
    masks[0, 5, 4, 0] = 0.4  # joined only through the edge's 0.2: 0.2
    masks[0, 2, 4:6, 0] = [0.4, 0.3]  # a soft bridge to ...
    masks[0, 1:3, 6:8, 0] = 0.8  # ... a 4-pixel region, joined at 0.3 (its bridge's lowest pixel)
    masks[0, 5:7, 7, 0] = 0.7  # a 2-pixel region, detached: zeroed
    masks[0, 2, 9, 0] = 0.35  # detached: zeroed
    expected = masks.copy()
    expected[0, 5, 4, 0] = 0.2
    expected[0, 1:3, 6:8, 0] = 0.3
    expected[0, 5:7, 7, 0] = expected[0, 2, 9, 0] = 0.0
    out = run(masks)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(out, reference(masks))
    # Above the threshold, the largest region alone, as a plain largest-region filter keeps it.
    np.testing.assert_array_equal(out[..., 0] > 0.5, largest_regions(masks))


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
    assert (out > 0.5).sum() < (masks > 0.5).sum()  # regions were removed ...
    assert ((out > 0) & (out <= 0.5)).sum() > 0.2 * out[0].size  # ... soft values kept
    np.testing.assert_array_equal(out[..., 0] > 0.5, largest_regions(masks))
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
