"""Image folders as a data source: image files, with ground-truth masks where a parallel tree has them.

Layouts (see `find_image_mask_pairs`): ROOT/images/<...>/<stem>.jpg with masks in
ROOT/segmentations/<...>/<stem>.png (CUB-200-2011) or ROOT/masks/<...>; ROOT naming the images
folder itself, with masks/ or segmentations/ beside it; or a plain folder of images.

Geometry, as the original code's `org_to_crop`: the shorter side is resized to
round(crop_scale * resolution) (bilinear for images, nearest for masks), then a random crop
(training) or the centre crop (evaluation) of resolution x resolution is taken, then, when
training, a horizontal flip with probability 0.5. Image and mask travel as one 4-channel tensor
through crop and flip (`keras_layered.data.geometry`, shared with the TFDS reader), so they
cannot drift apart.

Files are decoded with Pillow by `io.load_image` and `io.load_mask` (EXIF orientation, grayscale,
palette, 16-bit and transparent images handled as everywhere else in the package) and resized by
`io.resize_shorter_side`, inside `tf.numpy_function`, so a parallel map decodes several files at
once. Finding and scanning the files needs no TensorFlow: only `folder_dataset` imports it.
"""

import dataclasses
import logging
import threading
from pathlib import Path

import numpy as np
from PIL import Image

from keras_layered.config import DataConfig
from keras_layered.errors import UnreadableImageError
from keras_layered.io import IMAGE_EXTENSIONS, PIL_ERRORS, find_images, load_image, load_mask, resize_shorter_side

__all__ = ["FolderScan", "find_image_mask_pairs", "folder_dataset", "scan_folder"]

log = logging.getLogger("keras_layered")

_MASK_FOLDERS = ("segmentations", "masks")


@dataclasses.dataclass
class FolderScan:
    """What `scan_folder` found under `root`.

    pairs: [(image, mask or None)] of the images Pillow could open, sorted by path.
    skipped: {file: why} for the images and masks that could not be read. A dataset built from
    this scan adds the files that fail only when decoded, so len(skipped) is the count so far.
    mask_folders: the mask folders found, in order of preference (if none, where they were looked for).
    """

    root: Path
    pairs: list
    skipped: dict
    mask_folders: list


def _layout(root):
    """(the folder holding the images, [candidate mask folders, in order of preference])."""
    images = root / "images" if (root / "images").is_dir() else root
    candidates = [images / name for name in _MASK_FOLDERS]
    if images.name.casefold() == "images":
        candidates += [images.parent / name for name in _MASK_FOLDERS]
        # CUB's segmentations.tgz unpacks next to CUB_200_2011/, not inside it.
        candidates.append(images.parent.parent / "segmentations")
    return images, candidates


def _mask_index(folder):
    """{(relative folder parts, stem): mask file} for the image files under `folder`, PNG first."""
    index = {}
    for path in sorted(find_images(folder), key=lambda p: p.suffix.lower() != ".png"):
        index.setdefault((path.parent.relative_to(folder).parts, path.stem), path)
    return index


def _pairs(root):
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"image folder {root} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is a file; expected a folder of images")
    images, candidates = _layout(root)
    folders = [folder for folder in candidates if folder.is_dir()]
    inside = [folder for folder in folders if folder.parent == images]
    indexes = [_mask_index(folder) for folder in folders]
    pairs = []
    for image in find_images(images):
        if any(image.is_relative_to(folder) for folder in inside):
            continue
        key = (image.parent.relative_to(images).parts, image.stem)
        pairs.append((image, next((index[key] for index in indexes if key in index), None)))
    return root, pairs, candidates


def find_image_mask_pairs(root) -> list:
    """The image files under `root` with their ground-truth masks: [(image, mask or None)], sorted.

    Images are the files with an extension in `io.IMAGE_EXTENSIONS` under ROOT/images when
    that folder exists, else under ROOT, recursively. The mask of IMAGES/<sub>/<stem>.<ext> is
    the image file <sub>/<stem>.<any extension> (PNG preferred) in the first of these folders
    that has one:

        IMAGES/segmentations, IMAGES/masks      (not scanned for images)
        and, when IMAGES is named "images":
        IMAGES/../segmentations, IMAGES/../masks   (CUB-200-2011; images/ + masks/)
        IMAGES/../../segmentations              (CUB's segmentations.tgz unpacked beside it)

    Other layouts find no masks, which training does not need. Files are not opened here (see
    `scan_folder`). Raises FileNotFoundError or NotADirectoryError if `root` is not a folder.
    """
    return _pairs(root)[1]


