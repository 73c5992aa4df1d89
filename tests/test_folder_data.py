import logging

import numpy as np
import pytest
import tensorflow as tf
from helpers import coded_crop_position, to_uint8, write_images_and_masks
from PIL import Image

from keras_layered.data import geometry
from keras_layered.data.folder import FolderScan, find_image_mask_pairs, folder_dataset, scan_folder
from keras_layered.data.spec import DataSpec, parse_data_spec
from keras_layered.io import load_mask, shorter_side_size

W, H = 40, 30  # every test image is 40 wide, 30 high unless said otherwise


def rectangle_mask(top=6, bottom=24, left=10, right=30, value=200):
    """A soft (H, W) uint8 mask: `value` inside the rectangle, 0 elsewhere, and 127 (background) in one corner."""
    mask = np.zeros((H, W), np.uint8)
    mask[top:bottom, left:right] = value
    mask[:3, :3] = 127
    return mask


def photo(seed):
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def relative(root, pairs):
    return [(image.relative_to(root).as_posix(), mask and mask.relative_to(root).as_posix()) for image, mask in pairs]


@pytest.fixture
def cub(tmp_path):
    """CUB-200-2011 layout: 2 classes of 3 images (one grayscale, one RGBA), PNG masks, one corrupt JPEG."""
    root = tmp_path / "CUB_200_2011"
    for c, cls in enumerate(["001.Albatross", "002.Sparrow"]):
        (root / "images" / cls).mkdir(parents=True)
        (root / "segmentations" / cls).mkdir(parents=True)
        for i in range(3):
            name = f"{cls[4:]}_{i}"
            Image.fromarray(rectangle_mask()).save(root / "segmentations" / cls / f"{name}.png")
            image = Image.fromarray(photo(3 * c + i))
            if (c, i) == (0, 1):
                image.convert("L").save(root / "images" / cls / f"{name}.jpg")
            elif (c, i) == (1, 2):
                image.convert("RGBA").save(root / "images" / cls / f"{name}.png")
            else:
                image.save(root / "images" / cls / f"{name}.jpg")
    (root / "images" / "001.Albatross" / "corrupt.jpg").write_bytes(np.random.default_rng(9).bytes(300))
    return root


CUB_PAIRS = [
    ("images/001.Albatross/Albatross_0.jpg", "segmentations/001.Albatross/Albatross_0.png"),
    ("images/001.Albatross/Albatross_1.jpg", "segmentations/001.Albatross/Albatross_1.png"),
    ("images/001.Albatross/Albatross_2.jpg", "segmentations/001.Albatross/Albatross_2.png"),
    ("images/001.Albatross/corrupt.jpg", None),
    ("images/002.Sparrow/Sparrow_0.jpg", "segmentations/002.Sparrow/Sparrow_0.png"),
    ("images/002.Sparrow/Sparrow_1.jpg", "segmentations/002.Sparrow/Sparrow_1.png"),
    ("images/002.Sparrow/Sparrow_2.png", "segmentations/002.Sparrow/Sparrow_2.png"),
]


@pytest.fixture
def images_and_masks(tmp_path):
    """images/ + masks/ layout: nested folders, masks in other formats, one image without a mask."""
    root = tmp_path / "data"
    for sub in ["images/sub", "masks/sub"]:
        (root / sub).mkdir(parents=True)
    Image.fromarray(photo(0)).save(root / "images" / "sub" / "p.jpg")
    Image.fromarray(rectangle_mask()).save(root / "masks" / "sub" / "p.png")
    Image.fromarray(photo(1)).save(root / "images" / "q.png")
    Image.fromarray(rectangle_mask()).save(root / "masks" / "q.bmp")
    Image.fromarray(photo(2)).save(root / "images" / "r.jpg")
    Image.fromarray(rectangle_mask()).save(root / "masks" / "orphan.png")
    return root


IMAGES_MASKS_PAIRS = [("images/q.png", "masks/q.bmp"), ("images/r.jpg", None), ("images/sub/p.jpg", "masks/sub/p.png")]


@pytest.fixture
def coded(tmp_path):
    """Lossless images that encode their own coordinates and mask: R = 6 x, G = 8 y, B = 255 on the mask."""
    y, x = np.mgrid[:H, :W]
    masks = [np.random.default_rng(i).random((H, W)) < 0.4 for i in range(4)]
    return write_images_and_masks(tmp_path / "coded", {
        i: (np.stack([6 * x, 8 * y, 255 * mask], axis=-1).astype(np.uint8), mask) for i, mask in enumerate(masks)})


