"""Run configuration: typed dataclasses, loaded strictly from YAML, saved with every run.

Unknown keys, wrong types and out-of-range values fail before anything is built, with the
dotted key named, so a typo in a config costs seconds instead of a training run.
"""

import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path

import yaml

from keras_layered.errors import ConfigError  # re-exported: keras_layered.config.ConfigError


@dataclasses.dataclass
class DataConfig:
    source: str = "synthetic"  # "synthetic", "folder:PATH" or "tfds:NAME[/CONFIG]" (README, "Data")
    resolution: int = 32  # square images, power of two, 8..256
    difficulty: float = 0.3  # built-in scenes: 0 = plain ellipses, 1 = varied shapes, busy backgrounds
    edges: int = 2  # built-in scenes: sharp straight edges across each background (0-4); they make the shift bite
    seed: int = 0  # seed of the built-in training scenes; of shuffles, crops and flips of real images
    eval_seed: int = 12345  # seed of the held-out built-in scenes used for evaluation
    eval_scenes: int = 512  # number of held-out scenes evaluated
    eval_images: int = 512  # folders / datasets: images with masks scored, a fixed subset (data.eval_seed); 0 = all
    crop_scale: float = 1.125  # real images: shorter side resized to crop_scale * resolution, then cropped
    flip: bool = True  # real images: random horizontal flips in training
    cache: bool = False  # real images: keep them decoded and resized in memory (datasets that fit)
    shuffle_buffer: int = 10000  # tfds: examples shuffled together (folders shuffle their whole file list)
    data_dir: str = ""  # tfds: folder of prepared datasets ("" = ~/tensorflow_datasets or $TFDS_DATA_DIR)
    manual_dir: str = ""  # tfds: folder of the dataset's downloaded archives, to prepare it offline


@dataclasses.dataclass
class ModelConfig:
    generator: str = "dcgan"  # "dcgan" (fast on CPU) or "style" (the paper's StyleGAN-like generator)
    latent_dim: int = 64
    base_width: int = 128  # channels at 4x4, halved at every doubling of resolution ...
    min_width: int = 32  # ... but never fewer than this
    norm: str = "batch"  # dcgan generator normalisation: "batch" or "none"
    d_base_width: int = 128  # discriminator channels at its coarsest level
    d_min_width: int = 32  # discriminator channels at full resolution
    spectral_norm: bool = False  # spectral normalisation in the discriminator
    mapping_layers: int = 8  # style generator only
    style_mixing_prob: float = 0.0  # style generator only


@dataclasses.dataclass
class PerturbConfig:
    max_shift: float = 0.125  # random shift of foreground+mask, fraction of the image size
    bg_contrast_jitter: float = 0.0  # background contrast factor drawn in [1 - s, 1 + s]
    background_mixing: float = 0.0  # fraction of fakes over another latent's background (0 = shared z, the paper)


@dataclasses.dataclass
class LossConfig:
    adversarial: str = "nonsaturating"  # "nonsaturating" (+ R1) or "wgan_gp" (+ drift)
    r1_gamma: float = 5.0  # nonsaturating only
    gp_weight: float = 10.0  # wgan_gp only
    drift: float = 0.001  # wgan_gp only
    penalty_every: int = 16  # R1 every this many D steps, weighted by it (lazy regularisation); 1 for wgan_gp
    min_mask_coverage: float = 0.15  # hinge keeps the mean mask above this
    mask_coverage_weight: float = 2.0
    binarization_weight: float = 0.5  # pushes mask values to 0 or 1
    max_mask_coverage: float = 1.0  # hinge keeps the mean mask below this (1.0 = off)
    max_coverage_weight: float = 0.0


