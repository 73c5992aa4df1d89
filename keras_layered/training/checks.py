"""What `train` refuses, checked before anything is built or written (no TensorFlow).

`python cli.py train --dry-run` runs `check_train` alone; `run.train` runs it first.
"""

import dataclasses
from pathlib import Path

from keras_layered.config import load_config
from keras_layered.data.sources import check_available
from keras_layered.errors import ConfigError

__all__ = ["STAGES", "STAGE_ALIASES", "check_train", "epoch_plan", "generator_path", "stage_name"]

STAGES = ("gan", "segmenter", "all")
# Old names still accepted: "encoder" trained the whole segmentation stage (encoder and U-Net).
STAGE_ALIASES = {"encoder": "segmenter"}


def epoch_plan(steps, steps_per_epoch, section="train"):
    """(epochs, steps_per_epoch) covering exactly `steps` steps."""
    steps_per_epoch = min(steps_per_epoch, steps)
    if steps % steps_per_epoch:
        raise ConfigError(
            f"{section}.steps ({steps}) must be a multiple of {section}.steps_per_epoch ({steps_per_epoch})"
        )
    return steps // steps_per_epoch, steps_per_epoch


# What a stage's checkpoint holds or continues, so a resumed stage cannot change it.
_SHAPES = "it changes the shapes of the networks in the checkpoint"
_SCALE = "it changes the scale the checkpoint's discriminator weights are stored at"
_DATA = "it changes the training images the checkpoint's step continues from"
_GAN_STATE = {
    "data.source": _DATA, "data.resolution": _SHAPES, "data.difficulty": _DATA, "data.edges": _DATA,
    "data.seed": _DATA, "data.crop_scale": _DATA, "data.flip": _DATA, "data.shuffle_buffer": _DATA,
    "model.generator": _SHAPES, "model.latent_dim": _SHAPES, "model.base_width": _SHAPES,
    "model.min_width": _SHAPES, "model.norm": _SHAPES, "model.upsampling": _SHAPES,
    "model.d_base_width": _SHAPES,
    "model.d_min_width": _SHAPES, "model.spectral_norm": _SHAPES, "model.d_equalized_lr": _SCALE,
    "model.mapping_layers": _SHAPES,
    "train.batch_size": _DATA,  # the data continue at step x batch size
    "train.seed": "the checkpoint holds the random-generator states it seeded",
    "distribute.mixed_precision": "the checkpoint holds the state of one precision (float16: loss scaling)",
}
_SEGMENTATION_STATE = {
    "segment.encoder": _SHAPES, "segment.distilled": _SHAPES, "segment.encoder_base_width": _SHAPES,
    "segment.encoder_min_width": _SHAPES, "segment.unet_width": _SHAPES, "segment.unet_depth": _SHAPES,
    "segment.unet_max_width": _SHAPES, "segment.unet_low_res_upconv": _SHAPES,
    "segment.perceptual_weight": "it adds or removes the VGG16 features in the checkpoint",
    "segment.lr_decay": "it changes the optimizers' state in the checkpoint",
    "segment.batch_size": _DATA,
}


def stage_name(name):
    """A stage's name, with old names (`STAGE_ALIASES`) replaced; ValueError for an unknown one."""
    name = STAGE_ALIASES.get(name, name)
    if name not in STAGES:
        raise ValueError(f"stage must be one of {', '.join(STAGES)}, got {name!r}")
    return name


def check_train(cfg, run_dir, stage="all"):
    """Everything `train(cfg, run_dir, stage)` would refuse, checked without building or writing
    anything (`python cli.py train --dry-run` runs it too); raises ConfigError saying what to do.

    In a run that already trained (a checkpoint, or generator.keras), the keys its checkpoints
    depend on (network shapes, training data, random and optimizer state) must keep the values of
    its config.yaml; the others (steps, cadences, learning rates, loss weights) may change.
    Returns `cfg`, with distribute.mixed_precision "auto" replaced by the run's own precision.
    """
    stage = stage_name(stage)
    run_dir = Path(run_dir)
    epoch_plan(cfg.train.steps, cfg.train.steps_per_epoch)
    epoch_plan(cfg.segment.steps, cfg.segment.steps_per_epoch, "segment")
    check_available(cfg.data)
    gan_trained = (run_dir / "checkpoints" / "checkpoint").is_file() or (run_dir / "generator.keras").is_file()
    if stage == "segmenter":
        generator_path(run_dir)
    saved_path = run_dir / "config.yaml"
    if not (gan_trained and saved_path.is_file()):
        return cfg
    saved = load_config(saved_path).to_dict()
    if cfg.distribute.mixed_precision == "auto":
        cfg = dataclasses.replace(cfg, distribute=dataclasses.replace(
            cfg.distribute, mixed_precision=saved["distribute"]["mixed_precision"]))
    fixed = dict(_GAN_STATE)
    if (run_dir / "checkpoints" / "segmentation" / "checkpoint").is_file():
        fixed.update(_SEGMENTATION_STATE)
    new = cfg.to_dict()
    for key, reason in fixed.items():
        section, name = key.split(".")
        if new[section][name] != saved[section][name]:
            raise ConfigError(
                f"{key} cannot change when {run_dir} resumes: {reason} (the run has {saved[section][name]!r}, "
                f"the command gives {new[section][name]!r}). Train it into a new run directory (--out), or "
                f"drop the override to continue {run_dir} with its own config.yaml"
            )
    return cfg


def generator_path(run_dir):
    """run_dir/generator.keras, the GAN stage's output; ConfigError saying how to train it if missing."""
    path = Path(run_dir) / "generator.keras"
    if not path.exists():
        raise ConfigError(
            f"{run_dir} holds no generator.keras: train the GAN stage first "
            f"(python cli.py train --stage gan --out {run_dir})"
        )
    return path
