"""TensorFlow Datasets as a data source (`tfds:NAME[/CONFIG]`), for the datasets in `registry.DATASETS`.

Nothing is downloaded while training or evaluating: a dataset is read from `data_dir` (TFDS's
default, ~/tensorflow_datasets or $TFDS_DATA_DIR, when empty). A dataset that is not prepared
there raises `MissingDatasetError`, which says how to prepare it: `tfds build` on a machine with
internet, or, offline, from the dataset's archives downloaded by hand into `manual_dir` (then
this module prepares it into `data_dir` itself, once).

Images get the geometry of `keras_layered.data.geometry` (the same as image folders): shorter
side resized to round(crop_scale * resolution) (the size by `io.shorter_side_size`, as for files)
with tf.image.resize, bilinear with antialiasing for images, nearest for masks (a mask of another
size than its image is stretched onto it), then cropped and flipped together with the image as
one 4-channel tensor.
"""

from pathlib import Path

import tensorflow as tf

from keras_layered.config import DataConfig
from keras_layered.data.geometry import cached, check_crop_scale, crop_and_flip, shorter_side_size, to_floats
from keras_layered.data.registry import check_dataset_name
from keras_layered.errors import ConfigError

__all__ = ["MissingDatasetError", "load_split", "tfds_dataset", "to_rgb"]


class MissingDatasetError(ConfigError):
    """A supported dataset that is not prepared in the data directory; the message says how to prepare it."""


def _missing_message(name, entry, data_dir, manual_dir, problem=""):
    dataset, _, config = name.partition("/")
    where = data_dir or "~/tensorflow_datasets (TFDS's default; set data.data_dir to read another folder)"
    target = data_dir or "~/tensorflow_datasets"
    archives = entry.archives(config)
    lines = [
        f"tfds:{name} is not prepared in {where}{problem}. Nothing is downloaded while training; prepare it once:",
        f"  with internet:  pip install {' '.join(('tensorflow-datasets', *entry.needs))}",
        f"                  tfds build {name} --data_dir {target}",
        f"                  (or build it elsewhere and copy its folder {dataset}/ into {target})",
    ]
    if archives:
        lines += [f"  offline:        put {', '.join(archives)} (the files its download URLs name) in a folder M",
                  f"                  and set data.manual_dir=M (or run tfds build {name} --data_dir {target} "
                  f"--manual_dir M)"]
    return "\n".join(lines)


def _prepare_from_manual_dir(builder, name, entry, data_dir, manual_dir):
    """Prepares `builder` from the archives in `manual_dir`, refusing to start if one is missing
    (TFDS would try to download it)."""
    import tensorflow_datasets as tfds

    folder = Path(manual_dir).expanduser()
    archives = entry.archives(name.partition("/")[2])
    missing = [a for a in archives if not (folder / a).is_file()]
    if not folder.is_dir() or missing:
        found = "no such folder" if not folder.is_dir() else f"missing: {', '.join(missing)}"
        raise MissingDatasetError(
            _missing_message(name, entry, data_dir, manual_dir, f" and data.manual_dir {folder} cannot prepare it "
                                                                f"({found})"))
    try:
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(folder)))
    except (ImportError, ModuleNotFoundError) as err:
        raise MissingDatasetError(f"preparing tfds:{name} from {folder} needs a package: {err}; "
                                  f"pip install {' '.join(entry.needs) or err.name}") from err


def _builder(name, data_dir):
    import tensorflow_datasets as tfds

    return tfds.builder(name, data_dir=str(Path(data_dir).expanduser()) if data_dir else None)


def _num_examples(name, split, data_dir, manual_dir):
    """The number of examples of `split` (prepared from `manual_dir` first if need be), or None
    where TFDS does not know it."""
    load_split(name, split, data_dir=data_dir, manual_dir=manual_dir)
    try:
        return int(_builder(name, data_dir).info.splits[split].num_examples)
    except (KeyError, ValueError, TypeError):
        return None


def load_split(name, split, *, data_dir=DataConfig.data_dir, manual_dir=DataConfig.manual_dir, shuffle_files=False,
               seed=DataConfig.seed, decoders=None):
    """The raw examples (dicts of decoded features) of `split` of the prepared dataset `name`.

    Reads from `data_dir`; if the dataset is not there, prepares it from `manual_dir` when given,
    else raises MissingDatasetError with the instructions.
    """
    import tensorflow_datasets as tfds

    entry = check_dataset_name(name)
    builder = _builder(name, data_dir)
    read_config = tfds.ReadConfig(shuffle_seed=seed)

    def read():
        return builder.as_dataset(split=split, shuffle_files=shuffle_files, read_config=read_config,
                                  decoders=decoders)

    try:
        return read()
    except AssertionError as err:  # TFDS's way of saying "no prepared data in data_dir"
        if not manual_dir:
            raise MissingDatasetError(_missing_message(name, entry, data_dir, manual_dir)) from err
    _prepare_from_manual_dir(builder, name, entry, data_dir, manual_dir)
    return read()


