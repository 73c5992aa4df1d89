import json
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
import yaml
from click.testing import CliRunner
from helpers import write_images_and_masks
from PIL import Image


ROOT = Path(__file__).resolve().parents[1]


from keras_layered import cli


def invoke(*args):
    return CliRunner().invoke(cli.main, list(args))


def test_group_help_shows_commands_and_examples():
    result = invoke("--help")
    assert result.exit_code == 0, result.output
    assert "Bielski" in result.output
    assert "train" in result.output
    assert "keras-layered train --set train.steps=500 --out runs/quick" in result.output
    assert "Examples (in a source checkout, `python cli.py` runs the same commands):" in result.output


def test_train_help_shows_options_and_outputs():
    result = invoke("train", "--help")
    assert result.exit_code == 0, result.output
    for option in ("--config", "--set", "--out", "--dry-run", "KEY=VALUE"):
        assert option in result.output, option
    help_text = " ".join(result.output.split())
    assert "else synthetic, or photos with --data folder:PATH or tfds:NAME" in help_text  # the default recipes
    assert "lsun_car_64, photos, synthetic) or a YAML config file" in help_text  # the shipped ones by name
    for written in ("config.yaml", "checkpoints/", "samples/step_NNNNNN.png", "generator.keras"):
        assert written in result.output, written


def test_choice_options_are_the_config_choices(tmp_path):
    from keras_layered.config import choices

    def option(command, name):
        return next(p for p in command.params if p.name == name).type.choices

    assert tuple(option(cli.train, "strategy")) == choices("distribute.strategy")
    assert tuple(option(cli.export, "method")) == ("served", *choices("segment.serve"))
    out = tmp_path / "run"
    result = invoke("train", "--dry-run", "--strategy", "mirrored", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.output)["distribute"]["strategy"] == "mirrored"  # --strategy sets the key


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


TINY = {
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


TINY_RATE = 2e-4  # train.g_lr and train.d_lr of configs/synthetic.yaml


def overrides(values):
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]


@pytest.mark.parametrize("args, message", [
    (("--set", "train.steps=7", "--set", "train.steps_per_epoch=2"),
     "train.steps (7) must be a multiple of train.steps_per_epoch (2)"),
    (("--set", "segment.steps=5", "--set", "segment.steps_per_epoch=2"),
     "segment.steps (5) must be a multiple of segment.steps_per_epoch (2)"),
    (("--stage", "segmenter"), "holds no generator.keras: train the GAN stage first"),
    (("--stage", "encoder"), "holds no generator.keras: train the GAN stage first"),  # the old name
    (("--data", "folder:no_such_folder"), "no_such_folder"),
])
def test_dry_run_refuses_what_train_refuses(tmp_path, args, message):
    out = tmp_path / "run"
    for dry_run in (("--dry-run",), ()):
        result = invoke("train", *dry_run, "--out", str(out), *args)
        assert result.exit_code == 2, result.output  # a usage error, not a traceback
        assert message in " ".join(result.output.split()), result.output
        assert not out.exists()


def run_files(run_dir):
    """{path: bytes} of every file of a run but its TensorBoard logs (a new process opens new ones)."""
    return {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*")
            if p.is_file() and "tensorboard" not in p.parts}


