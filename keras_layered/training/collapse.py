"""Detects mask collapse, the usual failure of layered GANs, and says what to change."""

import numpy as np


def border_ring(masks):
    """(N, 4 * (S - 1)) values of masks (N, S, S, 1) on the image's outer 1-pixel ring, each pixel once."""
    masks = np.asarray(masks)[..., 0]
    return np.concatenate([masks[:, 0], masks[:, -1], masks[:, 1:-1, 0], masks[:, 1:-1, -1]], axis=1)


def mask_summary(masks):
    """"mask mean M, on the border ring B": a healthy layering has B well below M (objects rarely
    touch the border); an inverted one, where the mask is everything around the object, B above M."""
    return f"mask mean {float(np.mean(masks)):.3f}, on the border ring {float(np.mean(border_ring(masks))):.3f}"


def diagnose_masks(masks, full=0.9, empty=0.02, same_shape_iou=0.9, border=0.5):
    """Checks masks sampled from the generator for known failure modes.

    Args:
        masks: (N, H, W, 1) numpy array of mask values in [0, 1], N >= 2, different latents.
        full / empty: mean coverage above / below which the mask is called collapsed.
        same_shape_iou: mean pairwise IoU of the binarized masks above which every latent is
            said to draw the same shape.
        border: fraction of the image border the binarized masks cover, on average, above which
            the layering is called inverted (objects rarely touch most of the border).

    Returns:
        A list of warnings (empty when the masks look healthy).
    """
    masks = np.asarray(masks)
    coverage = float(masks.mean())
    if coverage > full:
        return [
            f"mask collapse: the mask covers {coverage:.0%} of the image (the foreground layer "
            "paints the whole scene). Raise perturb.max_shift, add loss.max_mask_coverage "
            "(e.g. 0.5 with loss.max_coverage_weight 1.0), or use backgrounds with more structure."
        ]
    if coverage < empty:
        return [
            f"mask collapse: the mask covers only {coverage:.1%} of the image (the object layer "
            "vanished). Raise loss.min_mask_coverage or loss.mask_coverage_weight."
        ]
    edge = masks > 0.5
    on_border = border_ring(edge)
    if on_border.mean() > border:
        return [
            f"inverted layering: the mask covers {on_border.mean():.0%} of the image border (the object "
            "sits in the background layer and the mask is everything around it). Check perturb.max_shift "
            "(the shift is what rules this out), give backgrounds sharper structure (data.edges for the "
            "built-in scenes), or add loss.max_mask_coverage (e.g. 0.5 with loss.max_coverage_weight 1.0)."
        ]
    binary = edge.reshape(len(masks), -1)
    inter = binary.astype(np.float32) @ binary.T.astype(np.float32)  # (N, N) pairwise intersections
    area = binary.sum(axis=1).astype(np.float32)
    union = area[:, None] + area[None, :] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1.0), 1.0)
    off_diagonal = iou[~np.eye(len(masks), dtype=bool)]
    if off_diagonal.mean() > same_shape_iou:
        return [
            f"mask mode collapse: masks of different latents overlap with mean IoU "
            f"{off_diagonal.mean():.2f} (one shape for every sample). Lower the learning rates, "
            "raise loss.r1_gamma, or train longer before judging."
        ]
    return []
