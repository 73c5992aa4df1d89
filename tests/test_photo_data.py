"""bench/photo_data.py: the photo benchmark's images and exact masks, in CUB folder layout."""

import importlib.util

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import load_script
from PIL import Image
from scipy import ndimage

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("skimage") is None or importlib.util.find_spec("matplotlib") is None,
    reason="the photo benchmark reads photographs shipped with scikit-image and matplotlib (pip install .[bench])")

RES = 32


@pytest.fixture(scope="module")
def photo_data():
    return load_script("bench/photo_data.py")


@pytest.fixture(scope="module")
def written(photo_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    result = CliRunner().invoke(photo_data.main, ["--out", str(root), "--resolution", str(RES), "--train", "12",
                                                  "--validation", "40", "--test", "6", "--seed", "3",
                                                  "--grid", str(root / "grid.png")])
    assert result.exit_code == 0, result.output
    return root


def files(folder):
    return sorted(p.relative_to(folder) for p in folder.rglob("*.png"))


def pixels(path):
    with Image.open(path) as image:
        return np.asarray(image)


def test_layout_counts_and_training_split_without_masks(written):
    assert len(files(written / "train" / "images")) == 12 and not (written / "train" / "segmentations").exists()
    for split, count in (("validation", 40), ("test", 6)):
        images, masks = files(written / split / "images"), files(written / split / "segmentations")
        assert len(images) == count and images == masks  # images/<shape>/<stem>.png <-> segmentations/<shape>/<stem>.png
    assert pixels(written / "grid.png").shape == (4 * 2 * RES * 4, 8 * RES * 4, 3)  # 32 tiles (image over mask), 4x


def test_masks_are_exact_single_objects_in_the_area_range(written, photo_data):
    low, high = photo_data.AREA_RANGE
    for name in files(written / "validation" / "segmentations"):
        mask = pixels(written / "validation" / "segmentations" / name)
        image = pixels(written / "validation" / "images" / name)
        assert mask.shape == (RES, RES) and image.shape == (RES, RES, 3)
        assert set(np.unique(mask)) == {0, 255}
        assert low <= np.mean(mask > 0) <= high
        assert ndimage.label(mask > 0)[1] == 1, f"{name}: one connected object"


def test_splits_are_reproducible_and_distinct(written, photo_data, tmp_path):
    photos, shapes = photo_data.load_photos(), photo_data.load_shapes()
    again = photo_data.write_split(tmp_path, "validation", 40, RES, seed=3, photos=photos, shapes=shapes)
    for name in files(written / "validation" / "images"):
        np.testing.assert_array_equal(pixels(again / "images" / name), pixels(written / "validation" / "images" / name))
    test = photo_data.write_split(tmp_path, "test", 6, RES, seed=3, photos=photos, shapes=shapes)
    other_seed = photo_data.write_split(tmp_path / "other", "test", 6, RES, seed=4, photos=photos, shapes=shapes)
    for a, b in ((written / "validation", test), (test, other_seed)):
        first = [pixels(p) for p in sorted((a / "images").rglob("*.png"), key=lambda p: p.name)[:6]]
        second = [pixels(p) for p in sorted((b / "images").rglob("*.png"), key=lambda p: p.name)[:6]]
        assert not any(np.array_equal(x, y) for x, y in zip(first, second))


def test_objects_and_backgrounds_vary(written):
    names = files(written / "validation" / "images")
    assert len({name.parts[0] for name in names}) >= 10  # shape classes
    images = np.stack([pixels(written / "validation" / "images" / n) for n in names]).astype(np.float32)
    masks = np.stack([pixels(written / "validation" / "segmentations" / n) for n in names]) > 0
    backgrounds = [image[~mask].mean(axis=0) for image, mask in zip(images, masks)]
    assert np.std(backgrounds, axis=0).min() > 15  # mean background colours spread over the photos
    texture = [image[mask].std(axis=0).mean() for image, mask in zip(images, masks)]
    assert np.median(texture) > 5  # objects are textured, not flat


def test_the_folder_reader_gets_the_masks_back(written):
    from keras_layered.data.folder import folder_dataset

    root = written / "test"
    batch = next(iter(folder_dataset(root, RES, 6, with_masks=True, training=False, crop_scale=1.0)))
    order = sorted((root / "segmentations").rglob("*.png"))  # the reader's path order
    expected = np.stack([pixels(p) > 0 for p in order])[..., None]
    np.testing.assert_array_equal(batch["mask"].numpy(), expected.astype(np.float32))
