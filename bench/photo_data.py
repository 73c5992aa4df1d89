"""A photo benchmark with exact masks: one silhouette per image, textured with a photo, pasted on a
crop of another photo. Written in CUB folder layout, so `--data folder:ROOT/train` reads it.

    python bench/photo_data.py --out data/photos32                    # 32 px: train 4000, validation 500, test 500
    python bench/photo_data.py --out data/photos64 --resolution 64
    python bench/photo_data.py --out /tmp/p --train 64 --validation 0 --test 0 --grid /tmp/p/grid.png

Photographs: the ones that ship inside the scikit-image and matplotlib wheels (`pip install
.[bench]`), nothing is downloaded. Backgrounds are random crops of them (scale, position, flip):
people, animals, food, a rocket against the sky, motorcycles indoors, brick, grass, gravel, text,
microscopy, the night sky. Objects are silhouettes of real shapes: chess pieces, an umbrella, an
airplane, a telephone, a cup, an anchor, a horse, ... (DejaVu Sans glyphs from matplotlib, the
horse of scikit-image), rotated, stretched and scaled to cover 8-30 % of the image, placed at a
random position, textured with a crop of a different photograph, colour-shifted and shaded. The
composite uses the binary mask itself, so the mask is exact: one connected region per image.

Splits: ROOT/{train,validation,test}/images/<shape>/<stem>.png with masks (0 / 255) in
ROOT/<split>/segmentations/<shape>/<stem>.png, the training split without masks unless
--train-masks (training reads none, and a run on a folder with masks scores itself on it at the end). Each split draws from its own random stream
(seeded by --seed and the split's name), so the three never share an image.
"""

import importlib.util
import zlib
from pathlib import Path

import click
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

__all__ = ["AREA_RANGE", "SPLITS", "load_photos", "load_shapes", "make_example", "write_split"]

AREA_RANGE = (0.08, 0.30)  # fraction of the image an object covers
SPLITS = ("train", "validation", "test")

_PHOTOS = [("skimage", f"data/{name}") for name in (
    "astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "motorcycle_right.png",
    "hubble_deep_field.jpg", "ihc.png", "retina.jpg", "color.png", "brick.png", "grass.png", "gravel.png",
    "camera.png", "coins.png", "moon.png", "page.png", "text.png", "clock_motion.png", "cell.png")] + [
    ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg")]

# Glyph silhouettes of DejaVu Sans (single connected shapes at small sizes).
_GLYPHS = {
    "king": "\u265a", "queen": "\u265b", "rook": "\u265c", "bishop": "\u265d", "knight": "\u265e",
    "pawn": "\u265f", "umbrella": "\u2602", "airplane": "\u2708", "telephone": "\u260e", "heart": "\u2665",
    "club": "\u2663", "spade": "\u2660", "diamond": "\u2666", "star": "\u2605", "anchor": "\u2693",
    "cup": "\u2615", "lightning": "\u26a1", "cloud": "\u2601", "hand": "\u270c", "fleur": "\u269c",
    "flag": "\u2691", "flower": "\u273f", "shamrock": "\u2618",
}
_SHAPE_SIZE = 160  # px: silhouettes are rendered once at this size, then transformed per image


def _package_file(package, relative):
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the photo benchmark reads photographs shipped with {package}; install it with "
                                  f"pip install -e '.[bench]' (scikit-image and matplotlib)")
    path = Path(spec.submodule_search_locations[0]) / relative
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed {package}; reinstall it "
                                f"(pip install --force-reinstall {package})")
    return path


def load_photos(max_side=512):
    """The bundled photographs as RGB PIL images, the longer side at most `max_side` px."""
    photos = []
    for package, relative in _PHOTOS:
        with Image.open(_package_file(package, relative)) as image:
            image = image.convert("RGB")
            image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
            photos.append(image)
    return photos


def _tight(mask):
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def load_shapes():
    """{name: bool array} of silhouettes, each cropped to its bounding box."""
    font = ImageFont.truetype(str(_package_file("matplotlib", "mpl-data/fonts/ttf/DejaVuSans.ttf")), _SHAPE_SIZE)
    shapes = {}
    for name, glyph in _GLYPHS.items():
        canvas = Image.new("L", (2 * _SHAPE_SIZE, 2 * _SHAPE_SIZE))
        ImageDraw.Draw(canvas).text((_SHAPE_SIZE // 2, _SHAPE_SIZE // 4), glyph, fill=255, font=font)
        shapes[name] = _tight(ndimage.binary_fill_holes(np.asarray(canvas) >= 128))
    with Image.open(_package_file("skimage", "data/horse.png")) as horse:  # a black horse on white
        shapes["horse"] = _tight(np.asarray(horse.convert("L")) < 128)
    return shapes


def _crop(photo, rng, size, min_scale, max_scale):
    """A random square crop of `photo` (side a fraction in [min_scale, max_scale] of its shorter
    side), maybe flipped, resized to size x size: float32 (size, size, 3) in [0, 1]."""
    side = rng.uniform(min_scale, max_scale) * min(photo.size)
    left, top = rng.uniform(0, photo.size[0] - side), rng.uniform(0, photo.size[1] - side)
    image = photo.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + side, top + side),
                         reducing_gap=2.0)
    pixels = np.asarray(image, np.float32) / 255.0
    return pixels[:, ::-1] if rng.random() < 0.5 else pixels


