"""Run configuration: typed dataclasses, loaded strictly from YAML, saved with every run.

Unknown keys, wrong types and out-of-range values fail before anything is built, with the
dotted key named, so a typo in a config costs seconds instead of a training run.

Each field is defined once, here: its default, and its range or choices (`bounded`, `choice`).
Library classes and functions whose argument stands for a field take its default from these
dataclasses (e.g. `base_width=ModelConfig.base_width`), so they build the config's recipe; the
command line and `distribute` take their choice lists from `choices`.
"""

import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path

import yaml

from keras_layered.errors import ConfigError  # re-exported: keras_layered.config.ConfigError


RESOLUTION_RULE = "a power of two in [8, 256]"


def is_resolution(value):
    """Whether `value` is an image size this package builds for (`RESOLUTION_RULE`): the one rule
    of data.resolution, the models (`models.widths.check_resolution`) and the built-in scenes."""
    return isinstance(value, int) and not isinstance(value, bool) and 8 <= value <= 256 and value & (value - 1) == 0


# A field's rule lives in its metadata: "choices" (the values allowed), or "valid" (a predicate)
# with "expected" (what the error says a value must be). Rules between fields are in _check_rules.


def choice(*options, default=None):
    """A field that takes one of `options`; its default is `default`, else the first option."""
    default = options[0] if default is None else default
    if default not in options:
        raise ValueError(f"default {default!r} is not one of the choices {options}")
    return dataclasses.field(default=default, metadata={"choices": options})


def bounded(default, *, ge=None, gt=None, le=None, lt=None, note=""):
    """A number field in the given bounds (ge: >=, gt: >, le: <=, lt: <); the error message shows
    them as "in [lo, hi)" or ">= lo", then `note`."""
    low = next(((op, b) for op, b in (("[", ge), ("(", gt)) if b is not None), None)
    high = next(((op, b) for op, b in (("]", le), (")", lt)) if b is not None), None)
    if low and high:
        expected = f"in {low[0]}{low[1]:g}, {high[1]:g}{high[0]}"
    else:
        expected = " ".join(f"{op} {b:g}" for op, b in ((">=", ge), (">", gt), ("<=", le), ("<", lt)) if b is not None)

    def valid(value):
        return ((ge is None or value >= ge) and (gt is None or value > gt)
                and (le is None or value <= le) and (lt is None or value < lt))

    return checked(default, valid, expected + note)


def checked(default, valid, expected):
    """A field whose values satisfy `valid`; the error message says they must be `expected`."""
    return dataclasses.field(default=default, metadata={"valid": valid, "expected": expected})


def choices(key):
    """The options of the choice field `key`, e.g. choices("distribute.strategy"): the one list that
    the command line and the modules acting on the value use."""
    return _field(key).metadata["choices"]


@dataclasses.dataclass
class DataConfig:
    source: str = "synthetic"  # "synthetic", "folder:PATH" or "tfds:NAME[/CONFIG]" (README, "Data")
    resolution: int = checked(32, is_resolution, RESOLUTION_RULE)  # square images, power of two, 8..256
    # built-in scenes: 0 = plain ellipses, 1 = varied shapes, busy backgrounds
    difficulty: float = bounded(0.3, ge=0, le=1)
    # built-in scenes: sharp straight edges across each background; they make the shift bite
    edges: int = bounded(2, ge=0, le=4)
    seed: int = 0  # seed of the built-in training scenes; of shuffles, crops and flips of real images
    eval_seed: int = 12345  # seed of the held-out built-in scenes used for evaluation
    eval_scenes: int = bounded(512, ge=1)  # number of held-out scenes evaluated
    # folders / datasets: images with masks scored, a fixed subset (data.eval_seed)
    eval_images: int = bounded(512, ge=0, note=" (0 = all the images with masks)")
    # real images: shorter side resized to crop_scale * resolution, then cropped
    crop_scale: float = bounded(1.125, ge=1, note=" (the crop must fit in the resized image)")
    flip: bool = True  # real images: random horizontal flips in training
    # real images: keep them decoded and resized in memory after the first epoch; "auto": when they
    # take at most 1 GiB (data.geometry.CACHE_BUDGET), decided from the image count alone
    cache: bool | str = checked("auto", lambda value: value in ("auto", True, False), "true, false or auto")
    # tfds: examples shuffled together (folders shuffle their whole file list)
    shuffle_buffer: int = bounded(10000, ge=1)
    data_dir: str = ""  # tfds: folder of prepared datasets ("" = ~/tensorflow_datasets or $TFDS_DATA_DIR)
    manual_dir: str = ""  # tfds: folder of the dataset's downloaded archives, to prepare it offline


