from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from helpers import load_script

ROOT = Path(__file__).resolve().parents[1]


cli = load_script("cli.py")


def invoke(*args):
    return CliRunner().invoke(cli.main, list(args))


def test_group_help_shows_commands_and_examples():
    result = invoke("--help")
    assert result.exit_code == 0, result.output
    assert "Bielski" in result.output
    assert "train" in result.output
    assert "Examples:" in result.output
    assert "python cli.py train --set train.steps=500 --out runs/quick" in result.output


def test_train_help_shows_options_and_outputs():
    result = invoke("train", "--help")
    assert result.exit_code == 0, result.output
    for option in ("--config", "--set", "--out", "--dry-run", "KEY=VALUE"):
        assert option in result.output, option
    assert "synthetic.yaml" in result.output  # the default config is shown
    for written in ("config.yaml", "checkpoints/", "samples/step_NNNNNN.png", "generator.keras"):
        assert written in result.output, written


def test_dry_run_prints_the_resolved_config_and_builds_nothing(tmp_path, monkeypatch):
    import keras_layered.training.run as run_module

    def must_not_train(*args, **kwargs):
        raise AssertionError("--dry-run must not train")

    monkeypatch.setattr(run_module, "train_gan", must_not_train)
    out = tmp_path / "run"
    result = invoke("train", "--dry-run", "--set", "train.steps=7", "--out", str(out))
    assert result.exit_code == 0, result.output
    printed = yaml.safe_load(result.output)
    assert printed["train"]["steps"] == 7
    # The rest comes from configs/synthetic.yaml.
    defaults = yaml.safe_load((ROOT / "configs" / "synthetic.yaml").read_text())
    assert printed["data"]["resolution"] == defaults["data"]["resolution"]
    assert printed["train"]["steps_per_epoch"] == defaults["train"]["steps_per_epoch"]
    assert not out.exists()


def test_unknown_key_names_it_and_suggests_the_right_one(tmp_path):
    result = invoke("train", "--dry-run", "--set", "train.stepz=1", "--out", str(tmp_path / "run"))
    assert result.exit_code != 0
    assert "train.stepz" in result.output
    assert "train.steps" in result.output.replace("train.stepz", "")
    assert "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_set_without_equals_fails_clearly(tmp_path):
    result = invoke("train", "--dry-run", "--set", "train.steps", "--out", str(tmp_path / "run"))
    assert result.exit_code != 0
    assert "train.steps" in result.output
    assert "key=value" in result.output
    assert "Traceback" not in result.output


def test_invalid_value_fails_with_the_key_named(tmp_path):
    result = invoke("train", "--dry-run", "--set", "data.resolution=12", "--out", str(tmp_path / "run"))
    assert result.exit_code != 0
    assert "data.resolution" in result.output


@pytest.mark.slow
def test_train_end_to_end(tmp_path):
    out = tmp_path / "run"
    overrides = {
        "data.resolution": 8,
        "model.latent_dim": 8,
        "model.base_width": 16,
        "model.min_width": 8,
        "model.d_base_width": 16,
        "model.d_min_width": 8,
        "train.steps": 2,
        "train.steps_per_epoch": 2,
        "train.sample_every": 2,
        "train.checkpoint_every": 2,
        "train.batch_size": 4,
        "data.eval_scenes": 8,
        "segment.steps": 2,
        "segment.steps_per_epoch": 2,
        "segment.batch_size": 4,
        "segment.encoder_base_width": 16,
        "segment.encoder_min_width": 8,
        "segment.unet_width": 4,
        "segment.unet_depth": 2,
    }
    args = ["train", "--out", str(out)]
    for key, value in overrides.items():
        args += ["--set", f"{key}={value}"]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert f"done: {out}" in result.output

    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["steps"] == 2
    png = out / "samples" / "step_000002.png"
    assert png.is_file()
    with Image.open(png) as image:
        width, height = image.size
    # 8 rows x 5 columns of 8 px tiles, enlarged by a whole factor for viewing.
    assert width % (5 * 8) == 0 and width // (5 * 8) >= 1
    assert height * 5 == width * 8
    assert (out / "checkpoints" / "ckpt-2.index").is_file()
    assert (out / "generator.keras").is_file()
    assert (out / "discriminator.keras").is_file()
    # The segmentation stage ran after the GAN and printed its scores.
    assert (out / "segmenter.keras").is_file() and (out / "evaluation.json").is_file()
    assert "mean IoU" in result.output and "distilled" in result.output and "encoder" in result.output
