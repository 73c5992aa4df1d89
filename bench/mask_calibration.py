"""Are a run's masks too big or too small? Per segmenter, on the held-out scenes (or the images
with masks of --data, a validation split): mean IoU when the predicted masks are thresholded at
other levels than the protocol's 0.5, and the median ratio of predicted to true mask area. A
median ratio above 1 whose IoU climbs with the threshold means a halo of uncertain pixels around
the objects; the level that scores best on validation images is a value for
`segment.mask_threshold`, which makes the served masks cut there at 0.5 (the levels are those of
the networks' masks: a segmenter saved with another threshold is scored without it).

    python bench/mask_calibration.py --run bench/results/quality/shift_seed0
    python bench/mask_calibration.py --run RUN --data folder:data/photos32/validation

The reported numbers (README, evaluation.json) always cut the served masks at 0.5.
"""

import dataclasses
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from pathlib import Path

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from refine_steps import validation_source  # noqa: E402

THRESHOLDS = (0.3, 0.4, 0.5, 0.7, 0.9, 0.98)


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
@click.option("--data", "spec", default=None,
              help="folder:PATH or tfds:NAME with masks, a validation split [default: the run's held-out images].")
def main(run_dir, spec):
    import keras

    import keras_layered  # noqa: F401  (registers the model classes)
    from keras_layered.config import load_config
    from keras_layered.models.segmenter import Segmenter
    from keras_layered.training.build import build_eval_dataset

    run_dir = Path(run_dir)
    cfg = load_config(run_dir / "config.yaml")
    shown = "held-out scenes" if cfg.data.source == "synthetic" else "held-out images"
    if spec is not None:
        cfg = dataclasses.replace(cfg, data=validation_source(cfg.data, spec))
        shown = f"images of {spec}"
    dataset = build_eval_dataset(cfg)
    if dataset is None:
        raise click.BadParameter(f"{cfg.data.source}: no images with ground-truth masks there", param_hint="--data")
    batches = list(dataset)
    images = np.concatenate([(np.asarray(b["image"]) + 1.0) / 2.0 for b in batches])
    true = np.concatenate([np.asarray(b["mask"]) for b in batches])
    for method in ("encoder", "distilled", "ensemble"):
        path = run_dir / f"segmenter_{method}.keras"
        if not path.is_file():
            continue
        segmenter = keras.saving.load_model(path)
        if segmenter.threshold != 0.5:  # levels of the networks' masks, not of the rescaled ones
            segmenter = Segmenter(segmenter.network, segmenter.resolution, segmenter.largest_component,
                                  segmenter.flip_average)
        predicted = segmenter.predict(images, batch_size=64, verbose=0)
        click.echo(f"{method} ({len(images)} {shown})\n  threshold  mean IoU  predicted/true area (median)")
        for threshold, iou, ratio in calibration(predicted, true):
            click.echo(f"  {threshold:>9}  {iou:>8.3f}  {ratio:>6.2f}")


if __name__ == "__main__":
    main()