def samples(dataset, batches=None):
    """All (image, mask) samples of the first `batches` batches, as numpy."""
    out = []
    for batch in dataset.take(batches) if batches else dataset:
        out += list(zip(batch["image"].numpy(), batch["mask"].numpy()))
    return out


def warnings_about(name, caplog):
    return sum(record.levelno == logging.WARNING and name in record.getMessage() for record in caplog.records)


# Finding pairs


def test_cub_layout_pairs(cub):
    assert relative(cub, find_image_mask_pairs(cub)) == CUB_PAIRS


def test_images_and_masks_layout_pairs(images_and_masks):
    assert relative(images_and_masks, find_image_mask_pairs(images_and_masks)) == IMAGES_MASKS_PAIRS


def test_root_may_be_the_images_folder(images_and_masks, cub):
    root = images_and_masks
    assert relative(root, find_image_mask_pairs(root / "images")) == IMAGES_MASKS_PAIRS
    assert relative(cub, find_image_mask_pairs(cub / "images")) == CUB_PAIRS


def test_cub_segmentations_unpacked_beside_the_dataset(cub):
    (cub / "segmentations").rename(cub.parent / "segmentations")
    pairs = relative(cub.parent, find_image_mask_pairs(cub))
    assert pairs[0] == ("CUB_200_2011/images/001.Albatross/Albatross_0.jpg",
                        "segmentations/001.Albatross/Albatross_0.png")
    assert sum(mask is not None for _, mask in pairs) == 6


def test_masks_inside_a_plain_folder_are_not_images(tmp_path):
    Image.fromarray(photo(0)).save(tmp_path / "a.jpg")
    (tmp_path / "masks").mkdir()
    Image.fromarray(rectangle_mask()).save(tmp_path / "masks" / "a.png")
    assert relative(tmp_path, find_image_mask_pairs(tmp_path)) == [("a.jpg", "masks/a.png")]


def test_masks_beside_a_folder_not_named_images_are_not_used(tmp_path):
    (tmp_path / "cats").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(photo(0)).save(tmp_path / "cats" / "a.jpg")
    Image.fromarray(rectangle_mask()).save(tmp_path / "masks" / "a.png")
    assert relative(tmp_path, find_image_mask_pairs(tmp_path / "cats")) == [("cats/a.jpg", None)]


# Masks


def test_load_mask_thresholds_soft_masks_at_128(tmp_path):
    Image.fromarray(np.array([[0, 127, 128, 255]], np.uint8)).save(tmp_path / "m.png")
    np.testing.assert_array_equal(load_mask(tmp_path / "m.png"), [[False, False, True, True]])


@pytest.mark.parametrize("name, values", [
    ("labels.png", np.array([[0, 1, 1, 0]], np.uint8)),
    ("sixteen.png", np.array([[0, 65535, 32768, 32767]], np.uint16)),
    ("float.tif", np.array([[0.0, 1.0, 0.5, 0.49]], np.float32)),
])
def test_load_mask_formats(tmp_path, name, values):
    Image.fromarray(values).save(tmp_path / name)
    np.testing.assert_array_equal(load_mask(tmp_path / name), [[False, True, True, False]])


def test_load_mask_palettes(tmp_path):
    labels = Image.fromarray(np.array([[0, 1, 2, 0]], np.uint8), mode="P")
    labels.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0])  # class colours, as labelme writes them
    labels.save(tmp_path / "labels.png")
    np.testing.assert_array_equal(load_mask(tmp_path / "labels.png"), [[False, True, True, False]])
    grey = Image.fromarray(np.array([[0, 1, 1, 0]], np.uint8), mode="P")
    grey.putpalette([255, 255, 255, 0, 0, 0])  # index 0 is white: a grey image, read by its grey levels
    grey.save(tmp_path / "grey.gif")
    np.testing.assert_array_equal(load_mask(tmp_path / "grey.gif"), [[True, False, False, True]])


def test_load_mask_bilevel_and_colour(tmp_path):
    values = np.array([[0, 255, 255, 0]], np.uint8)
    Image.fromarray(values).convert("1").save(tmp_path / "bilevel.png")
    Image.fromarray(values).convert("RGB").save(tmp_path / "colour.png")
    for name in ["bilevel.png", "colour.png"]:
        np.testing.assert_array_equal(load_mask(tmp_path / name), [[False, True, True, False]])


