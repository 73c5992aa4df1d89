import logging

import keras
import numpy as np
import pytest
from keras import ops
from PIL import Image

from keras_layered.models.segmenter import Segmenter
from keras_layered.models.unet import UNet
from keras_layered.errors import UnreadableImageError
from keras_layered.io import find_images, load_image
from keras_layered.segment import segment_images


@keras.saving.register_keras_serializable(package="test_segment")
class ChannelMean(keras.Model):
    """[-1, 1] images -> the mean of their channels, mapped to [0, 1]: a mask computable by hand."""

    def call(self, images):
        return (ops.mean(images, axis=-1, keepdims=True) + 1.0) / 2.0  # (B, H, W, 1)


class FixedMask(keras.Model):
    """Whatever the images, the same (H, W, 1) mask."""

    def __init__(self, mask, **kwargs):
        super().__init__(**kwargs)
        self.mask = np.asarray(mask, np.float32)

    def call(self, images):
        return ops.tile(ops.convert_to_tensor(self.mask)[None], (ops.shape(images)[0], 1, 1, 1))


@pytest.fixture(scope="module")
def unet_segmenter():
    keras.utils.set_random_seed(0)
    return Segmenter(UNet(16, width=4, depth=2), 16)


@pytest.fixture(scope="module")
def mean_segmenter():
    return Segmenter(ChannelMean(), 16)


def noise(height, width, channels=3, seed=0):
    shape = (height, width, channels) if channels > 1 else (height, width)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def solid(path, rgb, size=(10, 6)):
    Image.new("RGB", size, rgb).save(path)
    return path


def read(path):
    return np.asarray(Image.open(path))


def centre(mask):
    """The middle of a `solid` image's mask: inside the model's centre crop, beyond its edge's blur."""
    return mask[2:4, 4:6]


# Mixed folder: name -> (width, height) of the image as written.
SIZES = {
    "a_rgb.png": (17, 9),
    "b_photo.jpg": (40, 33),
    "c_gray.png": (5, 64),
    "d_rgba.png": (12, 20),
    "e_palette.gif": (21, 7),
    "sub/f_nested.JPG": (9, 17),
}


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    (root / ".hidden").mkdir()
    Image.fromarray(noise(9, 17)).save(root / "a_rgb.png")
    Image.fromarray(noise(33, 40, seed=1)).save(root / "b_photo.jpg")
    Image.fromarray(noise(64, 5, channels=1, seed=2)).save(root / "c_gray.png")
    Image.fromarray(noise(20, 12, channels=4, seed=3)).save(root / "d_rgba.png")
    Image.fromarray(noise(7, 21, seed=4)).convert("P").save(root / "e_palette.gif")
    Image.fromarray(noise(17, 9, seed=5)).save(root / "sub" / "f_nested.JPG", format="JPEG")
    Image.fromarray(noise(8, 8, seed=6)).save(root / ".hidden" / "g.png")
    (root / "corrupt.jpg").write_bytes(np.random.default_rng(7).bytes(300))
    (root / "notes.txt").write_text("not an image")
    return root


def test_find_images_recursive_sorted_by_extension(folder):
    found = find_images([folder])
    assert [p.relative_to(folder).as_posix() for p in found] == [
        "a_rgb.png", "b_photo.jpg", "c_gray.png", "corrupt.jpg", "d_rgba.png", "e_palette.gif", "sub/f_nested.JPG",
    ]


def test_find_images_keeps_explicit_files_once(folder):
    found = find_images([folder / "notes.txt", folder / "a_rgb.png", str(folder)])
    assert found[:2] == [folder / "notes.txt", folder / "a_rgb.png"]
    assert len(found) == 8  # the folder's a_rgb.png is not listed twice
    assert find_images(folder / "a_rgb.png") == [folder / "a_rgb.png"]


def test_find_images_missing_path_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.png"):
        find_images([tmp_path, tmp_path / "nowhere.png"])


@pytest.mark.parametrize("mode", ["1", "L", "P", "RGB", "RGBA", "LA", "CMYK", "I;16"])
def test_load_image_gives_uint8_rgb(tmp_path, mode):
    path = tmp_path / ("x.tif" if mode == "CMYK" else "x.png")
    Image.fromarray(noise(9, 17)).convert(mode).save(path)
    image = load_image(path)
    assert image.shape == (9, 17, 3) and image.dtype == np.uint8


def test_load_image_composites_transparency_over_white(tmp_path):
    rgba = np.zeros((2, 3, 4), np.uint8)  # black everywhere
    rgba[0, :, 3] = 0  # transparent
    rgba[1, :, 3] = 128  # half transparent
    Image.fromarray(rgba).save(tmp_path / "x.png")
    image = load_image(tmp_path / "x.png")
    np.testing.assert_array_equal(image[0], 255)
    np.testing.assert_allclose(image[1], 255 * (1 - 128 / 255), atol=1)


def test_load_image_scales_sixteen_bit(tmp_path):
    Image.fromarray(np.array([[0, 257 * 128, 65535]], np.uint16)).save(tmp_path / "x.png")
    np.testing.assert_array_equal(load_image(tmp_path / "x.png")[0], [[0] * 3, [128] * 3, [255] * 3])