@pytest.mark.slow
def test_resume_refuses_what_its_checkpoint_cannot_take_and_trains_with_new_rates(tmp_path):
    out = tmp_path / "run"
    first = invoke("train", "--stage", "gan", "--out", str(out), *overrides(TINY))
    assert first.exit_code == 0, first.output
    before = run_files(out)
    for dry_run in (("--dry-run",), ()):
        result = invoke("train", *dry_run, "--stage", "gan", "--out", str(out), "--set", "model.base_width=32")
        assert result.exit_code == 2, result.output
        message = " ".join(result.output.split())
        assert f"model.base_width cannot change when {out} resumes" in message
        assert "the run has 16, the command gives 32" in message
        assert "a new run directory (--out), or drop the override" in message
        assert run_files(out) == before  # config.yaml, checkpoints, samples and models untouched
    # Steps and learning rates may change: the rerun continues from the run's own config, and
    # trains with the new rate, not the one its checkpoint restored.
    result = invoke("train", "--stage", "gan", "--out", str(out), "--set", "train.steps=4", "--set", "train.d_lr=1e-5")
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert (saved["train"]["steps"], saved["train"]["d_lr"], saved["model"]["base_width"]) == (4, 1e-5, 16)
    latest = tf.train.latest_checkpoint(str(out / "checkpoints"))
    assert latest.endswith("ckpt-4")
    rates = [tf.train.load_variable(latest, f"{o}/_learning_rate/.ATTRIBUTES/VARIABLE_VALUE")
             for o in ("g_optimizer", "d_optimizer")]
    np.testing.assert_allclose(rates, [TINY_RATE, 1e-5], rtol=1e-6)
    # The same for the segmentation stage's optimizers.
    for steps, rate in ((2, 5e-4), (4, 1e-4)):
        result = invoke("train", "--stage", "segmenter", "--out", str(out), "--set", "segment.encoder=false",
                        "--set", "segment.lr_decay=false", "--set", f"segment.steps={steps}",
                        "--set", f"segment.lr={rate}")
        assert result.exit_code == 0, result.output
    latest = tf.train.latest_checkpoint(str(out / "checkpoints" / "segmentation"))
    assert latest.endswith("ckpt-4")
    rate = tf.train.load_variable(latest, "unet_optimizer/_learning_rate/.ATTRIBUTES/VARIABLE_VALUE")
    np.testing.assert_allclose(rate, 1e-4, rtol=1e-6)


def test_check_train_fixes_each_stage_state_once_the_stage_has_a_checkpoint(tmp_path):
    from keras_layered.config import ConfigError, load_config
    from keras_layered.training.run import check_train

    tiny = [f"{k}={v}" for k, v in TINY.items()]
    saved = load_config(overrides=tiny + ["distribute.mixed_precision=mixed_bfloat16"])
    saved.save(tmp_path / "config.yaml")
    changed = load_config(overrides=tiny + ["model.base_width=32", "segment.unet_width=8"])
    assert check_train(changed, tmp_path) is changed  # config.yaml alone: nothing trained yet
    (tmp_path / "checkpoints" / "segmentation").mkdir(parents=True)
    (tmp_path / "checkpoints" / "checkpoint").write_text("")
    with pytest.raises(ConfigError, match="model.base_width cannot change"):
        check_train(changed, tmp_path)
    harmless = load_config(overrides=tiny + ["train.steps=8", "train.g_lr=1e-4", "loss.r1_gamma=1",
                                             "train.sample_every=1", "segment.unet_width=8",
                                             "distribute.mixed_precision=auto"])
    resumed = check_train(harmless, tmp_path)
    assert resumed.train.steps == 8 and resumed.segment.unet_width == 8
    assert resumed.distribute.mixed_precision == "mixed_bfloat16"  # "auto" keeps the run's precision
    with pytest.raises(ConfigError, match="distribute.mixed_precision cannot change"):
        check_train(load_config(overrides=tiny + ["distribute.mixed_precision=none"]), tmp_path)
    other = {"nearest": "transposed", "transposed": "nearest"}[saved.model.upsampling]
    with pytest.raises(ConfigError, match="model.upsampling cannot change when .* resumes: it changes the shapes"):
        check_train(load_config(overrides=tiny + [f"model.upsampling={other}"]), tmp_path)
    (tmp_path / "checkpoints" / "segmentation" / "checkpoint").write_text("")
    with pytest.raises(ConfigError, match="segment.unet_width cannot change"):
        check_train(harmless, tmp_path)


@pytest.mark.slow
def test_train_end_to_end(tmp_path):
    out = tmp_path / "run"
    result = invoke("train", "--out", str(out), *overrides(TINY))
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


@keras.saving.register_keras_serializable(package="test_cli")
class ChannelMeanMask(keras.Model):
    """[-1, 1] images -> the mean of their channels in [0, 1]: bright pixels are object."""

    def call(self, images):
        return (keras.ops.mean(images, axis=-1, keepdims=True) + 1.0) / 2.0