def _silhouette(shape, rng, resolution):
    """The shape rotated, stretched, scaled and placed: bool (R, R), or None if it came out of range."""
    image = Image.fromarray(shape.astype(np.uint8) * 255).rotate(rng.uniform(-35, 35), Image.Resampling.BILINEAR,
                                                                 expand=True)
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    image = image.resize((round(image.size[0] * np.exp(rng.uniform(-0.25, 0.25))), image.size[1]))
    fill = np.mean(np.asarray(image) >= 128)
    area = rng.uniform(*AREA_RANGE) * resolution**2
    scale = np.sqrt(area / (fill * image.size[0] * image.size[1]))
    width, height = max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale))
    if width > resolution or height > resolution:
        return None
    small = np.asarray(image.resize((width, height), Image.Resampling.BOX)) >= 128
    labels, count = ndimage.label(small)
    if count > 1:  # one object per image: a part cut off by the resize is dropped (exactly, from the mask too)
        small = labels == 1 + np.argmax(np.bincount(labels.ravel())[1:])
    mask = np.zeros((resolution, resolution), bool)
    top, left = rng.integers(0, resolution - height + 1), rng.integers(0, resolution - width + 1)
    mask[top:top + height, left:left + width] = small
    return mask if AREA_RANGE[0] <= mask.mean() <= AREA_RANGE[1] else None


def _texture(photo, rng, resolution):
    """A crop of `photo`, colour-shifted (channel order, gains, offset) and shaded by a linear ramp."""
    pixels = _crop(photo, rng, resolution, 0.1, 0.5)[..., rng.permutation(3)]
    pixels = pixels * rng.uniform(0.6, 1.4, size=3) + rng.uniform(-0.2, 0.2, size=3)
    angle = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:resolution, 0:resolution] / resolution - 0.5
    shading = 1.0 + rng.uniform(0.2, 0.6) * (np.cos(angle) * xs + np.sin(angle) * ys)
    return np.clip(pixels * shading[..., None], 0.0, 1.0)


def make_example(photos, shapes, rng, resolution):
    """(uint8 image (R, R, 3), bool mask (R, R), shape name) drawn from `rng`."""
    names = sorted(shapes)
    while True:
        name = names[rng.integers(len(names))]
        mask = _silhouette(shapes[name], rng, resolution)
        if mask is not None:
            break
    background_index = rng.integers(len(photos))
    background = _crop(photos[background_index], rng, resolution, 0.15, 0.7)
    others = [i for i in range(len(photos)) if i != background_index]
    texture = _texture(photos[others[rng.integers(len(others))]], rng, resolution)
    image = np.where(mask[..., None], texture, background)
    return np.round(image * 255).astype(np.uint8), mask, name


def split_rng(seed, split):
    """The random stream of one split: distinct per split name, reproducible from `seed`."""
    return np.random.default_rng([seed, zlib.crc32(split.encode())])


def write_split(root, split, count, resolution, seed=0, photos=None, shapes=None, masks=True):
    """Writes `count` examples of `split` under root/split (their masks too if `masks`); returns that folder."""
    photos, shapes = photos or load_photos(), shapes or load_shapes()
    rng, folder = split_rng(seed, split), Path(root) / split
    for index in range(count):
        image, mask, name = make_example(photos, shapes, rng, resolution)
        stem = f"{split}_{index:05d}"
        for kind, pixels in (("images", image), ("segmentations", mask.astype(np.uint8) * 255))[:1 + masks]:
            (folder / kind / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(folder / kind / name / f"{stem}.png", compress_level=1)
    return folder


def write_grid(path, split_folder, count=32, columns=8):
    """Images of a written split, each above its mask, as one PNG."""
    images = sorted((Path(split_folder) / "images").rglob("*.png"), key=lambda p: p.name)[:count]
    tiles = []
    for image_path in images:
        mask_path = Path(split_folder) / "segmentations" / image_path.relative_to(Path(split_folder) / "images")
        image = np.asarray(Image.open(image_path))
        mask = np.repeat(np.asarray(Image.open(mask_path))[..., None], 3, axis=-1)
        tiles.append(np.concatenate([image, mask], axis=0))
    tiles += [np.zeros_like(tiles[0])] * (-len(tiles) % columns)
    rows = [np.concatenate(tiles[i:i + columns], axis=1) for i in range(0, len(tiles), columns)]
    Image.fromarray(np.concatenate(rows, axis=0)).resize(
        (rows[0].shape[1] * 4, len(rows) * rows[0].shape[0] * 4), Image.Resampling.NEAREST).save(path)


@click.command()
@click.option("--out", "root", required=True, type=click.Path(file_okay=False), help="Dataset root.")
@click.option("--resolution", default=32, show_default=True, type=click.IntRange(min=8))
@click.option("--train", default=4000, show_default=True, type=click.IntRange(min=0))
@click.option("--validation", default=500, show_default=True, type=click.IntRange(min=0))
@click.option("--test", default=500, show_default=True, type=click.IntRange(min=0))
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of all three splits' streams.")
@click.option("--train-masks/--no-train-masks", default=False, show_default=True,
              help="Masks for the training split too (training needs none; without them a run scores nothing at its end).")
@click.option("--grid", type=click.Path(dir_okay=False), help="Also write a PNG of training images over masks.")
def main(root, resolution, train, validation, test, seed, train_masks, grid):
    photos, shapes = load_photos(), load_shapes()
    for split, count in zip(SPLITS, (train, validation, test)):
        if count:
            masks = train_masks or split != "train"
            folder = write_split(root, split, count, resolution, seed, photos, shapes, masks)
            click.echo(f"wrote {count} images{' and masks' if masks else ''} to {folder}")
    if grid:
        split = next((s for s, c in zip(SPLITS[1:], (validation, test)) if c), None)
        if split is None:
            raise click.UsageError("--grid shows a split with masks: ask for --validation or --test images")
        write_grid(grid, Path(root) / split)
        click.echo(f"wrote {grid}")


if __name__ == "__main__":
    main()
