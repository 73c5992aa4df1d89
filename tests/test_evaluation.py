import numpy as np
import pytest
import tensorflow as tf

from keras_layered.evaluation import evaluate_segmenter, mask_scores, summarize


def masks(*rows):
    """Masks (B, H, W, 1) from nested lists of 0/1 rows, one 2-D list per image."""
    return np.array(rows, np.float32)[..., None]


PRED = masks([[1, 1], [0, 0]], [[0.6, 0.4], [0.5, 0.0]], [[0, 0], [0, 0]], [[1, 0], [0, 0]])
TRUE = masks([[1, 0], [0, 0]], [[1, 1], [1, 1]], [[0, 0], [0, 0]], [[0, 0], [0, 1]])


def test_mask_scores_by_hand():
    scores = mask_scores(PRED, TRUE)
    # image 0: pred {a, b}, true {a}: I=1 U=2 -> IoU 1/2, Dice 2/3, accuracy 3/4
    # image 1: pred (>= 0.5) {a, c}, true all 4: I=2 U=4 -> IoU 1/2, Dice 4/6, accuracy 2/4
    # image 2: both empty -> 1, 1, accuracy 1
    # image 3: pred {a}, true {d}: I=0 U=2 -> 0, 0, accuracy 2/4
    np.testing.assert_allclose(scores["iou"], [0.5, 0.5, 1.0, 0.0])
    np.testing.assert_allclose(scores["dice"], [2 / 3, 2 / 3, 1.0, 0.0])
    np.testing.assert_allclose(scores["accuracy"], [0.75, 0.5, 1.0, 0.5])
    np.testing.assert_array_equal(scores["intersection"], [1, 2, 0, 0])
    np.testing.assert_array_equal(scores["union"], [2, 4, 0, 2])


def test_inverted_iou_scores_the_complement_of_the_thresholded_mask_by_hand():
    scores = mask_scores(PRED, TRUE)
    # image 0: complement {c, d}, true {a}: I=0 U=3 -> 0
    # image 1: complement (< 0.5) {b, d}, true all 4: I=2 U=4 -> 1/2
    # image 2: complement all 4, true empty: I=0 U=4 -> 0
    # image 3: complement {b, c, d}, true {d}: I=1 U=3 -> 1/3
    np.testing.assert_allclose(scores["inverted_iou"], [0.0, 0.5, 0.0, 1 / 3])
    assert summarize(scores)["mean_inverted_iou"] == pytest.approx((0.5 + 1 / 3) / 4)


def test_inverted_layering_scores_high_on_the_inverted_iou_only():
    true = masks([[1, 0], [0, 0]], [[0, 1], [1, 1]])
    summary = summarize(mask_scores(1.0 - true, true))  # every mask is its object's complement
    assert summary["mean_iou"] == 0.0
    assert summary["mean_inverted_iou"] == 1.0
    # Never the better of the two per image: one right and one inverted mask average to 1/2 on both.
    summary = summarize(mask_scores(np.stack([true[0], 1.0 - true[1]]), true))
    assert summary["mean_iou"] == pytest.approx(0.5) and summary["mean_inverted_iou"] == pytest.approx(0.5)


def test_summary_mean_and_dataset_iou_by_hand():
    summary = summarize(mask_scores(PRED, TRUE))
    assert summary["mean_iou"] == pytest.approx((0.5 + 0.5 + 1.0 + 0.0) / 4)
    assert summary["mean_dice"] == pytest.approx((2 / 3 + 2 / 3 + 1 + 0) / 4)
    assert summary["pixel_accuracy"] == pytest.approx((0.75 + 0.5 + 1 + 0.5) / 4)
    # pooled: I = 1 + 2 + 0 + 0 = 3, U = 2 + 4 + 0 + 2 = 8
    assert summary["dataset_iou"] == pytest.approx(3 / 8)
    assert summary["num_images"] == 4


def test_threshold_is_applied_to_predictions():
    soft = masks([[0.7, 0.3]])
    true = masks([[1, 1]])
    assert mask_scores(soft, true)["iou"][0] == pytest.approx(0.5)
    assert mask_scores(soft, true, threshold=0.2)["iou"][0] == pytest.approx(1.0)


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="differ in shape"):
        mask_scores(np.zeros((2, 4, 4, 1)), np.zeros((2, 4, 5, 1)))


class MeanChannel:
    """A stand-in segmenter: mask = mean of the RGB channels, read as in [0, 1]."""

    def predict_on_batch(self, images):
        assert images.min() >= 0.0 and images.max() <= 1.0, "the segmenter gets floats in [0, 1]"
        return images.mean(axis=-1, keepdims=True)


def test_evaluate_segmenter_pools_batches():
    true = np.concatenate([TRUE, TRUE[:2]])  # 6 images
    images = np.repeat(true, 3, axis=-1) * 2.0 - 1.0  # white where the true mask is 1, in [-1, 1]
    images[0] = 1.0  # image 0 predicted all object: IoU 1/4
    dataset = tf.data.Dataset.from_tensor_slices({"image": images, "mask": true}).batch(4)
    summary = evaluate_segmenter(MeanChannel(), dataset)
    assert summary["num_images"] == 6
    assert summary["mean_iou"] == pytest.approx((0.25 + 5 * 1.0) / 6)
    # pooled: I = 1 + 4 + 0 + 1 + 1 + 4 = 11, U = 4 + 4 + 0 + 1 + 1 + 4 = 14
    assert summary["dataset_iou"] == pytest.approx(11 / 14)


def test_evaluate_segmenter_refuses_empty_data():
    empty = tf.data.Dataset.from_tensor_slices({"image": np.zeros((0, 2, 2, 3)), "mask": np.zeros((0, 2, 2, 1))})
    with pytest.raises(ValueError, match="no images"):
        evaluate_segmenter(MeanChannel(), empty.batch(2))