@dataclasses.dataclass
class ModelConfig:
    # "dcgan" (fast on CPU) or "style" (the paper's StyleGAN-like generator)
    generator: str = choice("dcgan", "style")
    latent_dim: int = bounded(64, ge=1)
    base_width: int = 128  # channels at 4x4, halved at every doubling of resolution ...
    min_width: int = 32  # ... but never fewer than this
    norm: str = choice("batch", "none")  # dcgan generator normalisation: "batch" or "none"
    # dcgan generator x2 upsampling: "nearest" + 3x3 conv, or a 4x4 stride-2 "transposed" conv (fewer FLOPs)
    upsampling: str = choice("nearest", "transposed")
    d_base_width: int = 128  # discriminator channels at its coarsest level
    d_min_width: int = 32  # discriminator channels at full resolution
    spectral_norm: bool = False  # spectral normalisation in the discriminator
    d_equalized_lr: bool = False  # equalized learning rate in the discriminator (ProGAN / StyleGAN's, the paper's)
    mapping_layers: int = 8  # style generator only
    style_mixing_prob: float = bounded(0.0, ge=0, le=1)  # style generator only


@dataclasses.dataclass
class PerturbConfig:
    max_shift: float = bounded(0.125, ge=0, lt=0.5)  # random shift of foreground+mask, fraction of the image size
    bg_contrast_jitter: float = bounded(0.0, ge=0, lt=1)  # background contrast factor drawn in [1 - s, 1 + s]
    # fraction of fakes over another latent's background (0 = shared z, the paper)
    background_mixing: float = bounded(0.0, ge=0, le=1)


@dataclasses.dataclass
class LossConfig:
    adversarial: str = choice("nonsaturating", "wgan_gp")  # "nonsaturating" (+ R1) or "wgan_gp" (+ drift)
    r1_gamma: float = 5.0  # nonsaturating only
    gp_weight: float = 10.0  # wgan_gp only
    drift: float = 0.001  # wgan_gp only
    # R1 every this many D steps, weighted by it (lazy regularisation); 1 for wgan_gp
    penalty_every: int = bounded(16, ge=1)
    min_mask_coverage: float = bounded(0.15, ge=0, le=1)  # hinge keeps the mean mask above this
    mask_coverage_weight: float = 2.0
    binarization_weight: float = 0.5  # pushes mask values to 0 or 1
    max_mask_coverage: float = bounded(1.0, ge=0, le=1)  # hinge keeps the mean mask below this (1.0 = off)
    max_coverage_weight: float = 0.0


@dataclasses.dataclass
class TrainConfig:
    steps: int = bounded(4000, ge=1)  # generator steps in all
    steps_per_epoch: int = bounded(250, ge=1)  # one Keras progress bar (epoch) per this many steps
    batch_size: int = bounded(64, ge=1)
    g_lr: float = bounded(2e-4, gt=0)
    d_lr: float = bounded(2e-4, gt=0)
    beta_1: float = 0.0
    beta_2: float = 0.99
    d_steps: int = bounded(1, ge=1)  # discriminator steps per generator step
    ema_decay: float = bounded(0.999, ge=0, lt=1)  # EMA copy of the generator, used for samples and export
    # its BatchNorm statistics: recomputed over this many batches (0 = the generator's)
    ema_bn_batches: int = bounded(16, ge=0)
    seed: int = 0
    sample_every: int = bounded(500, ge=1)  # steps between image grids (PNG + TensorBoard)
    checkpoint_every: int = bounded(500, ge=1)  # steps between checkpoints
    jit_compile: bool = False


