"""bench/photos.py: the photo benchmark end to end on a tiny budget, and its centred-disc baseline."""

import importlib.util
import json

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import load_script

from test_bench_quality import TINY


def test_centred_disc_covers_its_area_at_the_centre():
    disc = load_script("bench/photos.py").CentredDisc(0.2).predict_on_batch(np.zeros((2, 64, 64, 3)))
    assert disc.shape == (2, 64, 64, 1) and set(np.unique(disc)) == {0.0, 1.0}
    assert disc.mean() == pytest.approx(0.2, abs=0.005)
    np.testing.assert_array_equal(disc, disc[:, ::-1])  # symmetric about the centre
    np.testing.assert_array_equal(disc, disc[:, :, ::-1])
    assert disc[0, 32, 32, 0] == 1.0 and disc[0, 0, 0, 0] == 0.0


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("skimage") is None or importlib.util.find_spec("matplotlib") is None,
                    reason="the photo benchmark needs pip install .[bench]")
def test_photo_bench_writes_the_data_trains_and_scores_the_split(tmp_path):
    data = tmp_path / "photos"
    load_script("bench/photo_data.py").main(
        ["--out", str(data), "--resolution", "8", "--train", "16", "--validation", "6", "--test", "5"],
        standalone_mode=False)
    args = ["--data", str(data), "--split", "validation", "--seeds", "0", "--no-ablation", "--out-dir",
            str(tmp_path / "out"), "--variant", "mixed:perturb.background_mixing=1.0;loss.binarization_weight=0.4"]
    for key, value in TINY.items():
        args += ["--set", f"{key}={value}"]
    result = CliRunner().invoke(load_script("bench/photos.py").main, args)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "photos.json").read_text())
    assert report["split"] == "validation" and "oneDNN" in report["cpu"]
    methods = [(r["variant"], r["method"]) for r in report["rows"]]
    # The photo recipe serves the ensemble of both: its own row.
    assert methods == [("-", "centred disc (20%)"), ("mixed", "encoder path"), ("mixed", "distilled"),
                       ("mixed", "ensemble")]
    config = (tmp_path / "out" / "mixed_seed0" / "config.yaml").read_text()
    assert "background_mixing: 1.0" in config and "binarization_weight: 0.4" in config
    for row in report["rows"]:
        assert 0.0 <= row["mean_iou"] <= 1.0 and 0.0 <= row["inverted_iou"] <= 1.0
    scores = json.loads((tmp_path / "out" / "mixed_seed0" / "scores_distilled_validation.json").read_text())
    assert scores["num_images"] == 6 and scores["data"].endswith("validation")
    assert "inverted" in result.output and "centred disc" in result.output

    # The figure of that run on the same split: image, true mask, encoder, distilled, ensemble per row.
    figure = tmp_path / "masks.png"
    result = CliRunner().invoke(load_script("bench/mask_figure.py").main, [
        "--run", str(tmp_path / "out" / "mixed_seed0"), "--data", f"folder:{data}/validation", "--scenes", "4",
        "--zoom", "1", "--out", str(figure)])
    assert result.exit_code == 0, result.output
    assert "image, true mask, encoder, distilled, ensemble" in result.output
    from PIL import Image

    grid = np.asarray(Image.open(figure))
    assert grid.shape == (4 * 8, 5 * 8 + 4, 3)
    true_masks = grid[:, 9:17]
    assert set(np.unique(true_masks)) == {0, 255}
    # The true-mask column holds the split's masks: each row's object covers 8-30 % of its image.
    coverage = (true_masks[..., 0] == 255).reshape(4, 64).mean(axis=1)
    assert np.all((coverage > 0.03) & (coverage < 0.5)), coverage
    # --stride 2: images 0 and 2 of the same order.
    result = CliRunner().invoke(load_script("bench/mask_figure.py").main, [
        "--run", str(tmp_path / "out" / "mixed_seed0"), "--data", f"folder:{data}/validation", "--scenes", "2",
        "--stride", "2", "--zoom", "1", "--out", str(figure)])
    assert result.exit_code == 0, result.output
    strided = np.asarray(Image.open(figure))
    np.testing.assert_array_equal(strided[:, :17], np.concatenate([grid[0:8, :17], grid[16:24, :17]]))