# Datasets


@pytest.mark.parametrize("training", [True, False])
def test_batches_shapes_dtypes_and_ranges(cub, training):
    dataset = folder_dataset(cub, 16, 4, with_masks=True, training=training)
    batches = list(dataset.take(3))
    sizes = [len(batch["image"]) for batch in batches]
    assert sizes == ([4, 4, 4] if training else [4, 2])
    for batch in batches:
        image, mask = batch["image"].numpy(), batch["mask"].numpy()
        assert image.shape[1:] == (16, 16, 3) and image.dtype == np.float32
        assert mask.shape[1:] == (16, 16, 1) and mask.dtype == np.float32
        assert image.min() >= -1.0 and image.max() <= 1.0 and image.std() > 0.1
        assert set(np.unique(mask)) == {0.0, 1.0}


def test_without_masks_batches_are_image_tensors(images_and_masks):
    batch = next(iter(folder_dataset(images_and_masks, 8, 2)))
    assert batch.shape == (2, 8, 8, 3)


def test_grayscale_image_has_equal_channels(cub):
    images = np.concatenate([b.numpy() for b in folder_dataset(cub, 16, 8, training=False)])
    assert len(images) == 6  # the corrupt file is skipped
    gray = images[1]  # Albatross_1.jpg, the second readable file in path order
    np.testing.assert_array_equal(gray[..., 0], gray[..., 1])
    np.testing.assert_array_equal(gray[..., 0], gray[..., 2])


@pytest.mark.parametrize("flip, cache", [(True, False), (False, False), (True, True)])
def test_crop_and_flip_keep_image_and_mask_aligned(coded, flip, cache):
    # crop_scale 30 / 24 keeps the 40 x 30 images unresized, so every output pixel is a source pixel.
    dataset = folder_dataset(coded, 24, 8, with_masks=True, crop_scale=1.25, flip=flip, seed=3, cache=cache)
    offsets, flips = set(), set()
    for image, mask in samples(dataset, 10):
        offset, flipped = coded_crop_position(to_uint8(image), mask, 24)
        offsets.add(offset)
        flips.add(flipped)
    assert len(offsets) > 10
    assert flips == ({False, True} if flip else {False})


def test_evaluation_takes_the_centre_crop_deterministically(coded):
    dataset = folder_dataset(coded, 24, 3, with_masks=True, training=False, crop_scale=1.25)
    first, second = samples(dataset), samples(dataset)
    assert len(first) == 4
    for (image, mask), (again, mask_again) in zip(first, second):
        np.testing.assert_array_equal(image, again)
        np.testing.assert_array_equal(mask, mask_again)
        pixels = to_uint8(image)
        assert (pixels[0, 0, 0] // 6, pixels[0, 0, 1] // 8) == ((W - 24) // 2, (H - 24) // 2)
        np.testing.assert_array_equal(pixels[..., 2] > 0, mask[..., 0] == 1)


def test_training_stream_is_reproducible_per_seed(coded):
    def first_batches(seed):
        return [b["image"].numpy() for b in folder_dataset(coded, 24, 4, with_masks=True, seed=seed).take(3)]

    same, other = first_batches(1), first_batches(2)
    for a, b in zip(first_batches(1), same):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(same, other))


def test_cache_auto_keeps_images_within_the_budget():
    # 32 px at crop_scale 1.125: 36^2 x 3 x 4/3 = 5184 bytes an image; 2^30 / 5184 = 207126.9
    assert geometry.cached("auto", 207126, 32, 1.125)
    assert not geometry.cached("auto", 207127, 32, 1.125)
    assert not geometry.cached("auto", None, 32, 1.125)  # count unknown
    assert geometry.cached(True, 10**9, 256, 2.0) and not geometry.cached(False, 1, 8, 1.0)


