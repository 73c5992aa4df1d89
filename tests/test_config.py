"""Tests of the strict YAML run configuration."""

import dataclasses
from pathlib import Path

import pytest
import yaml

from keras_layered.config import (
    Config,
    ConfigError,
    config_from_dict,
    load_config,
    parse_override,
)

REPO = Path(__file__).resolve().parents[1]


def test_defaults_load():
    cfg = load_config()
    assert cfg == Config()
    assert cfg.data.resolution == 32
    assert cfg.perturb.max_shift == 0.125
    assert cfg.train.steps == 4000
    assert cfg.model.generator == "dcgan"
    assert config_from_dict({}) == Config() and config_from_dict(None) == Config()


def test_yaml_file_and_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data:\n  resolution: 16\ntrain:\n  steps: 10\n  g_lr: 0.001\n")
    cfg = load_config(path, ["train.steps=20", "perturb.max_shift=0.25", "model.spectral_norm=true"])
    assert cfg.data.resolution == 16  # from the file
    assert cfg.train.steps == 20  # the override wins over the file
    assert cfg.train.g_lr == 0.001
    assert cfg.perturb.max_shift == 0.25
    assert cfg.model.spectral_norm is True
    # Untouched keys keep their defaults.
    assert cfg.train.batch_size == Config().train.batch_size
    assert cfg.loss == Config().loss


