"""TFDS datasets: mocked with tfds.testing.mock_data (works offline in TFDS 4.9.10: without metadata
files it builds examples from each builder's code), plus a tiny builder prepared for real."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from helpers import coded_crop_position, to_uint8

from keras_layered.config import ConfigError, load_config
from keras_layered.data import tfds as tfds_data
from keras_layered.data.registry import DATASETS, TfdsDataset
from keras_layered.data.tfds import MissingDatasetError, tfds_dataset, to_rgb

H, W = 30, 40


def coded_examples(num=5, mask_values=(0, 255), mask_key="segmentation_mask"):
    """An `as_dataset_fn` for mock_data: lossless images that encode their own coordinates and mask
    (R = 6 x, G = 8 y, B = 255 on the mask); the mask feature holds `mask_values` (off, on)."""
    y, x = np.mgrid[:H, :W]

    def as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False):
        def examples():
            for i in range(num):
                mask = np.random.default_rng(i).random((H, W)) < 0.4
                image = np.stack([6 * x, 8 * y, 255 * mask], -1).astype(np.uint8)
                yield {"image": image, mask_key: np.where(mask, *mask_values[::-1])[..., None].astype(np.uint8)}

        dataset = tf.data.Dataset.from_generator(examples, output_signature={
            "image": tf.TensorSpec((None, None, 3), tf.uint8), mask_key: tf.TensorSpec((None, None, 1), tf.uint8)})
        if decoders and "image" in decoders:  # SkipDecoding: the pipeline decodes PNG bytes itself
            dataset = dataset.map(lambda ex: {**ex, "image": tf.io.encode_png(ex["image"])})
        return dataset

    return as_dataset


def pixels_and_masks(dataset, batches):
    out = []
    for batch in dataset.take(batches):
        out += list(zip(to_uint8(batch["image"].numpy()), batch["mask"].numpy()))
    return out


@pytest.mark.parametrize("name", ["caltech_birds2011", "oxford_flowers102", "oxford_iiit_pet", "lsun/car"])
def test_training_batches_of_every_supported_dataset(name):
    with tfds.testing.mock_data(num_examples=5):
        batches = list(tfds_dataset(name, 16, 4, cache=True).take(3))  # 12 images of 5: it repeats
    for batch in batches:
        batch = batch.numpy()
        assert batch.shape == (4, 16, 16, 3) and batch.dtype == np.float32
        assert batch.min() >= -1.0 and batch.max() <= 1.0 and batch.std() > 0.1


@pytest.mark.parametrize("name", ["caltech_birds2011", "oxford_iiit_pet"])
def test_evaluation_batches_hold_every_test_image_with_a_binary_mask(name):
    with tfds.testing.mock_data(num_examples=5):
        batches = list(tfds_dataset(name, 16, 4, with_masks=True, training=False))
    assert [len(b["image"]) for b in batches] == [4, 1]  # one pass, the last batch partial
    masks = np.concatenate([b["mask"].numpy() for b in batches])
    assert masks.shape == (5, 16, 16, 1) and set(np.unique(masks)) == {0.0, 1.0}


@pytest.mark.parametrize("flip", [True, False])
def test_random_crop_and_flip_keep_image_and_mask_aligned(flip):
    # crop_scale 30 / 24 keeps the 40 x 30 images at their size, so every output pixel is a source pixel.
    with tfds.testing.mock_data(as_dataset_fn=coded_examples()):
        dataset = tfds_dataset("caltech_birds2011", 24, 4, with_masks=True, split="train", crop_scale=1.25,
                               flip=flip, seed=3)
        samples = pixels_and_masks(dataset, 8)
    offsets, flips = set(), set()
    for pixels, mask in samples:
        offset, flipped = coded_crop_position(pixels, mask, 24)
        offsets.add(offset)
        flips.add(flipped)
    assert len(offsets) > 5
    assert flips == ({False, True} if flip else {False})


def test_evaluation_takes_centre_crops_of_resized_images_with_nearest_masks():
    # 40 x 30 -> shorter side 2 * 12 = 24: 32 x 24 (exactly 0.8x), centre crop 12 x 12 at rows 6, columns 10.
    with tfds.testing.mock_data(as_dataset_fn=coded_examples(num=2)):
        samples = pixels_and_masks(tfds_dataset("caltech_birds2011", 12, 2, with_masks=True, training=False,
                                                crop_scale=2.0), 1)
    y, x = np.mgrid[:H, :W]
    for i, (pixels, mask) in enumerate(samples):
        source = np.random.default_rng(i).random((H, W)) < 0.4
        # Nearest, half-pixel centres: output (r, c) of the 24 x 32 image reads source (floor((r + .5) / .8), ...).
        rows = np.floor((np.arange(6, 18) + 0.5) / 0.8).astype(int)
        cols = np.floor((np.arange(10, 22) + 0.5) / 0.8).astype(int)
        np.testing.assert_array_equal(mask[..., 0], source[np.ix_(rows, cols)])
        assert abs(pixels[0, 0, 0] - 6 * (10 + 0.5) / 0.8) < 6 and abs(pixels[0, 0, 1] - 8 * (6 + 0.5) / 0.8) < 8


@pytest.mark.parametrize("name, values, cut", [
    ("caltech_birds2011", (127, 128), "annotators' average >= 128"),
    ("oxford_iiit_pet", (2, 3), "trimap: 2 background, 1 pet, 3 outline = pet"),
])
def test_mask_conventions(name, values, cut):
    with tfds.testing.mock_data(as_dataset_fn=coded_examples(mask_values=values)):
        samples = pixels_and_masks(tfds_dataset(name, 24, 4, with_masks=True, training=False, crop_scale=1.25), 1)
    for pixels, mask in samples:
        np.testing.assert_array_equal(pixels[..., 2] > 0, mask[..., 0] == 1, err_msg=cut)


def test_pet_trimap_labels():
    trimap = tf.constant([[[1], [2], [3]]], tf.uint8)
    np.testing.assert_array_equal(DATASETS["oxford_iiit_pet"].mask({"segmentation_mask": trimap})[..., 0],
                                  [[True, False, True]])


def test_resumed_stream_continues_the_uninterrupted_one():
    with tfds.testing.mock_data(as_dataset_fn=coded_examples()):
        whole = [b.numpy() for b in tfds_dataset("caltech_birds2011", 24, 2, split="train", crop_scale=1.25,
                                                 seed=3).take(5)]
        resumed = [b.numpy() for b in tfds_dataset("caltech_birds2011", 24, 2, split="train", crop_scale=1.25,
                                                   seed=3, start=4).take(3)]
    for a, b in zip(whole[2:], resumed):
        np.testing.assert_array_equal(a, b)


def test_to_rgb_converts_grayscale_and_transparency_over_white():
    grey = tf.constant([[[10], [200]]], tf.uint8)
    np.testing.assert_array_equal(to_rgb(grey), [[[10] * 3, [200] * 3]])
    rgba = tf.constant([[[10, 20, 30, 255], [10, 20, 30, 0], [0, 0, 0, 51]]], tf.uint8)
    np.testing.assert_array_equal(to_rgb(rgba), [[[10, 20, 30], [255, 255, 255], [204, 204, 204]]])
    np.testing.assert_array_equal(to_rgb(tf.constant([[[100, 0]]], tf.uint8)), [[[255, 255, 255]]])  # grey + alpha
    with pytest.raises(ValueError, match="1, 2, 3 or 4 channels"):
        to_rgb(tf.zeros((2, 2, 5), tf.uint8))


def test_missing_dataset_says_how_to_prepare_it(tmp_path):
    with pytest.raises(MissingDatasetError) as info:
        tfds_dataset("caltech_birds2011", 16, 4, data_dir=str(tmp_path))
    message = str(info.value)
    assert f"tfds:caltech_birds2011 is not prepared in {tmp_path}" in message
    assert f"tfds build caltech_birds2011 --data_dir {tmp_path}" in message
    assert "pip install tensorflow-datasets opencv-python-headless" in message  # CUB's builder decodes masks with cv2
    assert "CUB_200_2011.tgz, segmentations.tgz" in message and "data.manual_dir" in message
    assert isinstance(info.value, ConfigError)


def test_manual_dir_without_the_archives_names_the_missing_ones(tmp_path):
    (tmp_path / "manual").mkdir()
    (tmp_path / "manual" / "CUB_200_2011.tgz").write_bytes(b"")
    with pytest.raises(MissingDatasetError, match=r"data.manual_dir .*manual cannot prepare it \(missing: segmentations.tgz\)"):
        tfds_dataset("caltech_birds2011", 16, 4, data_dir=str(tmp_path / "data"), manual_dir=str(tmp_path / "manual"))


@pytest.mark.parametrize("source, message", [
    ("tfds:mnist", "not supported; supported datasets: tfds:caltech_birds2011, tfds:oxford_iiit_pet"),
    ("tfds:lsun", "needs a category, e.g. tfds:lsun/car"),
])
def test_config_rejects_unsupported_datasets(source, message):
    with pytest.raises(ConfigError, match=f"data.source: .*{message}"):
        load_config(overrides=[f"data.source={source}"])


class KerasLayeredTinyShapes(tfds.core.GeneratorBasedBuilder):
    """A dataset prepared from a file in manual_dir: 6 images 20 x 16 with a rectangle mask each."""

    VERSION = tfds.core.Version("1.0.0")
    MANUAL_DOWNLOAD_INSTRUCTIONS = "put shapes.npz in manual_dir"

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)),
            "mask": tfds.features.Image(shape=(None, None, 1)),
        }))

    def _split_generators(self, dl_manager):
        arrays = np.load(dl_manager.manual_dir / "shapes.npz")
        return {"train": self._generate_examples(arrays["images"][:4], arrays["masks"][:4]),
                "test": self._generate_examples(arrays["images"][4:], arrays["masks"][4:])}

    def _generate_examples(self, images, masks):
        for i, (image, mask) in enumerate(zip(images, masks)):
            yield i, {"image": image, "mask": mask}


def test_tiny_builder_prepared_offline_from_manual_dir_then_read_from_data_dir(tmp_path, monkeypatch):
    monkeypatch.setitem(DATASETS, "keras_layered_tiny_shapes", TfdsDataset(
        "train", "test", lambda ex: ex["mask"] > 0, archives=lambda config: ("shapes.npz",)))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 16, 20, 3), dtype=np.uint8)
    masks = np.zeros((6, 16, 20, 1), np.uint8)
    masks[:, 4:12, 5:15] = 1
    (tmp_path / "manual").mkdir()
    np.savez(tmp_path / "manual" / "shapes.npz", images=images, masks=masks)
    data_dir = str(tmp_path / "data")

    with pytest.raises(MissingDatasetError, match="tfds build keras_layered_tiny_shapes"):
        tfds_data.load_split("keras_layered_tiny_shapes", "train", data_dir=data_dir)
    train = tfds_dataset("keras_layered_tiny_shapes", 8, 3, data_dir=data_dir, manual_dir=str(tmp_path / "manual"))
    assert next(iter(train)).shape == (3, 8, 8, 3)
    assert (tmp_path / "data" / "keras_layered_tiny_shapes" / "1.0.0").is_dir()
    # Prepared: later reads need neither manual_dir nor a network.
    test = list(tfds_dataset("keras_layered_tiny_shapes", 8, 4, with_masks=True, training=False, data_dir=data_dir,
                             crop_scale=1.0))
    assert [len(b["image"]) for b in test] == [2]
    # 20 x 16 -> 10 x 8; nearest reads source pixel 2 j + 1: rows 4..11 -> 2..5, columns 5..14 -> 2..6;
    # the centre crop starts at column 1.
    expected = np.zeros((8, 8), np.float32)
    expected[2:6, 1:6] = 1.0
    np.testing.assert_array_equal(test[0]["mask"].numpy()[..., 0], [expected, expected])