@pytest.mark.parametrize("budget, reads", [(2**30, 4), (0, None)])
def test_cache_auto_decodes_each_file_once_within_the_budget_with_the_same_batches(coded, monkeypatch, budget,
                                                                                   reads):
    """4 images, 6 batches of 2 = 3 epochs: cached, each file is decoded once; over the budget, every
    epoch decodes again. The batches are those of cache=False either way, also from an offset."""
    from keras_layered.data import folder

    monkeypatch.setattr(geometry, "CACHE_BUDGET", budget)
    calls = []
    read = folder._Reader.read
    monkeypatch.setattr(folder._Reader, "read", lambda self, *paths: calls.append(paths) or read(self, *paths))
    for start in (0, 3):
        calls.clear()
        auto = samples(folder_dataset(coded, 24, 2, with_masks=True, seed=1, cache="auto", start=start), 6)
        assert len(calls) == reads if reads else len(calls) >= 12 - start
        plain = samples(folder_dataset(coded, 24, 2, with_masks=True, seed=1, cache=False, start=start), 6)
        for (image, mask), (image_plain, mask_plain) in zip(auto, plain, strict=True):
            np.testing.assert_array_equal(image, image_plain)
            np.testing.assert_array_equal(mask, mask_plain)


def test_shorter_side_resized_to_crop_scale_times_resolution():
    assert shorter_side_size((40, 30), 18) == (24, 18)
    assert shorter_side_size((30, 40), 18) == (18, 24)
    assert shorter_side_size((500, 333), 144) == (216, 144)
    assert shorter_side_size((9, 9), 9) == (9, 9)


def test_files_and_tfds_tensors_get_the_same_sizes_ties_rounded_half_to_even():
    """The TFDS reader's sizes (tensors, `geometry.shorter_side_size`) are the files' (`io`), also
    where the longer side lands exactly on .5: 5 * 2 / 4 = 2.5 -> 2, 7 * 2 / 4 = 3.5 -> 4."""
    assert shorter_side_size((5, 4), 2) == (2, 2) and shorter_side_size((4, 7), 2) == (2, 4)
    assert shorter_side_size((50, 4), 18) == (225, 18)  # 50 * 18 / 4 = 225 exactly
    sizes = [(w, h) for w in range(1, 41) for h in range(1, 41)] + [(500, 333), (333, 500), (4000, 3)]
    for shorter in (2, 9, 18, 36):
        tensor_sizes = tf.data.Dataset.from_tensor_slices(np.array(sizes)).map(
            lambda wh: geometry.shorter_side_size(wh[1], wh[0], shorter))
        for (w, h), (new_h, new_w) in zip(sizes, tensor_sizes.as_numpy_iterator()):
            assert (new_w, new_h) == shorter_side_size((w, h), shorter), (w, h, shorter)


def test_mask_resized_with_nearest_then_centre_cropped(tmp_path):
    # 48 x 32 -> shorter side 2 * 8 = 16: 24 x 16, exactly half; PIL's nearest takes source pixel 2 j + 1.
    # Centre crop 8 x 8 at (4, 8): output (r, c) comes from source (2 r + 9, 2 c + 17).
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    source = np.zeros((32, 48), np.uint8)
    source[12:20, 20:30] = 255
    Image.fromarray(source).convert("RGB").save(tmp_path / "images" / "a.png")
    Image.fromarray(source).save(tmp_path / "masks" / "a.png")
    (image, mask), = samples(folder_dataset(tmp_path, 8, 1, with_masks=True, training=False, crop_scale=2.0))
    expected = np.zeros((8, 8), np.float32)
    expected[2:6, 2:7] = 1.0  # rows 2 r + 9 in [12, 20), columns 2 c + 17 in [20, 30)
    np.testing.assert_array_equal(mask[..., 0], expected)
    assert np.all(image[3:5, 3:6] == 1.0) and np.all(image[7:, :] == -1.0)  # white inside, black far outside


def test_mask_of_another_size_is_stretched_with_one_warning(images_and_masks, caplog):
    small = np.zeros((15, 20), np.uint8)
    small[3:12, 5:15] = 255  # the rectangle of rectangle_mask(), at half size
    Image.fromarray(small).save(images_and_masks / "masks" / "q.bmp")
    (images_and_masks / "images" / "r.jpg").unlink()
    dataset = folder_dataset(images_and_masks, 24, 2, with_masks=True, training=False, crop_scale=1.25)
    with caplog.at_level(logging.WARNING, logger="keras_layered"):
        first, second = samples(dataset), samples(dataset)
    np.testing.assert_array_equal(first[0][1], first[1][1])  # q's stretched mask == p's full-size mask
    np.testing.assert_array_equal(first[0][1], second[0][1])
    assert warnings_about("q.bmp", caplog) == 1


@pytest.mark.parametrize("size", [(40, 30), (30, 40), (9, 64)])
def test_any_aspect_ratio_gives_square_batches(tmp_path, size):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(
        tmp_path / "a.png")
    assert next(iter(folder_dataset(tmp_path, 8, 2))).shape == (2, 8, 8, 3)