@dataclasses.dataclass
class SegmentConfig:
    """The segmentation stage, trained against the frozen EMA generator of the GAN stage."""

    encoder: bool = True  # train the paper's encoder (image -> z -> frozen generator -> mask)
    distilled: bool = True  # train a U-Net on the generator's (composite, mask) pairs (beyond the paper)
    # which one `segmenter.keras` and `export` use: "distilled", "encoder", or "ensemble" (both
    # networks' masks averaged, segment.ensemble_encoder_share)
    serve: str = choice("distilled", "encoder", "ensemble")
    ensemble_encoder_share: float = bounded(0.3, ge=0, le=1)  # the encoder path's weight in it, the U-Net's the rest
    steps: int = bounded(1000, ge=1)
    steps_per_epoch: int = bounded(250, ge=1)
    batch_size: int = bounded(64, ge=1)
    lr: float = bounded(5e-4, gt=0)  # Adam, betas (0.9, 0.99), for both networks ...
    lr_decay: bool = False  # ... decayed linearly to 0 over segment.steps
    encoder_base_width: int = 128  # encoder channels at 4x4, halved per level up, floored at ...
    encoder_min_width: int = 32
    latent_weight: float = 1.0  # ||E(G(z)) - z||^2 on generated images
    mask_weight: float = 1.0  # BCE(mask(G(E(G(z)))), mask(G(z))) on generated images
    reconstruction_weight: float = 1.0  # L1 |G(E(x)) - x| on real images
    # of the generated images: randomly shifted, mask term only
    shifted_fraction: float = bounded(0.0, ge=0, lt=1, note=": the unshifted rest trains the latent regression")
    # served encoder path: Adam steps on each image's latent (reconstruction)
    refine_steps: int = bounded(50, ge=0)
    refine_lr: float = bounded(0.02, gt=0)  # their step size
    perceptual_weight: float = bounded(0.0, ge=0)  # L1 between VGG16 features of G(E(x)) and x; needs ...
    perceptual_weights: str = ""  # ... a local VGG16 notop weights file (.h5), e.g. keras' cache
    # U-Net targets: mask > 0.5 where |foreground - background| > this (0 = off)
    visible_threshold: float = bounded(0.0, ge=0, lt=2, note=": a difference of pixel values in [-1, 1]")
    # U-Net composites: foreground and background colours jittered apart (layers.ColorJitter), this strong
    layer_jitter: float = bounded(0.0, ge=0, le=1)
    # of each generated batch: the share the U-Net trains on (its step's cost scales with it)
    unet_fraction: float = bounded(1.0, gt=0, le=1)
    largest_component: bool = False  # served masks: only the largest connected region (one object per image)
    # served masks: rescaled so that this level of the networks' masks becomes 0.5, the usual cut
    mask_threshold: float = bounded(0.5, gt=0, lt=1)
    unet_width: int = bounded(32, ge=1)  # U-Net channels at full resolution, doubled per level down (up to unet_max_width)
    unet_depth: int = 3
    unet_max_width: int = bounded(0, ge=0, note=" (0 = no cap)")  # U-Net channels never above this
    unet_low_res_upconv: bool = False  # U-Net decoder: up-convolution before the x2 repeat (4x cheaper)
    unet_flip_average: bool = False  # served U-Net masks: mean over the image and its mirror image (2x its cost)
    encoder_flip_average: bool = False  # encoder-path masks: the same (2x its cost, refinement included)
    # served masks (every saved segmenter): mean over the image moved by up to this many pixels
    # each way ((2 n + 1)^2 x the cost; 0 = off)
    shift_average: int = bounded(0, ge=0, le=4)
    checkpoint_every: int = bounded(250, ge=1)


