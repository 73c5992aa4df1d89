"""Tests of `diagnose_masks`, the mask-collapse detector."""

import numpy as np

from keras_layered.training.collapse import border_ring, diagnose_masks, mask_summary

SIZE = 16


def disk(cy, cx, radius=3, size=SIZE):
    yy, xx = np.mgrid[:size, :size]
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2).astype(np.float32)[..., None]


def test_full_masks_report_collapse_and_suggest_max_shift():
    warnings = diagnose_masks(np.ones((4, SIZE, SIZE, 1), np.float32))
    assert len(warnings) == 1
    assert "collapse" in warnings[0]
    assert "max_shift" in warnings[0]
    assert "100%" in warnings[0]


def test_empty_masks_suggest_min_mask_coverage():
    warnings = diagnose_masks(np.zeros((4, SIZE, SIZE, 1), np.float32))
    assert len(warnings) == 1
    assert "collapse" in warnings[0]
    assert "min_mask_coverage" in warnings[0]
    assert "max_shift" not in warnings[0]


def test_identical_shapes_report_mode_collapse():
    masks = np.stack([disk(8, 8)] * 6)
    warnings = diagnose_masks(masks)
    assert len(warnings) == 1
    assert "mode collapse" in warnings[0]
    assert "1.00" in warnings[0]  # the mean IoU


def test_nearly_identical_soft_shapes_report_mode_collapse():
    # Soft masks binarise at 0.5: 0.7 inside and 0.2 outside still draw one shape.
    masks = np.stack([disk(8, 8) * 0.5 + 0.2] * 4)
    assert any("mode collapse" in w for w in diagnose_masks(masks))


def test_healthy_masks_give_no_warning():
    masks = np.stack([disk(4, 4), disk(4, 11), disk(11, 4), disk(11, 11), disk(8, 8, radius=2)])
    coverage = masks.mean()
    assert 0.02 < coverage < 0.9  # the test case itself is in the healthy range
    assert diagnose_masks(masks) == []


def test_thresholds_are_the_documented_ones():
    # Coverage 0.95 > 0.9 collapses; coverage 0.85 with different shapes does not.
    full = np.ones((2, 10, 10, 1), np.float32)
    full[0, 0, :5] = 0.0  # 95 of 100 pixels covered in each mask
    full[1, 0, :5] = 0.0
    assert diagnose_masks(full) and "collapse" in diagnose_masks(full)[0]
    masks = np.ones((2, 10, 10, 1), np.float32)
    masks[0, :3] = 0.0  # 70 % and 100 % -> mean 0.85, IoU 0.7
    assert not any("collapse" in w for w in diagnose_masks(masks))


def test_masks_around_the_objects_report_inverted_layering():
    holes = 1.0 - np.stack([disk(4, 4), disk(4, 11), disk(11, 4), disk(11, 11)])
    warnings = diagnose_masks(holes)
    assert len(warnings) == 1 and "inverted layering" in warnings[0]
    assert "100% of the image border" in warnings[0] and "perturb.max_shift" in warnings[0]


def test_objects_touching_the_border_are_not_inverted():
    # Each disk covers 9 of the 60 border pixels (15 %), far below 50 %.
    masks = np.stack([disk(0, 8, radius=4), disk(15, 8, radius=4), disk(8, 0, radius=4)])
    assert diagnose_masks(masks) == []


def test_border_ring_counts_each_outer_pixel_once():
    masks = np.zeros((1, 4, 4, 1), np.float32)
    masks[0, 0, 0] = 1.0  # a corner: on the ring once, not twice
    masks[0, 1:3, 1:3] = 1.0  # the inside: not on the ring
    ring = border_ring(masks)
    assert ring.shape == (1, 12)  # 4 * (4 - 1) outer pixels
    assert ring.sum() == 1.0


def test_mask_summary_by_hand():
    # 4x4 masks: the 2x2 centre (4 of 16 pixels) and the whole 12-pixel ring of the other.
    centre = np.zeros((4, 4, 1), np.float32)
    centre[1:3, 1:3] = 1.0
    assert mask_summary(np.stack([centre, 1.0 - centre])) == (
        "mask mean 0.500, on the border ring 0.500")  # (4 + 12) / 32; (0 + 12) / 24
    assert mask_summary(centre[None]) == "mask mean 0.250, on the border ring 0.000"
    assert mask_summary(1.0 - centre[None]) == "mask mean 0.750, on the border ring 1.000"
