"""Segmentation metrics with the literature's protocol, and the evaluation of a segmenter on data.

Protocol: predicted masks are thresholded at 0.5; IoU (Jaccard), Dice (F1) and pixel accuracy of
the foreground are computed per image and averaged over the test set ("mean IoU"); the
dataset-level IoU pools intersections and unions over all pixels of all images.
An image whose true and predicted foregrounds are both empty counts as a perfect match (IoU 1).

Beside the IoU, the IoU of the inverted mask (the complement of the thresholded mask) shows an
inverted layering, where the object sits in the background layer and the mask is everything
around it: a high inverted IoU with a low IoU. Both are reported as they are; neither is ever
chosen per image (that would hide the inversion).
"""

import numpy as np


def mask_scores(predicted, true, threshold=0.5):
    """Per-image scores of masks (B, H, W[, 1]): {"iou", "inverted_iou", "dice", "accuracy"} arrays
    of shape (B,), plus the per-image "intersection" and "union" pixel counts the dataset-level IoU
    pools. "inverted_iou" scores the complement of the thresholded mask (predicted < threshold)."""
    predicted, true = np.asarray(predicted), np.asarray(true)
    if predicted.shape != true.shape:
        raise ValueError(f"predicted masks {predicted.shape} and true masks {true.shape} differ in shape")
    p = predicted.reshape(len(predicted), -1) >= threshold
    t = true.reshape(len(true), -1) >= 0.5
    intersection = np.sum(p & t, axis=1).astype(np.int64)
    union = np.sum(p | t, axis=1).astype(np.int64)
    total = np.sum(p, axis=1) + np.sum(t, axis=1)
    empty = union == 0
    inverted_intersection = np.sum(~p & t, axis=1)
    inverted_union = np.sum(~p | t, axis=1)
    return {
        "iou": np.where(empty, 1.0, intersection / np.maximum(union, 1)),
        "inverted_iou": np.where(inverted_union == 0, 1.0, inverted_intersection / np.maximum(inverted_union, 1)),
        "dice": np.where(empty, 1.0, 2 * intersection / np.maximum(total, 1)),
        "accuracy": np.mean(p == t, axis=1),
        "intersection": intersection,
        "union": union,
    }


def summarize(scores):
    """Per-image scores (from one or more `mask_scores` calls, concatenated) -> the reported numbers."""
    return {
        "mean_iou": float(np.mean(scores["iou"])),
        "mean_inverted_iou": float(np.mean(scores["inverted_iou"])),
        "mean_dice": float(np.mean(scores["dice"])),
        "pixel_accuracy": float(np.mean(scores["accuracy"])),
        "dataset_iou": float(np.sum(scores["intersection"]) / max(int(np.sum(scores["union"])), 1)),
        "num_images": int(len(scores["iou"])),
    }


def evaluate_segmenter(segmenter, dataset, threshold=0.5):
    """Scores `segmenter` on `dataset`: batches {"image": (B, H, W, 3) in [-1, 1], "mask": (B, H, W, 1)}.
    Returns `summarize`'s dict."""
    parts = []
    for batch in dataset:
        images = (np.asarray(batch["image"], np.float32) + 1.0) / 2.0  # the segmenter reads floats in [0, 1]
        parts.append(mask_scores(segmenter.predict_on_batch(images), np.asarray(batch["mask"]), threshold))
    if not parts:
        raise ValueError("evaluate_segmenter: the dataset holds no images")
    return summarize({key: np.concatenate([part[key] for part in parts]) for key in parts[0]})
