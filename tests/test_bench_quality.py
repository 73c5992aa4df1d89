"""bench/quality.py runs end to end on a tiny budget (its numbers are not checked here); bench/mask_calibration.py."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import load_script, write_images_and_masks


TINY = {
    "data.resolution": 8, "data.eval_scenes": 8,
    "model.latent_dim": 8, "model.base_width": 16, "model.min_width": 8, "model.d_base_width": 16,
    "model.d_min_width": 8,
    "train.steps": 2, "train.steps_per_epoch": 2, "train.batch_size": 4, "train.sample_every": 2,
    "train.checkpoint_every": 2,
    "segment.steps": 2, "segment.steps_per_epoch": 2, "segment.batch_size": 4, "segment.encoder_base_width": 16,
    "segment.encoder_min_width": 8, "segment.unet_width": 4, "segment.unet_depth": 2,
}


def test_quality_bench_runs_seeds_and_the_ablation_on_a_tiny_budget(tmp_path):
    args = ["--seeds", "0,1", "--out-dir", str(tmp_path)]
    for key, value in TINY.items():
        args += ["--set", f"{key}={value}"]
    result = CliRunner().invoke(load_script("bench/quality.py").main, args)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "quality.json").read_text())
    runs = {(r["variant"], r["seed"], r["method"]) for r in report["rows"]}
    assert runs == {(v, s, m) for v in ("shift", "no-shift") for s in (0, 1) for m in ("encoder", "distilled")}
    for row in report["rows"]:
        assert 0.0 <= row["mean_iou"] <= 1.0 and row["gan_steps"] == 2 and row["segment_steps"] == 2
    # The ablation run really trained without the shift.
    assert "max_shift: 0.0" in (tmp_path / "no-shift_seed0" / "config.yaml").read_text()
    assert "max_shift: 0.125" in (tmp_path / "shift_seed1" / "config.yaml").read_text()
    summary = {(s["variant"], s["method"]): s for s in report["summary"]}
    assert len(summary) == 4 and all(s["seeds"] == 2 and s["min"] <= s["median"] <= s["max"] for s in summary.values())
    assert "median" in result.output and "no-shift" in result.output


def test_mask_calibration_hand_values():
    calibration = load_script("bench/mask_calibration.py").calibration
    true = np.zeros((2, 4, 4, 1), np.float32)
    true[:, :2, :2] = 1.0  # 4 pixels each
    predicted = true * 0.99
    predicted[:, :3, :3] += (1 - true[:, :3, :3]) * 0.6  # a halo of 5 pixels at 0.6 around each object
    rows = {t: (iou, ratio) for t, iou, ratio in calibration(predicted, true, thresholds=(0.5, 0.9))}
    assert rows[0.5] == pytest.approx((4 / 9, 9 / 4))  # the halo counts: IoU 4/9, area 9/4 of the truth
    assert rows[0.9] == pytest.approx((1.0, 1.0))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from keras_layered.config import load_config
    from keras_layered.training import run

    run_dir = tmp_path_factory.mktemp("run")
    run.train(load_config(overrides=[f"{k}={v}" for k, v in TINY.items()]), run_dir, verbose=0)
    return run_dir


def test_mask_calibration_runs_on_a_trained_run(tiny_run):
    result = CliRunner().invoke(load_script("bench/mask_calibration.py").main, ["--run", str(tiny_run)])
    assert result.exit_code == 0, result.output
    assert "encoder (8 held-out scenes)" in result.output and "distilled" in result.output
    assert len([line for line in result.output.splitlines() if line.strip().startswith("0.")]) == 12


def test_mask_calibration_scores_a_validation_folder_and_refuses_the_training_data(tiny_run, tmp_path):
    mask = np.zeros((8, 8), bool)
    mask[2:6, 2:6] = True
    rng = np.random.default_rng(1)
    write_images_and_masks(tmp_path, {i: (rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), mask) for i in range(3)},
                           sub="a")
    main = load_script("bench/mask_calibration.py").main
    result = CliRunner().invoke(main, ["--run", str(tiny_run), "--data", f"folder:{tmp_path}"])
    assert result.exit_code == 0, result.output
    assert f"encoder (3 images of folder:{tmp_path})" in result.output
    result = CliRunner().invoke(main, ["--run", str(tiny_run), "--data", "synthetic"])
    assert result.exit_code == 2 and "the run's training data" in result.output


def test_refine_steps_scores_each_step_count_on_validation_scenes(tiny_run):
    main = load_script("bench/refine_steps.py").main
    result = CliRunner().invoke(main, ["--run", str(tiny_run), "--steps", "0,3", "--eval-seed", "7"])
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.output.splitlines()[2:]]
    assert [row[0] for row in rows] == ["0", "3"]
    assert all(0.0 <= float(row[1]) <= 1.0 for row in rows)
    assert all(0.0 <= float(row[2]) <= 1.0 for row in rows)  # the inverted mask's IoU
    assert "8 validation scenes (seed 7)" in result.output
    # The reported scenes' seed is refused: choosing on them would be peeking.
    result = CliRunner().invoke(main, ["--run", str(tiny_run), "--eval-seed", "12345"])
    assert result.exit_code == 2 and "pick another seed" in result.output


def test_refine_steps_scores_a_validation_folder_with_the_given_step_size(tiny_run, tmp_path):
    rng = np.random.default_rng(0)
    mask = np.zeros((8, 8), bool)
    mask[2:6, 2:6] = True
    write_images_and_masks(tmp_path, {i: (rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), mask) for i in range(3)},
                           sub="a")
    main = load_script("bench/refine_steps.py").main
    result = CliRunner().invoke(main, ["--run", str(tiny_run), "--steps", "0,2", "--data", f"folder:{tmp_path}",
                                       "--lr", "0.5"])
    assert result.exit_code == 0, result.output
    assert f"folder:{tmp_path}, refinement step size 0.5" in result.output
    rows = [line.split() for line in result.output.splitlines()[2:]]
    assert [row[0] for row in rows] == ["0", "2"]
    assert all(0.0 <= float(row[1]) <= 1.0 and 0.0 <= float(row[2]) <= 1.0 for row in rows)
    result = CliRunner().invoke(main, ["--run", str(tiny_run), "--data", "synthetic"])
    assert result.exit_code == 2 and "the run's training data" in result.output


def test_flip_average_scores_the_served_unet_both_ways_on_validation_scenes(tiny_run):
    main = load_script("bench/flip_average.py").main
    result = CliRunner().invoke(main, ["--run", str(tiny_run), "--eval-seed", "7"])
    assert result.exit_code == 0, result.output
    assert "distilled U-Net on 8 validation scenes (seed 7)" in result.output
    rows = [line.split() for line in result.output.splitlines()[2:]]
    assert [row[0] for row in rows] == ["false", "true"]
    assert all(0.0 <= float(row[1]) <= 1.0 and 0.0 <= float(row[2]) <= 1.0 for row in rows)
    result = CliRunner().invoke(main, ["--run", str(tiny_run), "--eval-seed", "0"])  # the training scenes' seed
    assert result.exit_code == 2 and "pick another seed" in result.output


def test_ensemble_scores_both_mirror_averages_and_each_share_on_validation_scenes(tiny_run):
    main = load_script("bench/ensemble.py").main
    result = CliRunner().invoke(main, ["--run", str(tiny_run), "--eval-seed", "7", "--shares", "0,0.5,1"])
    assert result.exit_code == 0, result.output
    assert "segmenters on 8 validation scenes (seed 7)" in result.output
    lines = result.output.splitlines()
    headings = [i for i, line in enumerate(lines) if "mean IoU" in line]
    assert len(headings) == 3 and "encoder mirror average" in lines[headings[0]]
    rows = [[line.split() for line in lines[a + 1:b]] for a, b in zip(headings, [*headings[1:], len(lines)])]
    assert [row[0] for row in rows[0]] == ["false", "true"]
    assert [row[0] for row in rows[1]] == [row[0] for row in rows[2]] == ["0.0", "0.5", "1.0"]
    # Share 1 is the encoder path alone, share 0 the U-Net alone: the same scores as those segmenters.
    assert rows[1][2][1:3] == rows[0][0][1:3] and rows[2][2][1:3] == rows[0][1][1:3]
    assert rows[1][0][1:3] == rows[2][0][1:3]
    result = CliRunner().invoke(main, ["--run", str(tiny_run), "--eval-seed", "7", "--shares", "0,2"])
    assert result.exit_code == 2 and "numbers in [0, 1]" in result.output


def test_ensemble_save_writes_the_served_ensemble_of_a_runs_two_segmenters(tiny_run, tmp_path):
    import shutil

    import keras

    from keras_layered.layers import LargestComponent
    from keras_layered.models.segmenter import Segmenter

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    load = lambda name: keras.saving.load_model(run_dir / name)  # noqa: E731
    # The two segmenters saved with settings of their own: each network keeps its mirror average.
    unet, inversion = load("segmenter_distilled.keras").network, load("segmenter_encoder.keras").network
    Segmenter(unet, 8, largest_component=True, flip_average=True, threshold=0.4).save(
        run_dir / "segmenter_distilled.keras")
    Segmenter(inversion, 8, flip_average=False, threshold=0.4).save(run_dir / "segmenter_encoder.keras")
    result = CliRunner().invoke(load_script("bench/ensemble.py").main, ["--run", str(run_dir), "--save", "0.25"])
    assert result.exit_code == 0, result.output
    ensemble = load("segmenter_ensemble.keras")
    assert ensemble.network.shares == [0.75, 0.25] and ensemble.network.flip_average == [True, False]
    assert ensemble.largest_component is True and ensemble.threshold == 0.4 and ensemble.flip_average is False
    images = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3)).astype("uint8")
    x = images / 127.5 - 1
    unet_masks = (unet.predict(x, verbose=0) + unet.predict(x[:, :, ::-1], verbose=0)[:, :, ::-1]) / 2
    mean = 0.75 * unet_masks + 0.25 * inversion.predict(x, verbose=0)["mask"]
    rescaled = np.where(mean <= 0.4, mean * 0.5 / 0.4, 1 - (1 - mean) * 0.5 / 0.6)  # the networks' 0.4 -> 0.5
    expected = LargestComponent()(rescaled.astype("float32"))
    np.testing.assert_allclose(ensemble.predict(images, verbose=0), np.asarray(expected), atol=1e-5)
    (run_dir / "segmenter_encoder.keras").unlink()
    result = CliRunner().invoke(load_script("bench/ensemble.py").main, ["--run", str(run_dir), "--save", "0.25"])
    assert result.exit_code == 2 and "has no segmenter_encoder.keras" in result.output


def test_layering_hand_values_tell_an_object_from_its_inverse():
    layering = load_script("bench/layering.py").layering
    square = np.zeros((2, 6, 6, 1), np.float32)
    square[:, 2:4, 2:4] = 0.8  # 4 of 36 pixels, none on the 20-pixel ring
    square[1, 0, 0] = 0.3  # one ring pixel of the second mask, below the cut
    stats = layering(square)
    assert stats["mean"] == pytest.approx((2 * 4 * 0.8 + 0.3) / 72)
    assert stats["ring"] == pytest.approx(0.3 / 40)
    assert stats["cut_mean"] == pytest.approx(8 / 72) and stats["cut_ring"] == 0.0
    assert stats["inverted"] == 0.0 and stats["undecided"] == pytest.approx(9 / 72)
    inverse = layering(1.0 - square)
    assert inverse["cut_ring"] == 1.0 and inverse["inverted"] == 1.0  # 1 - 0.3 is above the cut
    assert inverse["cut_mean"] == pytest.approx(64 / 72)


def test_layering_reads_a_runs_generator_and_a_folders_true_masks(tiny_run, tmp_path):
    mask = np.zeros((8, 8), bool)
    mask[2:6, 2:6] = True
    rng = np.random.default_rng(2)
    write_images_and_masks(tmp_path / "v", {i: (rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), mask)
                                            for i in range(3)})
    main = load_script("bench/layering.py").main
    result = CliRunner().invoke(main, ["--run", str(tiny_run), "--samples", "5", "--batch-size", "2",
                                       "--data", f"folder:{tmp_path / 'v'}"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "5 samples of generator.keras" in lines[0] and lines[1].startswith("masks")
    fake = [float(x) for x in lines[2].split()[1:]]
    assert len(fake) == 6 and all(0.0 <= x <= 1.0 for x in fake)
    # The true masks: binary, off the border; the 4 x 4 square is 5 x 5 after the evaluation's
    # resize to 9 px (data.crop_scale 1.125) and centre crop.
    assert lines[3].split()[1:7] == ["0.391", "0.000", "0.391", "0.000", "0.000", "0.000"]
    assert "3 masks of folder:" in lines[3]
    result = CliRunner().invoke(main, ["--run", str(tmp_path)])
    assert result.exit_code == 2 and "no generator.keras" in result.output