@dataclasses.dataclass
class TrainConfig:
    steps: int = 4000  # generator steps in all
    steps_per_epoch: int = 250  # one Keras progress bar (epoch) per this many steps
    batch_size: int = 64
    g_lr: float = 2e-4
    d_lr: float = 2e-4
    beta_1: float = 0.0
    beta_2: float = 0.99
    d_steps: int = 1  # discriminator steps per generator step
    ema_decay: float = 0.999  # EMA copy of the generator, used for samples and export
    ema_bn_batches: int = 16  # its BatchNorm statistics: recomputed over this many batches (0 = the generator's)
    seed: int = 0
    sample_every: int = 500  # steps between image grids (PNG + TensorBoard)
    checkpoint_every: int = 500  # steps between checkpoints
    jit_compile: bool = False


@dataclasses.dataclass
class SegmentConfig:
    """The segmentation stage, trained against the frozen EMA generator of the GAN stage."""

    encoder: bool = True  # train the paper's encoder (image -> z -> frozen generator -> mask)
    distilled: bool = True  # train a U-Net on the generator's (composite, mask) pairs (beyond the paper)
    serve: str = "distilled"  # which one `segmenter.keras` and `export` use: "distilled" or "encoder"
    steps: int = 1000
    steps_per_epoch: int = 250
    batch_size: int = 64
    lr: float = 5e-4  # Adam, betas (0.9, 0.99), for both networks ...
    lr_decay: bool = False  # ... decayed linearly to 0 over segment.steps
    encoder_base_width: int = 128  # encoder channels at 4x4, halved per level up, floored at ...
    encoder_min_width: int = 32
    latent_weight: float = 1.0  # ||E(G(z)) - z||^2 on generated images
    mask_weight: float = 1.0  # BCE(mask(G(E(G(z)))), mask(G(z))) on generated images
    reconstruction_weight: float = 1.0  # L1 |G(E(x)) - x| on real images
    shifted_fraction: float = 0.0  # of the generated images: randomly shifted, mask term only (in [0, 1))
    refine_steps: int = 50  # served encoder path: Adam steps on each image's latent (reconstruction)
    refine_lr: float = 0.02  # their step size
    perceptual_weight: float = 0.0  # L1 between VGG16 features of G(E(x)) and x; needs ...
    perceptual_weights: str = ""  # ... a local VGG16 notop weights file (.h5), e.g. keras' cache
    visible_threshold: float = 0.0  # U-Net targets: mask > 0.5 where |foreground - background| > this (0 = off)
    largest_component: bool = False  # served masks: only the largest connected region (one object per image)
    unet_width: int = 32  # U-Net channels at full resolution, doubled per level down
    unet_depth: int = 3
    checkpoint_every: int = 250


@dataclasses.dataclass
class DistributeConfig:
    """Devices, machines and arithmetic of training (README, "Distributed training")."""

    strategy: str = "auto"  # auto: MirroredStrategy when > 1 GPU is visible; default; mirrored; multi_worker (TF_CONFIG)
    mixed_precision: str = "none"  # none (float32), mixed_float16 (GPU, loss-scaled), mixed_bfloat16, or auto (fastest here)
    onednn: bool | str = "auto"  # TensorFlow's oneDNN CPU kernels: auto (on with AVX2 + FMA), true, false