def test_override_creates_missing_section(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data:\n  resolution: 16\n")
    cfg = load_config(path, ["loss.r1_gamma=1.5"])
    assert cfg.loss.r1_gamma == 1.5 and cfg.data.resolution == 16


def test_int_accepted_for_float_fields():
    cfg = load_config(overrides=["perturb.max_shift=0", "loss.r1_gamma=10", "train.beta_1=0"])
    assert cfg.perturb.max_shift == 0.0 and isinstance(cfg.perturb.max_shift, float)
    assert cfg.loss.r1_gamma == 10.0 and isinstance(cfg.loss.r1_gamma, float)
    assert isinstance(cfg.train.beta_1, float)


def test_scientific_notation_floats_accepted(tmp_path):
    # "1e-4" is how a learning rate is usually written on a command line or in a YAML file.
    cfg = load_config(overrides=["train.g_lr=1e-4"])
    assert cfg.train.g_lr == pytest.approx(1e-4)
    path = tmp_path / "lr.yaml"
    path.write_text("train:\n  d_lr: 2e-4\n")
    assert load_config(path).train.d_lr == pytest.approx(2e-4)


def test_parse_override():
    assert parse_override("train.steps=100") == ("train.steps", 100)
    assert parse_override(" model.norm = none") == ("model.norm", "none")
    assert parse_override("model.spectral_norm=false") == ("model.spectral_norm", False)
    assert parse_override("perturb.max_shift=0.2") == ("perturb.max_shift", 0.2)
    assert parse_override("a.b=x=y") == ("a.b", "x=y")  # split at the first '=' only


def test_malformed_override_raises():
    with pytest.raises(ConfigError, match="train.steps"):
        parse_override("train.steps")
    with pytest.raises(ConfigError, match="key=value"):
        load_config(overrides=["train.steps"])


def test_override_into_a_non_section_raises():
    with pytest.raises(ConfigError, match="train"):
        load_config(overrides=["train=5", "train.steps=3"])


def test_synthetic_recipe_loads():
    path = REPO / "configs" / "synthetic.yaml"
    cfg = load_config(path)
    assert cfg.data.resolution == 32
    # Every key the file sets reached the config (nothing silently dropped).
    raw = yaml.safe_load(path.read_text())
    for section, values in raw.items():
        for key, val in values.items():
            assert getattr(getattr(cfg, section), key) == val, f"{section}.{key}"


@pytest.mark.parametrize(
    "override, key, suggestion",
    [
        ("train.step=5", "train.step", "train.steps"),
        ("perturb.max_shfit=0.1", "perturb.max_shfit", "perturb.max_shift"),
        ("trian.steps=5", "trian", "train"),
    ],
)
def test_unknown_key_names_it_and_suggests(override, key, suggestion):
    with pytest.raises(ConfigError) as info:
        load_config(overrides=[override])
    message = str(info.value)
    assert f"'{key}'" in message
    assert f"did you mean '{suggestion}'" in message


def test_unknown_key_without_close_match():
    with pytest.raises(ConfigError, match="'train.zzzzzz'") as info:
        config_from_dict({"train": {"zzzzzz": 1}})
    assert "did you mean" not in str(info.value)


@pytest.mark.parametrize(
    "values, key",
    [
        ({"train": {"steps": "many"}}, "train.steps"),
        ({"model": {"spectral_norm": 3}}, "model.spectral_norm"),
        ({"train": {"steps": True}}, "train.steps"),  # bool is not an int here
        ({"train": {"batch_size": 8.0}}, "train.batch_size"),  # nor is a float
        ({"loss": {"r1_gamma": True}}, "loss.r1_gamma"),  # nor a float
        ({"model": {"generator": 1}}, "model.generator"),
        ({"perturb": {"max_shift": None}}, "perturb.max_shift"),
    ],
)
def test_wrong_type_names_the_key(values, key):
    with pytest.raises(ConfigError, match="type") as info:
        config_from_dict(values)
    assert key in str(info.value)


def test_section_that_is_not_a_mapping():
    with pytest.raises(ConfigError, match="train") as info:
        config_from_dict({"train": 5})
    assert "mapping" in str(info.value)


@pytest.mark.parametrize(
    "override, key",
    [
        ("perturb.max_shift=0.5", "perturb.max_shift"),
        ("perturb.max_shift=-0.1", "perturb.max_shift"),
        ("data.resolution=48", "data.resolution"),
        ("data.edges=5", "data.edges"),
        ("data.resolution=512", "data.resolution"),
        ("data.resolution=4", "data.resolution"),
        ("train.ema_decay=1.0", "train.ema_decay"),
        ("train.ema_bn_batches=-1", "train.ema_bn_batches"),
        ("model.generator=foo", "model.generator"),
        ("perturb.bg_contrast_jitter=1.0", "perturb.bg_contrast_jitter"),
        ("perturb.background_mixing=1.5", "perturb.background_mixing"),
        ("perturb.background_mixing=-0.5", "perturb.background_mixing"),
        ("train.steps=0", "train.steps"),
        ("model.min_width=256", "model.min_width"),  # more than base_width 128
        ("loss.adversarial=wgan", "loss.adversarial"),
        ("distribute.mixed_precision=bf16", "distribute.mixed_precision"),
        ("segment.visible_threshold=-0.1", "segment.visible_threshold"),
        ("segment.unet_max_width=16", "segment.unet_max_width"),  # below unet_width 32
        ("segment.unet_max_width=-1", "segment.unet_max_width"),
        ("data.cache=sometimes", "data.cache"),
    ],
)
def test_out_of_range_names_the_key(override, key):
    with pytest.raises(ConfigError) as info:
        load_config(overrides=[override])
    message = str(info.value)
    assert key in message
    assert repr(yaml.safe_load(override.split("=", 1)[1])) in message  # the bad value is shown


@pytest.mark.parametrize("resolution", [8, 16, 64, 128, 256])
def test_valid_resolutions(resolution):
    assert load_config(overrides=[f"data.resolution={resolution}"]).data.resolution == resolution


@pytest.mark.parametrize("resolution", [4, 8, 12, 32, 48, 256, 512])
def test_config_models_and_scenes_share_the_resolution_rule(resolution):
    from keras_layered.data.synthetic import synthetic_scenes
    from keras_layered.models.widths import check_resolution

    def accepts(check):
        try:
            check()
        except ValueError:  # ConfigError included
            return False
        return True

    verdicts = {accepts(lambda: load_config(overrides=[f"data.resolution={resolution}"])),
                accepts(lambda: check_resolution(resolution, "model")),
                accepts(lambda: synthetic_scenes(resolution, 1))}
    assert verdicts == {resolution in (8, 32, 256)}


def test_data_cache_is_auto_true_or_false():
    assert load_config().data.cache == "auto"
    assert [load_config(overrides=[f"data.cache={v}"]).data.cache for v in ("true", "false", "auto")] == [
        True, False, "auto"]
    with pytest.raises(ConfigError, match="data.cache must be of type"):
        load_config(overrides=["data.cache=1"])


def test_boundary_values_accepted():
    cfg = load_config(overrides=["perturb.max_shift=0.49", "train.ema_decay=0.0", "data.difficulty=1"])
    assert cfg.perturb.max_shift == 0.49 and cfg.train.ema_decay == 0.0 and cfg.data.difficulty == 1.0


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(path)


def test_directory_is_unreadable(tmp_path):
    with pytest.raises(ConfigError, match=str(tmp_path.name)):
        load_config(tmp_path)


def test_invalid_yaml_names_the_path(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("data: [unclosed\n  resolution: 32\n")
    with pytest.raises(ConfigError, match="broken.yaml") as info:
        load_config(path)
    assert "YAML" in str(info.value)


def test_non_mapping_top_level_names_the_path(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- data\n- model\n")
    with pytest.raises(ConfigError, match="list.yaml") as info:
        load_config(path)
    assert "mapping" in str(info.value)


def test_empty_file_gives_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing but a comment\n")
    assert load_config(path) == Config()


def test_lazy_gradient_penalty_is_refused_with_wgan_gp():
    with pytest.raises(ConfigError, match=r"loss.penalty_every must be 1 with loss.adversarial=wgan_gp .*got 16"):
        load_config(overrides=["loss.adversarial=wgan_gp"])  # penalty_every's default is 16
    assert load_config(overrides=["loss.adversarial=wgan_gp", "loss.penalty_every=1"]).loss.penalty_every == 1
    assert load_config(overrides=["loss.penalty_every=4"]).loss.penalty_every == 4  # lazy R1


def test_save_load_round_trip(tmp_path):
    cfg = load_config(
        overrides=[
            "data.resolution=64",
            "model.generator=style",
            "model.spectral_norm=true",
            "perturb.max_shift=0.2",
            "perturb.bg_contrast_jitter=0.3",
            "perturb.background_mixing=0.5",
            "loss.adversarial=wgan_gp",
            "loss.penalty_every=1",
            "train.g_lr=0.00001",
            "train.steps=12",
            "train.jit_compile=true",
        ]
    )
    path = tmp_path / "saved.yaml"
    cfg.save(path)
    again = load_config(path)
    assert again == cfg
    assert dataclasses.asdict(again) == dataclasses.asdict(cfg)
    assert again.train.g_lr == 1e-5 and isinstance(again.train.g_lr, float)
    # Saved as plain nested YAML with every section.
    assert set(yaml.safe_load(path.read_text())) == {f.name for f in dataclasses.fields(Config)}


def test_defaults_round_trip(tmp_path):
    path = tmp_path / "defaults.yaml"
    Config().save(path)
    assert load_config(path) == Config()


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--set", "perturb.max_shfit=0.1"], "unknown config key 'perturb.max_shfit'; did you mean 'perturb.max_shift'?"),
        (["--set", "train.steps=many"], "train.steps must be of type int, got 'many'"),
        (["--set", "perturb.max_shift=0.5"], "perturb.max_shift must be in [0, 0.5), got 0.5"),
        (["--set", "data.resolution=48"], "data.resolution must be a power of two in [8, 256], got 48"),
        (["--config", "{bad_yaml}"], "train.g_lr must be of type float, got 'fast'"),
    ],
)
def test_cli_train_rejects_a_bad_config_before_building_or_writing_anything(args, expected, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from keras_layered.cli import main as cli_main
    from keras_layered.training import run as run_module

    def must_not_run(*_, **__):
        raise AssertionError("a bad config must fail before anything is built")

    for name in ("train", "build_layered_gan", "build_dataset"):
        monkeypatch.setattr(run_module, name, must_not_run)
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("train:\n  g_lr: fast\n")
    out = tmp_path / "run"
    args = [a.format(bad_yaml=bad_yaml) for a in args]
    result = CliRunner().invoke(cli_main, ["train", "--out", str(out), *args])
    assert result.exit_code == 2, result.output  # a usage error
    assert expected in result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert not out.exists(), "nothing is written for a bad config"
