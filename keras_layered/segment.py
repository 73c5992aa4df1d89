"""Segmenting image files: image files in, mask files (and optional RGBA cutouts) out.

numpy + Pillow around a `Segmenter`; the model is only called, one batch at a time. Files are
found, decoded and resized as training and evaluation read them (`keras_layered.io`).
"""

import dataclasses
import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image

from keras_layered.config import DataConfig
from keras_layered.errors import UnreadableImageError
from keras_layered.io import centre_crop_box, find_with_roots, load_image, resize_shorter_side

log = logging.getLogger("keras_layered")

@dataclasses.dataclass
class SegmentResult:
    """What `segment_images` did, each dict keyed by input path, in input order.

    masks: input -> mask file written. cutouts: input -> cutout file written (only with `cutout`).
    skipped: input -> why it was skipped (it was not read as an image).
    """

    masks: dict = dataclasses.field(default_factory=dict)
    cutouts: dict = dataclasses.field(default_factory=dict)
    skipped: dict = dataclasses.field(default_factory=dict)


def _plan_outputs(found, out_dir, cutout):
    """[(input, mask path, cutout path or None)]: no two outputs, nor an output and an input, collide.

    A file found under a given directory keeps its path relative to that directory; a file given
    itself goes to the top of `out_dir`. First come keeps its natural name `<stem>.png`; a later
    input whose name is taken gets `<stem>_2.png`, `<stem>_3.png`, ... Paths are compared without
    case, so the plan also holds on case-insensitive file systems.
    """

    def key(path):
        return os.path.normcase(path.resolve()).casefold()

    def names(base):
        return (base.with_name(base.name + ".png"), base.with_name(base.name + "_cutout.png") if cutout else None)

    def free(candidate):
        return all(p is None or key(p) not in taken for p in candidate)

    def take(candidate):
        taken.update(key(p) for p in candidate if p is not None)

    taken = {key(image) for image, _ in found}
    bases = [out_dir / (image.relative_to(root).parent if root else "") / image.stem for image, root in found]
    plan = [None] * len(found)
    for i, base in enumerate(bases):
        if free(names(base)):
            plan[i] = names(base)
            take(plan[i])
    for i, base in enumerate(bases):
        if plan[i] is None:
            n = 2
            while not free(names(base.with_name(f"{base.name}_{n}"))):
                n += 1
            plan[i] = names(base.with_name(f"{base.name}_{n}"))
            take(plan[i])
            log.warning("%s: %s is taken, writing %s", found[i][0], names(base)[0], plan[i][0])
    return [(image, *outputs) for (image, _), outputs in zip(found, plan)]


def _is_earlier_output(image, root, out_dir):
    """Whether `image` was found under `out_dir`, a folder inside the directory `root` being searched."""
    if root is None:
        return False
    root, out_dir = root.resolve(), out_dir.resolve()
    return out_dir != root and out_dir.is_relative_to(root) and image.resolve().is_relative_to(out_dir)


def _predict(segmenter, batch):
    """uint8 images (B, R, R, 3) -> float32 masks (B, R, R) in [0, 1]."""
    masks = np.asarray(segmenter.predict_on_batch(np.stack(batch)), dtype=np.float32)
    r = segmenter.resolution
    if masks.shape != (len(batch), r, r, 1):
        raise ValueError(f"segmenter: expected masks of shape ({len(batch)}, {r}, {r}, 1), got {masks.shape}")
    return masks[..., 0]