@dataclasses.dataclass
class DistributeConfig:
    """Devices, machines and arithmetic of training (README, "Distributed training")."""

    # auto: MirroredStrategy when > 1 GPU is visible; default; mirrored; multi_worker (TF_CONFIG)
    strategy: str = choice("auto", "default", "mirrored", "multi_worker")
    # none (float32), mixed_float16 (GPU, loss-scaled), mixed_bfloat16, or auto (fastest here)
    mixed_precision: str = choice("auto", "none", "mixed_float16", "mixed_bfloat16", default="none")
    # TensorFlow's oneDNN CPU kernels: auto (on with AVX2 + FMA), true, false (YAML's on / off too)
    onednn: bool | str = choice("auto", True, False)


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


def _check_fields(section, prefix=""):
    """Each field's own rule, from its metadata (`choice`, `bounded`, `checked`)."""
    for field in dataclasses.fields(section):
        key, value = f"{prefix}{field.name}", getattr(section, field.name)
        if dataclasses.is_dataclass(value):
            _check_fields(value, f"{key}.")
        elif "choices" in field.metadata and value not in field.metadata["choices"]:
            raise ConfigError(f"{key} must be one of {', '.join(map(str, field.metadata['choices']))}; got {value!r}")
        elif "valid" in field.metadata and not field.metadata["valid"](value):
            raise ConfigError(f"{key} must be {field.metadata['expected']}, got {value!r}")


# segment.serve -> the networks (segment.encoder / segment.distilled) that segmenter is made of
_SERVED_NETWORKS = {"distilled": ("distilled",), "encoder": ("encoder",), "ensemble": ("encoder", "distilled")}


def _check_rules(cfg):
    """Rules between fields, after each field's own; raises ConfigError naming the key."""
    rules = [
        ("model.min_width", 1 <= cfg.model.min_width <= cfg.model.base_width, "in [1, model.base_width]"),
        ("model.d_min_width", 1 <= cfg.model.d_min_width <= cfg.model.d_base_width,
         "in [1, model.d_base_width]"),
        ("model.d_equalized_lr", not (cfg.model.d_equalized_lr and cfg.model.spectral_norm),
         "false with model.spectral_norm=true (choose one way to scale the discriminator's weights)"),
        ("loss.penalty_every", cfg.loss.adversarial != "wgan_gp" or cfg.loss.penalty_every == 1,
         "1 with loss.adversarial=wgan_gp (its gradient penalty belongs to every critic step; lazy "
         "regularisation is for R1, loss.adversarial=nonsaturating)"),
        ("segment.encoder_min_width", 1 <= cfg.segment.encoder_min_width <= cfg.segment.encoder_base_width,
         "in [1, segment.encoder_base_width]"),
        ("segment.unet_depth",
         1 <= cfg.segment.unet_depth and cfg.data.resolution % 2**cfg.segment.unet_depth == 0,
         ">= 1 with data.resolution divisible by 2**depth"),
        ("segment.unet_max_width", cfg.segment.unet_max_width == 0 or cfg.segment.unet_max_width >= cfg.segment.unet_width,
         "0 (no cap) or >= segment.unet_width"),
        ("segment.serve", all(getattr(cfg.segment, network) for network in _SERVED_NETWORKS[cfg.segment.serve]),
         "a segmenter of the networks the stage trains (segment.encoder / segment.distilled is false; "
         "ensemble needs both)"),
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


def _check(cfg):
    _check_fields(cfg)
    _check_rules(cfg)
    _check_data_source(cfg.data.source)


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


def _field(dotted):
    """The dataclass field of a dotted key, e.g. "distribute.strategy"."""
    cls, (*sections, name) = Config, dotted.split(".")
    for section in sections:
        cls = typing.get_type_hints(cls)[section]
    return {field.name: field for field in dataclasses.fields(cls)}[name]


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
    _check(cfg)
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
