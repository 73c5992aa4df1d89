"""From a `DataConfig` to tf.data pipelines, for every kind of `data.source` (see `data.spec`).

    training_dataset     infinite batches of training images: random crops and flips
    reference_dataset    one pass over the training images, centre crops, no flips (FID statistics)
    evaluation_dataset   {"image", "mask"} batches of the source's held-out images with ground truth
                         (None when the source has none), described by `evaluation_split`

Errors about the data (missing folder, unprepared dataset, no images) are raised as ConfigError
naming data.source, so the command line reports them without a traceback.
"""

import dataclasses
import logging
import random

from keras_layered.data.spec import parse_data_spec
from keras_layered.errors import ConfigError

__all__ = ["check_available", "evaluation_dataset", "evaluation_split", "reference_dataset", "training_dataset"]

log = logging.getLogger("keras_layered")


def _spec(data):
    try:
        return parse_data_spec(data.source)
    except ValueError as err:
        raise ConfigError(f"data.source: {err}") from err


def _about_source(data, build):
    """build() with the data errors turned into ConfigErrors that name data.source."""
    try:
        return build()
    except ConfigError:
        raise
    except (ValueError, OSError) as err:
        raise ConfigError(f"data.source {data.source}: {err}") from err


def _real(data, spec, batch_size, *, with_masks=False, training, scan=None, start=0):
    """Batches of a folder or a TFDS dataset, with the geometry options of `data`."""
    options = dict(with_masks=with_masks, training=training, flip=data.flip and training,
                   crop_scale=data.crop_scale, seed=data.seed, cache=data.cache, start=start)
    if spec.kind == "folder":
        from keras_layered.data.folder import folder_dataset

        return folder_dataset(scan or spec.path_or_name, data.resolution, batch_size, **options)
    from keras_layered.data.tfds import tfds_dataset

    return tfds_dataset(spec.path_or_name, data.resolution, batch_size, shuffle_buffer=data.shuffle_buffer,
                        data_dir=data.data_dir, manual_dir=data.manual_dir, **options)


def _scenes(data, batch_size, **kwargs):
    """Built-in scenes with the scene options of `data` (resolution, difficulty, edges)."""
    from keras_layered.data.synthetic import synthetic_scenes

    return synthetic_scenes(data.resolution, batch_size, difficulty=data.difficulty, edges=data.edges, **kwargs)


def training_dataset(data, batch_size, start=0):
    """Infinite batches (B, R, R, 3) in [-1, 1] of the training images of `data.source`, from image
    number `start` of the stream (a resumed run's steps x batch size)."""
    spec = _spec(data)
    if spec.kind == "synthetic":
        return _scenes(data, batch_size, seed=data.seed, start=start)
    return _about_source(data, lambda: _real(data, spec, batch_size, training=True, start=start))


def reference_dataset(data, batch_size, num_images):
    """The first `num_images` training images (fewer if the source has fewer), centre-cropped and
    unflipped, in a fixed order: the real side of FID."""
    spec = _spec(data)
    if spec.kind == "synthetic":
        return _scenes(data, min(batch_size, num_images), seed=data.seed, num_scenes=num_images)
    # No cache: a partial read (take) of a cached dataset would leave it unfinished.
    uncached = dataclasses.replace(data, cache=False)
    dataset = _about_source(data, lambda: _real(uncached, spec, batch_size, training=False))
    return dataset.unbatch().take(num_images).batch(batch_size)


def evaluation_subset(pairs, limit, seed):
    """`limit` of `pairs` (all when `limit` is 0 or there are no more), drawn with `seed` and kept in
    their order: the same images for every call, whatever the machine."""
    if not limit or len(pairs) <= limit:
        return list(pairs)
    return [pairs[i] for i in sorted(random.Random(seed).sample(range(len(pairs)), limit))]