@dataclasses.dataclass
class Config:
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    perturb: PerturbConfig = dataclasses.field(default_factory=PerturbConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    segment: SegmentConfig = dataclasses.field(default_factory=SegmentConfig)
    distribute: DistributeConfig = dataclasses.field(default_factory=DistributeConfig)

    def to_dict(self):
        return dataclasses.asdict(self)

    def save(self, path, comment=""):
        """Writes the config as YAML, after `comment` (lines of "# " comments, which loading skips)."""
        head = "".join(f"# {line}\n" for line in comment.splitlines())
        Path(path).write_text(head + yaml.safe_dump(self.to_dict(), sort_keys=False))


_CHOICES = {
    "model.generator": ("dcgan", "style"),
    "model.norm": ("batch", "none"),
    "loss.adversarial": ("nonsaturating", "wgan_gp"),
    "segment.serve": ("distilled", "encoder"),
    "distribute.strategy": ("auto", "default", "mirrored", "multi_worker"),
    "distribute.mixed_precision": ("auto", "none", "mixed_float16", "mixed_bfloat16"),
    "distribute.onednn": ("auto", True, False),
}


def _check_ranges(cfg):
    """Range checks that the types alone do not express; raises ConfigError naming the key."""
    res = cfg.data.resolution
    rules = [
        ("data.resolution", 8 <= res <= 256 and res & (res - 1) == 0, "a power of two in [8, 256]"),
        ("data.difficulty", 0.0 <= cfg.data.difficulty <= 1.0, "in [0, 1]"),
        ("data.edges", 0 <= cfg.data.edges <= 4, "in [0, 4]"),
        ("perturb.max_shift", 0.0 <= cfg.perturb.max_shift < 0.5, "in [0, 0.5)"),
        ("perturb.bg_contrast_jitter", 0.0 <= cfg.perturb.bg_contrast_jitter < 1.0, "in [0, 1)"),
        ("perturb.background_mixing", 0.0 <= cfg.perturb.background_mixing <= 1.0, "in [0, 1]"),
        ("loss.min_mask_coverage", 0.0 <= cfg.loss.min_mask_coverage <= 1.0, "in [0, 1]"),
        ("loss.max_mask_coverage", 0.0 <= cfg.loss.max_mask_coverage <= 1.0, "in [0, 1]"),
        ("model.latent_dim", cfg.model.latent_dim >= 1, ">= 1"),
        ("model.min_width", 1 <= cfg.model.min_width <= cfg.model.base_width, "in [1, model.base_width]"),
        ("model.d_min_width", 1 <= cfg.model.d_min_width <= cfg.model.d_base_width,
         "in [1, model.d_base_width]"),
        ("model.style_mixing_prob", 0.0 <= cfg.model.style_mixing_prob <= 1.0, "in [0, 1]"),
        ("loss.penalty_every", cfg.loss.penalty_every >= 1, ">= 1"),
        ("loss.penalty_every", cfg.loss.adversarial != "wgan_gp" or cfg.loss.penalty_every == 1,
         "1 with loss.adversarial=wgan_gp (its gradient penalty belongs to every critic step; lazy "
         "regularisation is for R1, loss.adversarial=nonsaturating)"),
        ("train.steps", cfg.train.steps >= 1, ">= 1"),
        ("train.steps_per_epoch", cfg.train.steps_per_epoch >= 1, ">= 1"),
        ("train.batch_size", cfg.train.batch_size >= 1, ">= 1"),
        ("train.d_steps", cfg.train.d_steps >= 1, ">= 1"),
        ("train.ema_decay", 0.0 <= cfg.train.ema_decay < 1.0, "in [0, 1)"),
        ("train.ema_bn_batches", cfg.train.ema_bn_batches >= 0, ">= 0"),
        ("train.g_lr", cfg.train.g_lr > 0, "> 0"),
        ("train.d_lr", cfg.train.d_lr > 0, "> 0"),
        ("train.sample_every", cfg.train.sample_every >= 1, ">= 1"),
        ("train.checkpoint_every", cfg.train.checkpoint_every >= 1, ">= 1"),
        ("data.eval_scenes", cfg.data.eval_scenes >= 1, ">= 1"),
        ("data.eval_images", cfg.data.eval_images >= 0, ">= 0 (0 = all the images with masks)"),
        ("data.crop_scale", cfg.data.crop_scale >= 1.0, ">= 1 (the crop must fit in the resized image)"),
        ("data.shuffle_buffer", cfg.data.shuffle_buffer >= 1, ">= 1"),
        ("segment.steps", cfg.segment.steps >= 1, ">= 1"),
        ("segment.steps_per_epoch", cfg.segment.steps_per_epoch >= 1, ">= 1"),
        ("segment.batch_size", cfg.segment.batch_size >= 1, ">= 1"),
        ("segment.lr", cfg.segment.lr > 0, "> 0"),
        ("segment.checkpoint_every", cfg.segment.checkpoint_every >= 1, ">= 1"),
        ("segment.encoder_min_width", 1 <= cfg.segment.encoder_min_width <= cfg.segment.encoder_base_width,
         "in [1, segment.encoder_base_width]"),
        ("segment.unet_width", cfg.segment.unet_width >= 1, ">= 1"),
        ("segment.visible_threshold", 0.0 <= cfg.segment.visible_threshold < 2.0,
         "in [0, 2): a difference of pixel values in [-1, 1]"),
        ("segment.shifted_fraction", 0.0 <= cfg.segment.shifted_fraction < 1.0,
         "in [0, 1): the unshifted rest trains the latent regression"),
        ("segment.unet_depth", 1 <= cfg.segment.unet_depth and res % 2**cfg.segment.unet_depth == 0,
         ">= 1 with data.resolution divisible by 2**depth"),
        ("segment.perceptual_weight", cfg.segment.perceptual_weight >= 0, ">= 0"),
        ("segment.refine_steps", cfg.segment.refine_steps >= 0, ">= 0"),
        ("segment.refine_lr", cfg.segment.refine_lr > 0, "> 0"),
        ("segment.serve", getattr(cfg.segment, cfg.segment.serve, True),
         "a network the stage trains (segment.encoder / segment.distilled is false)"),
        ("segment.encoder", cfg.segment.encoder or cfg.segment.distilled,
         "true, or segment.distilled true: the stage needs a network to train"),
        ("segment.perceptual_weights", cfg.segment.perceptual_weight == 0 or cfg.segment.perceptual_weights,
         "the path of a local VGG16 notop weights file when segment.perceptual_weight > 0 (e.g. "
         "~/.keras/models/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5, which "
         "keras.applications.VGG16(include_top=False) downloads)"),
    ]
    for key, ok, expected in rules:
        if not ok:
            raise ConfigError(f"{key} must be {expected}, got {_get(cfg, key)!r}")
    _check_data_source(cfg.data.source)
    for key, choices in _CHOICES.items():
        if _get(cfg, key) not in choices:
            raise ConfigError(f"{key} must be one of {', '.join(map(str, choices))}; got {_get(cfg, key)!r}")


def _check_data_source(source):
    """Only the form of data.source and the dataset name; whether the files exist is checked when
    the data is read, so a config stays loadable on a machine without the data."""
    from keras_layered.data.spec import parse_data_spec
    from keras_layered.data.registry import check_dataset_name

    try:
        spec = parse_data_spec(source)
        if spec.kind == "tfds":
            check_dataset_name(spec.path_or_name)
    except ValueError as err:
        raise ConfigError(f"data.source: {err}") from err


def _get(cfg, dotted):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


_EXPONENT_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _coerce(value, tp, key):
    """Checks `value` against the field type; ints are accepted where floats are expected."""
    if tp is float and isinstance(value, str) and _EXPONENT_NUMBER.fullmatch(value):
        return float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, key)
            except ConfigError:
                pass
    elif tp is type(None):
        if value is None:
            return None
    elif isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{key} must be of type {getattr(tp, '__name__', tp)}, got {value!r}")


def _build(cls, values, prefix):
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix or 'config'} must be a mapping of keys to values, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else ""
            raise ConfigError(f"unknown config key '{dotted}'{hint} (valid: {', '.join(fields)})")
        if dataclasses.is_dataclass(hints[key]):
            kwargs[key] = _build(hints[key], value, f"{dotted}.")
        else:
            kwargs[key] = _coerce(value, hints[key], dotted)
    return cls(**kwargs)


def config_from_dict(values):
    cfg = _build(Config, values or {}, "")
    _check_ranges(cfg)
    return cfg


def parse_override(text):
    """'train.steps=100' -> ('train.steps', 100); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value, e.g. train.steps=100")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw)


def load_config(path=None, overrides=()):
    """Loads a YAML config (or the defaults), applies dotted `key=value` overrides, validates."""
    values = {}
    if path is not None:
        try:
            values = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as err:
            raise ConfigError(f"cannot read config file {path}: {err.strerror}") from err
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid YAML: {err}") from err
        if not isinstance(values, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
    for text in overrides:
        key, value = parse_override(text)
        node = values
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: '{part}' is not a section")
        node[parts[-1]] = value
    return config_from_dict(values)