def test_load_image_applies_exif_orientation(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, displayed rotated 90 degrees
    Image.fromarray(noise(9, 17)).save(tmp_path / "x.jpg", exif=exif)
    assert load_image(tmp_path / "x.jpg").shape == (17, 9, 3)


def test_load_image_unreadable_raises(folder):
    with pytest.raises(UnreadableImageError, match="corrupt.jpg"):
        load_image(folder / "corrupt.jpg")
    assert issubclass(UnreadableImageError, ValueError)


def test_one_binary_mask_per_readable_image(unet_segmenter, folder, tmp_path, caplog):
    out = tmp_path / "masks"
    with caplog.at_level(logging.WARNING, logger="keras_layered"):
        result = segment_images(unet_segmenter, [folder], out, batch_size=4)
    assert list(result.skipped) == [folder / "corrupt.jpg"]
    assert "corrupt.jpg" in caplog.text
    assert result.cutouts == {}
    assert {p.relative_to(out).as_posix() for p in out.rglob("*.png")} == {
        name.rsplit(".", 1)[0] + ".png" for name in SIZES
    }
    for name, size in SIZES.items():
        mask_path = result.masks[folder / name]
        assert mask_path == out / (name.rsplit(".", 1)[0] + ".png")
        mask = Image.open(mask_path)
        assert mask.mode == "L" and mask.size == size
        assert set(np.unique(read(mask_path))) <= {0, 255}


def test_soft_masks_and_cutout(unet_segmenter, folder, tmp_path):
    out = tmp_path / "masks"
    result = segment_images(unet_segmenter, [folder], out, soft=True, cutout=True)
    assert list(result.cutouts) == list(result.masks)
    masks = {image: read(path) for image, path in result.masks.items()}
    assert all(mask.dtype == np.uint8 for mask in masks.values())
    assert any(np.any((mask > 0) & (mask < 255)) for mask in masks.values())
    for image, cutout_path in result.cutouts.items():
        assert cutout_path == result.masks[image].with_name(image.stem + "_cutout.png")
        cutout = Image.open(cutout_path)
        assert cutout.mode == "RGBA" and cutout.size == Image.open(image).size
        np.testing.assert_array_equal(read(cutout_path)[..., 3], masks[image])
        if image.suffix == ".png":  # lossless: the cutout's colours are the image's
            np.testing.assert_array_equal(read(cutout_path)[..., :3], load_image(image))


def test_channel_mean_masks_by_hand(mean_segmenter, tmp_path):
    halves = np.zeros((30, 40, 3), np.uint8)
    halves[:, 20:] = 255  # black left half, white right half
    Image.fromarray(halves).save(tmp_path / "halves.png")
    solid(tmp_path / "gray.png", (30, 90, 210), size=(23, 11))  # channel mean 110
    binary = segment_images(mean_segmenter, [tmp_path], tmp_path / "binary")
    soft = segment_images(mean_segmenter, [tmp_path], tmp_path / "soft", soft=True)

    # 40 x 30 -> 24 x 18 (shorter side 1.125 x 16), centre crop rows 1-16, columns 4-19: the image's
    # rows 1.7-28.3 and columns 6.7-33.3, symmetric about the edge at column 20.
    mask = read(binary.masks[tmp_path / "halves.png"])
    np.testing.assert_array_equal(mask[:, :20], 0)
    np.testing.assert_array_equal(mask[3:27, 20:32], 255)
    np.testing.assert_array_equal(mask[:, 35:], 0)  # white, but outside the crop
    np.testing.assert_array_equal(mask[[0, 29]], 0)
    soft_halves = read(soft.masks[tmp_path / "halves.png"]).astype(int)
    np.testing.assert_array_equal(soft_halves[:, :15], 0)  # beyond the bilinear kernels' reach
    np.testing.assert_array_equal(soft_halves[3:27, 25:32], 255)
    np.testing.assert_array_equal(soft_halves[:, 35:], 0)
    inside = soft_halves[3:27, 8:32]  # columns c and 39 - c
    np.testing.assert_array_equal(inside + inside[:, ::-1], 255)
    assert np.all(np.diff(inside, axis=1) >= 0) and 0 < soft_halves[5, 19] < 128 < soft_halves[5, 20] < 255

    # 23 x 11 -> 38 x 18, crop columns 11-26: the image's columns 6.7-16.3.
    gray = read(soft.masks[tmp_path / "gray.png"])
    np.testing.assert_allclose(gray[2:9, 8:15], 110, atol=1)
    np.testing.assert_array_equal(gray[:, :5], 0)
    np.testing.assert_array_equal(gray[:, 18:], 0)
    np.testing.assert_array_equal(read(binary.masks[tmp_path / "gray.png"]), 0)  # 110 / 255 < 0.5


@pytest.mark.parametrize("threshold, expected", [(0.4, 255), (0.45, 0)])
def test_threshold(mean_segmenter, tmp_path, threshold, expected):
    path = solid(tmp_path / "gray.png", (110, 110, 110))  # 110 / 255 = 0.431
    result = segment_images(mean_segmenter, [path], tmp_path / "out", threshold=threshold)
    np.testing.assert_array_equal(centre(read(result.masks[path])), expected)


def test_largest_component_keeps_soft_values_for_soft_masks_and_low_thresholds(tmp_path):
    """With largest_component, the object's soft surroundings reach --soft and --threshold below
    0.5; a detached region is removed at every level."""
    mask = np.zeros((32, 32, 1), np.float32)
    mask[6:25, 6:25] = 0.35  # the object's soft surroundings, 4 pixels wide ...
    mask[10:21, 10:21] = 0.9  # ... around the object
    mask[27:30, 27:30] = 0.9  # detached, 2 pixels away
    segmenter = Segmenter(FixedMask(mask), 32, largest_component=True)
    path = solid(tmp_path / "x.png", (0, 0, 0), size=(32, 32))
    masks = {name: read(segment_images(segmenter, [path], tmp_path / name, **kwargs).masks[path]).astype(int)
             for name, kwargs in {"soft": {"soft": True}, "low": {"threshold": 0.3}, "half": {}}.items()}
    halo, detached = (8, 15), (27, 27)
    assert 0.3 * 255 < masks["soft"][halo] < 0.4 * 255
    assert masks["low"][halo] == 255 and masks["half"][halo] == 0
    assert (masks["low"] > masks["half"]).sum() > 100  # the whole ring: 19^2 - 11^2 = 240 pixels of 0.35
    assert masks["soft"][detached] == masks["low"][detached] == masks["half"][detached] == 0
    assert masks["half"][15, 15] == masks["low"][15, 15] == 255 and masks["soft"][15, 15] >= 229


def test_same_stem_collisions(mean_segmenter, tmp_path):
    images = tmp_path / "images"
    colours = {"a/x.jpg": (10, 10, 10), "b/x.png": (200, 200, 200), "c/y.png": (40, 40, 40),
               "c/y.bmp": (80, 80, 80), "c/y_cutout.png": (120, 120, 120)}
    for name, rgb in colours.items():
        (images / name).parent.mkdir(parents=True, exist_ok=True)
        solid(images / name, rgb)

    def check(result, out, expected):
        assert {image.relative_to(images).as_posix(): path.relative_to(out).as_posix()
                for image, path in result.masks.items()} == expected
        for image, path in result.masks.items():  # each mask is its own image's, none overwritten
            np.testing.assert_allclose(centre(read(path)), colours[image.relative_to(images).as_posix()][0], atol=1)

    out = tmp_path / "masks"
    check(segment_images(mean_segmenter, [images / "a" / "x.jpg", images / "b"], out, soft=True), out,
          {"a/x.jpg": "x.png", "b/x.png": "x_2.png"})
    check(segment_images(mean_segmenter, [images], out, soft=True), out,
          {"a/x.jpg": "a/x.png", "b/x.png": "b/x.png", "c/y.bmp": "c/y.png", "c/y.png": "c/y_2.png",
           "c/y_cutout.png": "c/y_cutout.png"})

    out = tmp_path / "cutouts"
    result = segment_images(mean_segmenter, [images / "c"], out, soft=True, cutout=True)
    check(result, out, {"c/y.bmp": "y.png", "c/y.png": "y_2.png", "c/y_cutout.png": "y_cutout_2.png"})
    assert [p.name for p in result.cutouts.values()] == ["y_cutout.png", "y_2_cutout.png", "y_cutout_2_cutout.png"]


def test_output_never_overwrites_input(mean_segmenter, tmp_path):
    path = solid(tmp_path / "x.png", (50, 60, 70))
    result = segment_images(mean_segmenter, [tmp_path], tmp_path)
    assert result.masks[path] == tmp_path / "x_2.png"
    assert np.all(read(path) == [50, 60, 70])


@pytest.mark.parametrize("segmenter, atol", [("unet_segmenter", 1), ("mean_segmenter", 0)])
def test_batch_size_does_not_change_masks(folder, tmp_path, request, segmenter, atol):
    segmenter = request.getfixturevalue(segmenter)
    small = segment_images(segmenter, [folder], tmp_path / "small", batch_size=2, soft=True)
    large = segment_images(segmenter, [folder], tmp_path / "large", batch_size=32, soft=True)
    assert len(small.masks) == len(large.masks) == len(SIZES)
    for image in large.masks:
        np.testing.assert_allclose(read(small.masks[image]), read(large.masks[image]), atol=atol)


@pytest.mark.parametrize("kwargs", [{"batch_size": 0}, {"batch_size": 2.0}, {"threshold": 1.5}])
def test_bad_arguments_raise(mean_segmenter, folder, tmp_path, kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        segment_images(mean_segmenter, [folder], tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_earlier_outputs_inside_the_input_folder_are_not_segmented(mean_segmenter, tmp_path):
    path = solid(tmp_path / "x.png", (50, 60, 70))
    first = segment_images(mean_segmenter, [tmp_path], tmp_path / "masks")
    again = segment_images(mean_segmenter, [tmp_path], tmp_path / "masks")
    assert first.masks == again.masks == {path: tmp_path / "masks" / "x.png"}