def _readable(path):
    """None if Pillow can open and verify `path`, else the reason it cannot."""
    try:
        with Image.open(path) as image:
            image.verify()
    except PIL_ERRORS as err:
        return str(err) or type(err).__name__
    return None


def scan_folder(root) -> FolderScan:
    """`find_image_mask_pairs(root)` with every file checked by Pillow (`Image.verify`).

    An unreadable image is dropped, an unreadable mask leaves its image without one; each is
    logged once (logger "keras_layered") and listed in `skipped`. Raises ValueError if the
    folder holds no readable image.
    """
    root, found, candidates = _pairs(root)
    if not found:
        raise ValueError(f"no images under {root}: expected files ending in {', '.join(IMAGE_EXTENSIONS)} "
                         f"(in any case), in ROOT/images or ROOT itself")
    pairs, skipped = [], {}
    for image, mask in found:
        for path in (image, mask):
            reason = path and _readable(path)
            if reason:
                log.warning("skipping: cannot read %s as an image: %s", path, reason)
                skipped[path] = reason
        if image not in skipped:
            pairs.append((image, None if mask in skipped else mask))
    if not pairs:
        raise ValueError(f"none of the {len(found)} images under {root} can be read (see the warnings)")
    return FolderScan(root, pairs, skipped, [folder for folder in candidates if folder.is_dir()] or candidates)


class _Reader:
    """Pair index -> (uint8 (H', W', 3) image, with the 0/1 mask as a 4th channel if masks are
    wanted; whether it was read), the shorter side resized to `shorter`. Runs inside
    tf.numpy_function, possibly in several threads at once."""

    def __init__(self, scan, shorter, with_masks):
        self.pairs, self.skipped = scan.pairs, scan.skipped
        self.shorter, self.with_masks = shorter, with_masks
        self.failed, self.warned = set(), set()
        self.lock = threading.Lock()
        self.nothing = np.zeros((1, 1, 4 if with_masks else 3), np.uint8)

    def __call__(self, index):
        index = int(index)
        if index not in self.failed:
            image_path, mask_path = self.pairs[index]
            try:
                return self.read(image_path, mask_path), True
            except UnreadableImageError as err:
                self.fail(index, err.path, err)
            except OSError as err:  # e.g. a file deleted since the scan
                self.fail(index, Path(err.filename or image_path), err)
        if len(self.failed) == len(self.pairs):
            # On every call, not just once: a fused map-and-batch downstream reports an error only
            # with a full batch, which a stream of skipped files never fills.
            raise ValueError(f"none of the {len(self.pairs)} images could be decoded (see the warnings)")
        return self.nothing, False

    def read(self, image_path, mask_path):
        image = Image.fromarray(load_image(image_path))
        rgb = np.asarray(resize_shorter_side(image, self.shorter))
        size = (rgb.shape[1], rgb.shape[0])
        if not self.with_masks:
            return rgb
        mask = Image.fromarray(load_mask(mask_path).astype(np.uint8))  # 0/1, mode "L"
        if mask.size != image.size:
            self.warn_once(mask_path, f"mask {mask_path} is {mask.size[0]}x{mask.size[1]} but its image "
                                      f"{image_path} is {image.size[0]}x{image.size[1]}; stretching the mask")
        mask = np.asarray(mask.resize(size, Image.Resampling.NEAREST) if size != mask.size else mask)
        return np.concatenate([rgb, mask[..., None]], axis=-1)

    def warn_once(self, key, message):
        with self.lock:
            if key in self.warned:
                return
            self.warned.add(key)
        log.warning("%s", message)

    def fail(self, index, path, err):
        with self.lock:
            self.failed.add(index)
            self.skipped[path] = str(err)
        log.warning("skipping: %s", err)