def _write(item, probability, threshold, soft, result):
    """Pastes one (R, R) probability map into its crop's place (0 elsewhere), resizes that to the
    image's size and writes its mask (and cutout)."""
    image, size, (frame_height, frame_width, top, left), rgb, mask_path, cutout_path = item
    r = len(probability)
    frame = np.zeros((frame_height, frame_width), np.float32)
    frame[top:top + r, left:left + r] = probability
    frame = Image.fromarray(frame)
    probability = np.asarray(frame.resize(size, Image.Resampling.BILINEAR) if frame.size != size else frame)  # (H, W)
    if soft:
        mask = np.round(np.clip(probability, 0.0, 1.0) * 255.0).astype(np.uint8)  # (H, W)
    else:
        mask = np.where(probability >= threshold, 255, 0).astype(np.uint8)  # (H, W)
    mask_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask).save(mask_path)
    result.masks[image] = mask_path
    if cutout_path is not None:
        Image.fromarray(np.dstack([rgb, mask])).save(cutout_path)
        result.cutouts[image] = cutout_path


def segment_images(segmenter, paths, out_dir, *, batch_size=32, threshold=0.5, soft=False, cutout=False,
                   crop_scale=DataConfig.crop_scale):
    """Segments image files with `segmenter`, writing one PNG mask per image into `out_dir`.

    Every image (see `io.find_images` for `paths`, `io.load_image` for the conversions) is seen as
    training and evaluation see it (`data.folder`): its shorter side resized to
    round(`crop_scale` * R), R = `segmenter.resolution` (bilinear, antialiased when shrinking; the
    aspect ratio kept), then its R x R centre crop is segmented, in batches of `batch_size`,
    holding at most one batch of images in memory. The crop's probability map is put back in its
    place in the resized image, with probability 0 outside the crop (the model never saw those
    pixels: a border of 1 - 1 / crop_scale of the shorter side and the ends of the longer one),
    and resized to the image's own size (bilinear) before thresholding, so a mask has the size of
    its image: 0/255 where probability >= `threshold` by default, or round(255 * probability) if
    `soft`. Inside the crop, the masks are the ones `evaluate` scores.

    Output names: `<stem>.png`; a file found under a directory given in `paths` keeps its relative
    directory under `out_dir`. If two inputs (or an output and an input) would share a name, the
    later input gets `<stem>_2.png`, ... (logged); existing files of earlier runs are overwritten.
    With `cutout`, also writes `<stem>_cutout.png`: the RGB image with the mask as its alpha.

    When `out_dir` lies inside a directory given in `paths`, the files under `out_dir` (masks of an
    earlier run) are not segmented. Files that cannot be read are logged and skipped. Returns a
    `SegmentResult`.
    """
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"segment_images: batch_size must be an int >= 1, got {batch_size!r}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"segment_images: threshold must be in [0, 1], got {threshold!r}")
    if isinstance(crop_scale, bool) or not isinstance(crop_scale, (int, float)) or not crop_scale >= 1.0:
        raise ValueError(f"segment_images: crop_scale must be a number >= 1, so the crop fits the resized "
                         f"image, got {crop_scale!r}")
    out_dir = Path(out_dir)
    found = [(image, root) for image, root in find_with_roots(paths) if not _is_earlier_output(image, root, out_dir)]
    plan = _plan_outputs(found, out_dir, cutout)
    out_dir.mkdir(parents=True, exist_ok=True)
    r = segmenter.resolution
    result = SegmentResult()
    items, batch = [], []

    def flush():
        for item, probability in zip(items, _predict(segmenter, batch)):
            _write(item, probability, threshold, soft, result)
        items.clear()
        batch.clear()

    for image, mask_path, cutout_path in plan:
        try:
            rgb = load_image(image)
        except (UnreadableImageError, OSError) as err:
            log.warning("skipping: %s", err)
            result.skipped[image] = str(err)
            continue
        resized = np.asarray(resize_shorter_side(Image.fromarray(rgb), round(crop_scale * r)))  # (H', W', 3)
        top, left = centre_crop_box(*resized.shape[:2], r)
        batch.append(resized[top:top + r, left:left + r])  # (R, R, 3) uint8
        crop = (*resized.shape[:2], top, left)
        items.append((image, (rgb.shape[1], rgb.shape[0]), crop, rgb if cutout else None, mask_path, cutout_path))
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return result