def scene(width, height, seed):
    """Dark noise with a few bright specks and a bright ellipse (the true mask), uint8."""
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 150, (height, width, 3))
    rgb[rng.random((height, width)) < 0.02] = 250  # specks: fragments for largest_component to remove
    y, x = np.mgrid[:height, :width]
    cy, cx = rng.uniform(0.25, 0.75) * height, rng.uniform(0.2, 0.8) * width
    ry, rx = rng.uniform(0.2, 0.35) * height, rng.uniform(0.2, 0.35) * width
    mask = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1
    rgb[mask] = rng.integers(110, 256, (mask.sum(), 3))  # a few object pixels are dark: not a perfect IoU
    return rgb.astype(np.uint8), mask


def footprint(width, height, resolution, crop_scale):
    """Which pixels of a (height, width) image the model's centre crop covers, by hand: the shorter
    side resized to round(crop_scale * resolution), then the centre resolution x resolution."""
    shorter = round(crop_scale * resolution)
    new_w, new_h = (shorter, round(height * shorter / width)) if width <= height else (round(width * shorter / height), shorter)
    top, left = (new_h - resolution) // 2, (new_w - resolution) // 2
    rows = (np.arange(height) + 0.5) * new_h / height  # pixel centres in the resized image
    cols = (np.arange(width) + 0.5) * new_w / width
    return (((rows >= top) & (rows < top + resolution))[:, None]
            & ((cols >= left) & (cols < left + resolution))[None, :])


@pytest.mark.parametrize("sizes, tolerance", [
    ([(20, 20), (31, 20), (20, 27), (20, 44)], 1e-6),  # shorter side already 1.25 x 16: no resizing
    ([(45, 33), (17, 40), (64, 64), (50, 21)], 0.03),  # resized: the scorer works at the images' size
])
def test_evaluate_and_segment_score_the_same_pixels_alike(tmp_path, sizes, tolerance):
    """`evaluate` on a folder, and `segment` on the same images scored by a numpy IoU against the
    true masks, on the pixels the model sees (its centre crop after resizing the shorter side,
    data.crop_scale from the run's config.yaml): the same mean and dataset IoU. Without resizing
    these are the same pixels and the scores agree exactly; with resizing, the scorer reads masks
    resampled to each image's own size, so they agree to resampling noise."""
    from keras_layered.models.segmenter import Segmenter

    res, crop_scale = 16, 1.25
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(f"data:\n  crop_scale: {crop_scale}\n")
    segmenter = Segmenter(ChannelMeanMask(), res, largest_component=True)
    segmenter(np.zeros((1, res, res, 3), np.uint8))  # built, as a trained one is saved
    segmenter.save(run / "segmenter.keras")
    examples = {i: scene(width, height, seed=i) for i, (width, height) in enumerate(sizes)}
    data = write_images_and_masks(tmp_path / "data", examples)
    truth = {i: mask for i, (_, mask) in examples.items()}

    result = invoke("evaluate", "--model", str(run), "--data", f"folder:{data}", "--out", str(tmp_path / "s.json"))
    assert result.exit_code == 0, result.output
    evaluated = json.loads((tmp_path / "s.json").read_text())
    result = invoke("segment", "--model", str(run), str(data / "images"), "--out", str(tmp_path / "masks"))
    assert result.exit_code == 0, result.output

    ious, intersections, unions = [], 0, 0
    for i, (width, height) in enumerate(sizes):
        written = np.asarray(Image.open(tmp_path / "masks" / f"{i}.png")) >= 128
        seen = footprint(width, height, res, crop_scale)
        assert not written[~seen].any()  # nothing outside the crop the model saw
        predicted, true = written[seen], truth[i][seen]
        intersection, union = np.sum(predicted & true), np.sum(predicted | true)
        ious.append(intersection / union)
        intersections, unions = intersections + intersection, unions + union
    assert evaluated["num_images"] == len(sizes)
    assert 0.5 < evaluated["mean_iou"] < 0.99  # a real score, not a trivial one
    assert np.mean(ious) == pytest.approx(evaluated["mean_iou"], abs=tolerance)
    assert intersections / unions == pytest.approx(evaluated["dataset_iou"], abs=tolerance)
    print(f"mean IoU: evaluate {evaluated['mean_iou']:.6f}, segment + numpy {np.mean(ious):.6f}; "
          f"dataset IoU: {evaluated['dataset_iou']:.6f}, {intersections / unions:.6f}")
