"""Are a run's masks too big or too small? Per segmenter, on the held-out scenes: mean IoU when
the predicted masks are thresholded at other levels than the protocol's 0.5, and the median
ratio of predicted to true mask area. A median ratio above 1 whose IoU climbs with the threshold
means a halo of uncertain pixels around the objects.

    python bench/mask_calibration.py --run bench/results/quality/shift_seed0

Diagnostic only: the reported numbers (README, evaluation.json) use 0.5.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from pathlib import Path

import click
import numpy as np

THRESHOLDS = (0.3, 0.5, 0.7, 0.9, 0.98)


def calibration(predicted, true, thresholds=THRESHOLDS):
    """[(threshold, mean IoU, median predicted/true area)] of soft masks `predicted` against
    binary masks `true`, both (B, H, W, 1); images with an empty true mask are left out of the ratio."""
    from keras_layered.evaluation import mask_scores

    true_area = true.reshape(len(true), -1).mean(axis=1)
    rows = []
    for threshold in thresholds:
        area = (predicted >= threshold).reshape(len(predicted), -1).mean(axis=1)
        ratio = float(np.median(area[true_area > 0] / true_area[true_area > 0]))
        rows.append((threshold, float(np.mean(mask_scores(predicted, true, threshold)["iou"])), ratio))
    return rows


@click.command()
@click.option("--run", "run_dir", required=True, type=click.Path(exists=True, file_okay=False))
def main(run_dir):
    import keras

    import keras_layered  # noqa: F401  (registers the model classes)
    from keras_layered.config import load_config
    from keras_layered.training.build import build_eval_dataset

    run_dir = Path(run_dir)
    cfg = load_config(run_dir / "config.yaml")
    batches = list(build_eval_dataset(cfg))
    images = np.concatenate([(np.asarray(b["image"]) + 1.0) / 2.0 for b in batches])
    true = np.concatenate([np.asarray(b["mask"]) for b in batches])
    for method in ("encoder", "distilled"):
        path = run_dir / f"segmenter_{method}.keras"
        if not path.is_file():
            continue
        predicted = keras.saving.load_model(path).predict(images, batch_size=64, verbose=0)
        click.echo(f"{method} ({len(images)} held-out scenes)\n  threshold  mean IoU  predicted/true area (median)")
        for threshold, iou, ratio in calibration(predicted, true):
            click.echo(f"  {threshold:>9}  {iou:>8.3f}  {ratio:>6.2f}")


if __name__ == "__main__":
    main()
