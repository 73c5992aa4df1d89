"""bench/quality.py runs end to end on a tiny budget (its numbers are not checked here)."""

import json

from click.testing import CliRunner
from helpers import load_script


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