def to_rgb(image):
    """uint8 (H, W, C) with C = 1 (grey), 2 (grey + alpha), 3 or 4 (RGBA) -> (H, W, 3); transparency
    over white, as `io.load_image` does for files."""
    channels = image.shape[-1]
    if channels == 3:
        return image
    if channels not in (1, 2, 4):
        raise ValueError(f"images must have 1, 2, 3 or 4 channels, got shape {image.shape}")
    colour = image[..., :1] if channels < 3 else image[..., :3]
    colour = tf.broadcast_to(colour, tf.concat([tf.shape(image)[:2], [3]], 0))
    if channels == 1:
        return colour
    alpha = tf.cast(image[..., -1:], tf.float32) / 255.0
    over_white = tf.cast(colour, tf.float32) * alpha + 255.0 * (1.0 - alpha)
    return tf.cast(tf.round(over_white), tf.uint8)


def _resize_to_shorter_side(entry, shorter, with_masks, decode_image=None):
    """example -> uint8 (H', W', 3, or 4 with the 0/1 mask) with min(H', W') == `shorter`."""

    def prepare(example):
        image = to_rgb(decode_image(example["image"]) if decode_image else example["image"])
        size = shorter_side_size(tf.shape(image)[0], tf.shape(image)[1], shorter)
        resized = tf.image.resize(tf.cast(image, tf.float32), size, method="bilinear", antialias=True)
        pixels = tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)  # (H', W', 3)
        if not with_masks:
            return pixels
        mask = tf.image.resize(tf.cast(entry.mask(example), tf.uint8), size, method="nearest")  # (H', W', 1)
        return tf.concat([pixels, mask], axis=-1)

    return prepare


def tfds_dataset(name, resolution: int, batch_size: int, *, with_masks: bool = False, training: bool = True,
                 flip: bool = DataConfig.flip, crop_scale: float = DataConfig.crop_scale, seed: int = DataConfig.seed,
                 cache: bool | str = DataConfig.cache, shuffle_buffer: int = DataConfig.shuffle_buffer,
                 data_dir: str = DataConfig.data_dir, manual_dir: str = DataConfig.manual_dir, split: str | None = None,
                 start: int = 0) -> tf.data.Dataset:
    """Batches of tfds:`name`, like `folder.folder_dataset`: images (B, R, R, 3) float32 in [-1, 1],
    or {"image", "mask": (B, R, R, 1) of exact 0/1} when `with_masks`.

    split: TFDS split expression; by default the dataset's training split, or its mask split when
    `with_masks`. training: files and examples shuffled (a buffer of `shuffle_buffer` examples),
    repeated forever, random crops, flips unless `flip` is False, full batches; `start` skips that
    many examples of this stream, before decoding them, so a resumed run continues the stream of
    one that never stopped. Otherwise one pass in the dataset's order, centre crops, the last batch
    possibly smaller. `cache` keeps the resized images in memory after the first pass; "auto": when
    the split's examples take at most `geometry.CACHE_BUDGET` (`geometry.cached`).
    """
    import tensorflow_datasets as tfds  # heavy: imported when a dataset is read

    check_crop_scale(crop_scale)
    entry = check_dataset_name(name)
    if with_masks and entry.mask is None:
        raise ValueError(f"tfds:{name} has no ground-truth masks")
    split = split or (entry.eval_split if with_masks else entry.train_split)
    if cache == "auto":
        count = _num_examples(name, split, data_dir, manual_dir)
        cache = cached(cache, count, resolution, crop_scale, 4 if with_masks else 3)
    skip = start if training and not cache else 0
    # Skipped examples need not be decoded: decode the image after the skip.
    decoders = {"image": tfds.decode.SkipDecoding()} if skip else None
    examples = load_split(name, split, data_dir=data_dir, manual_dir=manual_dir, shuffle_files=training, seed=seed,
                          decoders=decoders)
    if training and not cache:
        examples = examples.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True).repeat().skip(skip)
    decode = _builder(name, data_dir).info.features["image"].decode_example if skip else None
    images = examples.map(_resize_to_shorter_side(entry, round(crop_scale * resolution), with_masks, decode),
                          num_parallel_calls=tf.data.AUTOTUNE)
    if cache:
        images = images.cache()
        if training:
            images = images.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True).repeat().skip(start)

    def crop(position, pixels):
        return crop_and_flip(pixels, position, resolution, training=training, flip=flip, seed=seed)

    return (images.enumerate(start if training else 0)
            .map(crop, num_parallel_calls=tf.data.AUTOTUNE)
            .batch(batch_size, drop_remainder=training)
            .map(lambda pixels: to_floats(pixels, with_masks), num_parallel_calls=tf.data.AUTOTUNE)
            .prefetch(tf.data.AUTOTUNE))