def _check_count(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")


def _check_masks(scan):
    missing = [image for image, mask in scan.pairs if mask is None]
    if not missing:
        return
    unreadable = sum(1 for path in scan.skipped if any(path.is_relative_to(f) for f in scan.mask_folders))
    note = f" ({unreadable} of them unreadable, see the warnings)" if unreadable else ""
    raise ValueError(
        f"with_masks needs a mask for every image, but {len(missing)} of {len(scan.pairs)} images under "
        f"{scan.root} have none{note}, e.g. {missing[0]}. The mask of <sub>/<stem>.<ext> is looked for as "
        f"<sub>/<stem>.<any image extension> under {', '.join(map(str, scan.mask_folders))}.")


def folder_dataset(root, resolution: int, batch_size: int, *, with_masks: bool = False, training: bool = True,
                   flip: bool = DataConfig.flip, crop_scale: float = DataConfig.crop_scale, seed: int = DataConfig.seed,
                   cache: bool | str = DataConfig.cache, start: int = 0):
    """A tf.data.Dataset of batches of the images under `root` (a folder, or its `scan_folder`
    result to reuse the scan).

    Yields images (B, R, R, 3) float32 in [-1, 1] with R = `resolution`, or dicts {"image",
    "mask": (B, R, R, 1) float32 of exact 0/1} when `with_masks`, which needs a mask for every
    image (ValueError otherwise). See the module docstring for the geometry.

    training: files in a new seeded random order each epoch, repeated forever, random crops,
    flips unless `flip` is False; full batches only. Otherwise one pass in path order, centre
    crops, no flips, the last batch possibly smaller. Crops and flips are a pure function of
    `seed` and the position in the stream, so a run is reproducible; `start` skips that many images
    of the training stream (cheaply, before decoding), so a run resumed after k steps of batch B
    passes k * B and sees the batches of a run that never stopped (when every file is readable).

    cache: keep the decoded, resized images in memory after the first pass, so later epochs
    decode nothing (for datasets that fit in memory: about 3 * (crop_scale * R)^2 * 4/3 bytes
    per image); "auto": when they take at most `geometry.CACHE_BUDGET`. On the images a training
    reads, the batches are the same either way when every file is readable (the same seeded order
    and crops).

    Unreadable files are skipped, each logged once; pass a `scan_folder` result to count them.
    """
    import tensorflow as tf

    from keras_layered.data.geometry import cached, check_crop_scale, crop_and_flip, to_floats

    _check_count("resolution", resolution)
    _check_count("batch_size", batch_size)
    check_crop_scale(crop_scale)
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise ValueError(f"start must be an integer >= 0, got {start!r}.")
    scan = root if isinstance(root, FolderScan) else scan_folder(root)
    if with_masks:
        _check_masks(scan)
    channels = 4 if with_masks else 3
    reader = _Reader(scan, round(crop_scale * resolution), with_masks)

    def read(index):
        pixels, ok = tf.numpy_function(reader, [index], (tf.uint8, tf.bool))
        pixels.set_shape((None, None, channels))  # (H', W', C) uint8
        return pixels, ok

    def crop(position, pixels):
        return crop_and_flip(pixels, position, resolution, training=training, flip=flip, seed=seed)

    def decoded(indices):
        return (indices.map(read, num_parallel_calls=tf.data.AUTOTUNE)
                .filter(lambda pixels, ok: ok)
                .map(lambda pixels, ok: pixels))

    indices = tf.data.Dataset.range(len(scan.pairs))
    # Cached: decoded once in path order, then the decoded images are shuffled.
    if cached(cache, len(scan.pairs), resolution, crop_scale, channels):
        images = decoded(indices).cache()
        if training:
            images = images.shuffle(len(scan.pairs), seed=seed, reshuffle_each_iteration=True).repeat().skip(start)
    else:
        if training:
            indices = indices.shuffle(len(scan.pairs), seed=seed, reshuffle_each_iteration=True).repeat().skip(start)
        images = decoded(indices)
    return (images.enumerate(start if training else 0)
            .map(crop, num_parallel_calls=tf.data.AUTOTUNE)
            .batch(batch_size, drop_remainder=training)
            .map(lambda pixels: to_floats(pixels, with_masks), num_parallel_calls=tf.data.AUTOTUNE)
            .prefetch(tf.data.AUTOTUNE))