# Unreadable files and errors


def test_corrupt_file_skipped_counted_and_warned_once(cub, caplog):
    with caplog.at_level(logging.WARNING, logger="keras_layered"):
        scan = scan_folder(cub)
        images = list(folder_dataset(scan, 16, 8, training=False))
    assert isinstance(scan, FolderScan)
    assert list(scan.skipped) == [cub / "images" / "001.Albatross" / "corrupt.jpg"]
    assert len(scan.pairs) == 6 and sum(len(b) for b in images) == 6
    assert warnings_about("corrupt.jpg", caplog) == 1


def test_file_failing_only_when_decoded_is_skipped_and_warned_once(images_and_masks, caplog):
    jpeg = images_and_masks / "images" / "r.jpg"
    data = jpeg.read_bytes()
    jpeg.write_bytes(data[:len(data) // 2])  # a valid header, truncated data: passes the scan
    scan = scan_folder(images_and_masks)
    assert scan.skipped == {}
    with caplog.at_level(logging.WARNING, logger="keras_layered"):
        batches = list(folder_dataset(scan, 8, 2).take(6))  # 12 images: the 2 good ones about 6 times
    assert len(batches) == 6
    assert list(scan.skipped) == [jpeg]
    assert warnings_about("r.jpg", caplog) == 1


@pytest.mark.parametrize("training", [True, False])
def test_no_decodable_image_raises_instead_of_waiting_forever(tmp_path, training):
    Image.fromarray(photo(0)).save(tmp_path / "a.jpg")
    data = (tmp_path / "a.jpg").read_bytes()
    (tmp_path / "a.jpg").write_bytes(data[:len(data) // 2])
    with pytest.raises(tf.errors.InvalidArgumentError, match="none of the 1 images could be decoded"):
        next(iter(folder_dataset(tmp_path, 8, 2, training=training)))


def test_missing_folder_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        folder_dataset(tmp_path / "nowhere", 8, 2)
    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(NotADirectoryError, match="a.png"):
        find_image_mask_pairs(tmp_path / "a.png")


def test_empty_folder_raises_naming_folder_and_extensions(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match=r"no images under .*test_empty_folder.*\.jpg.*\.png"):
        folder_dataset(tmp_path, 8, 2)


def test_folder_of_unreadable_images_raises(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="none of the 1 images"):
        scan_folder(tmp_path)


def test_with_masks_needs_every_mask(images_and_masks):
    with pytest.raises(ValueError, match=r"1 of 3 images .* none.*r\.jpg"):
        folder_dataset(images_and_masks, 8, 2, with_masks=True)


@pytest.mark.parametrize("kwargs", [
    {"resolution": 0}, {"resolution": 8.0}, {"batch_size": True}, {"batch_size": 0}, {"crop_scale": 0.9},
    {"start": -1},
])
def test_bad_arguments_raise(images_and_masks, kwargs):
    args = {"resolution": 8, "batch_size": 2, **kwargs}
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        folder_dataset(images_and_masks, **args)


# Data specs


@pytest.mark.parametrize("text, spec", [
    ("synthetic", DataSpec("synthetic")),
    (" folder:data/CUB_200_2011 ", DataSpec("folder", "data/CUB_200_2011")),
    ("folder:C:/data:2024", DataSpec("folder", "C:/data:2024")),  # split on the first ":" only
    ("tfds:caltech_birds2011", DataSpec("tfds", "caltech_birds2011")),
    ("tfds:lsun/car", DataSpec("tfds", "lsun/car")),
])
def test_parse_data_spec(text, spec):
    assert parse_data_spec(text) == spec
    assert parse_data_spec(str(spec)) == spec


@pytest.mark.parametrize("text", ["", "Synthetic", "synthetic:x", "folder:", "tfds:", "tfds:a/", "tfds:/b",
                                  "tfds:a b", "data/birds", "http://x"])
def test_parse_data_spec_rejects_other_forms(text):
    with pytest.raises(ValueError, match=r"(?s)synthetic.*folder:PATH.*folder:.*tfds:NAME\[/CONFIG\].*tfds:"):
        parse_data_spec(text)


def test_parse_data_spec_suggests_folder_for_a_path():
    with pytest.raises(ValueError, match="write folder:data/birds"):
        parse_data_spec("data/birds")
