"""The TensorFlow Datasets a `tfds:NAME[/CONFIG]` source may name, and how to read each (no TensorFlow).

`DATASETS` maps a TFDS name to its `TfdsDataset`: splits, foreground mask, the archives an
offline preparation needs. `config` validates data.source with `check_dataset_name` without
importing TensorFlow; `data.tfds` reads the datasets.
"""

import dataclasses
from collections.abc import Callable

__all__ = ["DATASETS", "TfdsDataset", "check_dataset_name"]


def _cub_mask(example):
    # CUB's masks average several annotators (grey levels 0..255): foreground where most agree,
    # the same cut as image folders use (keras_layered.io.load_mask).
    return example["segmentation_mask"] >= 128


def _pet_mask(example):
    import tensorflow as tf  # called on the dataset's tensors, by data.tfds

    # Trimap: 1 pet, 2 background, 3 the unsure band along the outline, counted as pet (as in
    # segmentation_models_pytorch's Oxford pet loader).
    return tf.not_equal(example["segmentation_mask"], 2)


@dataclasses.dataclass(frozen=True)
class TfdsDataset:
    """How to read one TFDS dataset.

    train_split: TFDS split expression the GAN trains on. eval_split: the split with ground-truth
    masks the segmentation stage is scored on (None: the dataset has no masks). mask: example ->
    bool (H, W, 1) foreground (TensorFlow ops). archives: the files `tfds build` downloads, as they
    must be named in manual_dir ("{config}" is the builder config); needs: packages `tfds build`
    imports for it.
    """

    train_split: str
    eval_split: str | None = None
    mask: Callable | None = None
    archives: Callable[[str], tuple] = lambda config: ()
    needs: tuple = ()
    config_required: bool = False


_LSUN_SCENES = ("bedroom", "bridge", "church_outdoor", "classroom", "conference_room", "dining_room", "kitchen",
                "living_room", "restaurant", "tower")

DATASETS = {
    "caltech_birds2011": TfdsDataset(
        "train", "test", _cub_mask, lambda config: ("CUB_200_2011.tgz", "segmentations.tgz"),
        needs=("opencv-python-headless",)),
    "oxford_iiit_pet": TfdsDataset(
        "train", "test", _pet_mask, lambda config: ("images.tar.gz", "annotations.tar.gz")),
    # No masks; the GAN sees all 8189 flowers (its splits are for classification).
    "oxford_flowers102": TfdsDataset(
        "train+validation+test", archives=lambda config: ("102flowers.tgz", "imagelabels.mat", "setid.mat"),
        needs=("scipy",)),
    "lsun": TfdsDataset(
        "train", config_required=True, needs=("tensorflow-io",),
        archives=lambda config: ((f"{config}_train_lmdb.zip", f"{config}_val_lmdb.zip") if config in _LSUN_SCENES
                                 else (f"{config}.zip",))),
}


def check_dataset_name(name):
    """The `DATASETS` entry of "NAME" or "NAME/CONFIG"; ValueError naming the supported ones otherwise."""
    dataset, _, config = name.partition("/")
    if dataset not in DATASETS:
        raise ValueError(f"tfds:{name} is not supported; supported datasets: "
                         f"{', '.join(f'tfds:{n}/<category>' if e.config_required else f'tfds:{n}' for n, e in DATASETS.items())}")
    if DATASETS[dataset].config_required and not config:
        raise ValueError(f"tfds:{dataset} needs a category, e.g. tfds:{dataset}/car")
    return DATASETS[dataset]
