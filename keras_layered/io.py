"""Image files and the geometry of real images (numpy + Pillow; no TensorFlow).

Finding and decoding files:

- `find_images(paths)`: files and directories -> the image files they name (`IMAGE_EXTENSIONS`).
- `open_image`, `load_image`: a decoded PIL image / uint8 RGB array, as an image viewer shows it.
- `load_mask`: a mask file -> bool foreground array.

The geometry every reader of real images follows (the original code's `org_to_crop`): the shorter
side is resized to round(crop_scale * resolution), then a resolution x resolution crop is taken,
the centre one for evaluation and `segment`. This module owns the rule:

- `shorter_side_size`: the size after the first step (Python ints, rounding half to even);
- `centre_crop_box`: where the centre crop starts (ints, or TensorFlow tensors alike).

Who applies it, and how:

- files (`data.folder`, `segment`): `resize_shorter_side` here, Pillow bilinear for images
  (antialiased when shrinking), nearest for masks onto their image's resized size;
- TFDS tensors (`data.tfds`): `tf.image.resize`, bilinear with antialiasing, at the size that
  `data.geometry.shorter_side_size` gets from `shorter_side_size`;
- crops and flips of both data readers: `data.geometry.crop_and_flip`, whose centre crop is
  `centre_crop_box`, as `segment`'s is.
"""

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from keras_layered.errors import UnreadableImageError

__all__ = ["IMAGE_EXTENSIONS", "PIL_ERRORS", "centre_crop_box", "find_images", "load_image", "load_mask",
           "open_image", "resize_shorter_side", "shorter_side_size"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")

PIL_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)  # what a bad file raises


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


def find_with_roots(paths):
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
    return [image for image, _ in find_with_roots(paths)]


def _sixteen_bit_to_rgb(image):
    values = np.asarray(image, dtype=np.float64)
    gray = np.clip(np.round(values / 257.0), 0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1)


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


def _grey_palette(image):
    """Whether every colour a palette image uses is a grey, i.e. it is a grayscale image in disguise."""
    palette = np.asarray(image.getpalette() or [], dtype=np.int64).reshape(-1, 3)
    used = np.unique(np.asarray(image))
    colours = palette[used[used < len(palette)]]
    return bool(np.all((colours[:, 0] == colours[:, 1]) & (colours[:, 1] == colours[:, 2])))


def load_mask(path) -> np.ndarray:
    """A mask file -> bool array (H, W), True on the foreground.

    Grey levels are thresholded at half their range: >= 128 for 8-bit files (CUB's soft masks
    included), >= 32768 for 16-bit, >= 0.5 for float; colour masks by their luminance. A mask
    whose values are all 0 or 1 holds labels: 1 is the foreground. Palette masks with non-grey
    colours are label maps: every index but 0 is foreground. EXIF orientation is applied.
    Raises UnreadableImageError if Pillow cannot decode the file.
    """
    image = open_image(path)
    if image.mode == "1":
        return np.asarray(image, dtype=bool)
    if image.mode == "P" and not _grey_palette(image):
        return np.asarray(image) != 0
    if image.mode == "F":
        return np.asarray(image) >= 0.5
    if image.mode.startswith("I"):
        values, half = np.asarray(image).astype(np.int64), 32768
    else:
        values, half = np.asarray(image.convert("L")), 128
    return values >= (1 if values.max(initial=0) <= 1 else half)


def shorter_side_size(size, shorter):
    """(W, H) scaled so that min(W, H) == `shorter`, the other side rounded half to even (Python's
    round; tf.round rounds the same way), never below `shorter`."""
    width, height = size
    if width <= height:
        return shorter, max(shorter, round(height * shorter / width))
    return max(shorter, round(width * shorter / height)), shorter


def resize_shorter_side(image, shorter, resample=Image.Resampling.BILINEAR):
    """A PIL image with its shorter side resized to `shorter` (unchanged if it already is): the
    first step of the real images' geometry, for training, evaluation and `segment_images` alike."""
    size = shorter_side_size(image.size, shorter)
    return image.resize(size, resample) if size != image.size else image


def centre_crop_box(height, width, resolution):
    """(top, left) of the resolution x resolution centre crop of a (height, width) image: where
    `segment_images` and evaluation (`data.geometry.crop_and_flip`) crop (ints or tensors)."""
    return (height - resolution) // 2, (width - resolution) // 2
