"""Segmenting image files: image files in, mask files (and optional RGBA cutouts) out.

numpy + Pillow around a `Segmenter`; the model is only called, one batch at a time.
"""

import dataclasses
import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from keras_layered.config import DataConfig

log = logging.getLogger("keras_layered")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")


class UnreadableImageError(ValueError):
    """A file that Pillow cannot open or decode as an image."""

    def __init__(self, path, reason):
        super().__init__(f"cannot read {path} as an image: {reason}")
        self.path = Path(path)
        self.reason = reason


@dataclasses.dataclass
class SegmentResult:
    """What `segment_images` did, each dict keyed by input path, in input order.

    masks: input -> mask file written. cutouts: input -> cutout file written (only with `cutout`).
    skipped: input -> why it was skipped (it was not read as an image).
    """

    masks: dict = dataclasses.field(default_factory=dict)
    cutouts: dict = dataclasses.field(default_factory=dict)
    skipped: dict = dataclasses.field(default_factory=dict)


def _is_hidden(name):
    return name.startswith(".")


def _walk_images(root):
    """Image files under the directory `root`, recursively, sorted by path; hidden entries skipped."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not _is_hidden(d)]
        for name in filenames:
            if not _is_hidden(name) and name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(Path(dirpath) / name)
    return sorted(found, key=lambda p: p.relative_to(root).parts)


def _find_with_roots(paths):
    """[(image file, the directory it was found under, or None for a file given itself)], deduplicated."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    found, seen = [], set()
    for path in map(Path, paths):
        if path.is_dir():
            entries = [(image, path) for image in _walk_images(path)]
        elif path.exists():
            entries = [(path, None)]
        else:
            raise FileNotFoundError(f"no such file or directory: {path}")
        for image, root in entries:
            key = os.path.normcase(image.resolve())
            if key not in seen:
                seen.add(key)
                found.append((image, root))
    return found


def find_images(paths):
    """Files and directories -> the image files they name, in order, each file once.

    A directory contributes the files under it (recursively, sorted by path, skipping names that
    start with ".") whose extension is one of `IMAGE_EXTENSIONS`, in any case. A file given itself
    is kept whatever its extension. Raises FileNotFoundError naming a path that does not exist.
    """
    return [image for image, _ in _find_with_roots(paths)]


def _sixteen_bit_to_rgb(image):
    values = np.asarray(image, dtype=np.float64)
    gray = np.clip(np.round(values / 257.0), 0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1)


PIL_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)  # what a bad file raises


def open_image(path):
    """A decoded PIL image with its EXIF orientation applied; UnreadableImageError (naming the
    file) if Pillow cannot decode it, FileNotFoundError if it is not there."""
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            image.load()
            return image
    except FileNotFoundError:
        raise
    except PIL_ERRORS as err:
        raise UnreadableImageError(path, err) from err


def load_image(path):
    """An image file -> uint8 RGB array (H, W, 3), as an image viewer shows it.

    EXIF orientation is applied, so (H, W) is the displayed size. Grayscale, palette, CMYK and
    16-bit images are converted to RGB (16-bit values v -> round(v / 257)). Transparent images
    (RGBA, LA, palette with transparency) are composited over white, as viewers show them: the
    colours hidden under alpha 0 are often arbitrary. Animated images give their first frame.
    Raises UnreadableImageError (a ValueError naming the file) if Pillow cannot decode it.
    """
    image = open_image(path)
    if image.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
        return _sixteen_bit_to_rgb(image)
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, image.convert("RGBA"))
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


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


def _shorter_side_size(size, shorter):
    """(W, H) scaled so that min(W, H) == `shorter`, the other side rounded."""
    width, height = size
    if width <= height:
        return shorter, max(shorter, round(height * shorter / width))
    return max(shorter, round(width * shorter / height)), shorter


def resize_shorter_side(image, shorter, resample=Image.Resampling.BILINEAR):
    """A PIL image with its shorter side resized to `shorter` (unchanged if it already is): the
    first step of the real images' geometry, for training, evaluation and `segment_images` alike."""
    size = _shorter_side_size(image.size, shorter)
    return image.resize(size, resample) if size != image.size else image


def centre_crop_box(height, width, resolution):
    """(top, left) of the resolution x resolution centre crop of a (height, width) image: where
    `segment_images` and evaluation (`data.geometry.crop_and_flip`) crop (ints or tensors)."""
    return (height - resolution) // 2, (width - resolution) // 2


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

    Every image (see `find_images` for `paths`, `load_image` for the conversions) is seen as
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
    found = [(image, root) for image, root in _find_with_roots(paths) if not _is_earlier_output(image, root, out_dir)]
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