def _folder_scan_with_masks(data, spec):
    """The scan of the folder restricted to the images that have a mask (`data.eval_images` of
    them, `evaluation_subset`), or None if none has one."""
    from keras_layered.data.folder import FolderScan, scan_folder

    scan = scan_folder(spec.path_or_name)
    pairs = [(image, mask) for image, mask in scan.pairs if mask is not None]
    if not pairs:
        return None
    if len(pairs) < len(scan.pairs):
        log.info("%s: %d of %d images have a ground-truth mask; evaluating on those", data.source, len(pairs),
                 len(scan.pairs))
    chosen = evaluation_subset(pairs, data.eval_images, data.eval_seed)
    if len(chosen) < len(pairs):
        log.info("%s: scoring %d of the %d images with masks (data.eval_images; 0 = all)", data.source,
                 len(chosen), len(pairs))
    return FolderScan(scan.root, chosen, scan.skipped, scan.mask_folders)


def evaluation_split(data):
    """What `evaluation_dataset` scores on, in words, or None when the source has no ground-truth masks."""
    spec = _spec(data)
    if spec.kind == "synthetic":
        return f"held-out scenes (data.eval_seed {data.eval_seed})"
    if spec.kind == "folder":
        from keras_layered.data.folder import find_image_mask_pairs

        pairs = _about_source(data, lambda: find_image_mask_pairs(spec.path_or_name))
        masked = sum(mask is not None for _, mask in pairs)
        if not masked:
            return None
        if data.eval_images and masked > data.eval_images:
            return (f"{data.eval_images} of the {masked} images with masks (data.eval_seed {data.eval_seed}; "
                    f"also trained on, without the masks)")
        return "the images with masks (also trained on, without the masks)"
    from keras_layered.data.registry import check_dataset_name

    entry = _about_source(data, lambda: check_dataset_name(spec.path_or_name))
    if entry.eval_split is None:
        return None
    return f"the {entry.eval_split} split" + (f", its first {data.eval_images} images" if data.eval_images else "")


def evaluation_dataset(data, batch_size):
    """{"image", "mask"} batches, one pass, centre crops: held-out synthetic scenes, a folder's images
    with masks, or a TFDS dataset's mask split; None when the source has no ground-truth masks."""
    spec = _spec(data)
    if spec.kind == "synthetic":
        return _scenes(data, min(batch_size, data.eval_scenes), seed=data.eval_seed, num_scenes=data.eval_scenes,
                       with_masks=True)
    if spec.kind == "folder":
        scan = _about_source(data, lambda: _folder_scan_with_masks(data, spec))
        if scan is None:
            return None
        return _about_source(data, lambda: _real(data, spec, batch_size, with_masks=True, training=False, scan=scan))
    if evaluation_split(data) is None:
        return None
    dataset = _about_source(data, lambda: _real(data, spec, batch_size, with_masks=True, training=False))
    return dataset.unbatch().take(data.eval_images).batch(batch_size) if data.eval_images else dataset


def check_available(data):
    """Raises ConfigError (saying what to do) if `data.source` has no images to read: a missing or
    empty folder, an unprepared dataset. Cheap (no file is opened), so callers check before writing.
    Imports TensorFlow only for a tfds: source (TFDS looks for the prepared dataset)."""
    spec = _spec(data)
    if spec.kind == "folder":
        from keras_layered.data.folder import find_image_mask_pairs

        if not _about_source(data, lambda: find_image_mask_pairs(spec.path_or_name)):
            raise ConfigError(f"data.source {data.source}: no image files (.jpg, .png, .webp, .bmp, ...) under "
                              f"{spec.path_or_name}")
    elif spec.kind == "tfds":
        from keras_layered.data.registry import DATASETS
        from keras_layered.data.tfds import load_split  # imports TensorFlow: a dataset is looked for

        entry = DATASETS[spec.path_or_name.partition("/")[0]]
        _about_source(data, lambda: load_split(spec.path_or_name, entry.train_split, data_dir=data.data_dir,
                                               manual_dir=data.manual_dir))
