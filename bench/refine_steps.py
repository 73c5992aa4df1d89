"""Encoder path: mean IoU per number of latent-refinement steps, scored on validation scenes
(another seed than the reported `data.eval_seed`), to choose `segment.refine_steps` without
looking at the scenes the README reports.

    python bench/refine_steps.py --run bench/results/quality/shift_seed0 --steps 100,150,200

Refinement runs at inference only, so the run's trained encoder is rescored as it is.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import dataclasses
import time
from pathlib import Path

import click


@click.command()
@click.option("--run", "run_dir", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--steps", default="50,100,150,200", show_default=True, help="Comma-separated refinement steps.")
@click.option("--eval-seed", default=777, show_default=True, help="Seed of the validation scenes.")
def main(run_dir, steps, eval_seed):
    import keras

    import keras_layered  # noqa: F401  (registers the model classes)
    from keras_layered import distribute
    from keras_layered.config import load_config
    from keras_layered.evaluation import evaluate_segmenter
    from keras_layered.training.build import build_eval_dataset

    run_dir = Path(run_dir)
    cfg = load_config(run_dir / "config.yaml")
    if cfg.data.source != "synthetic":
        raise click.BadParameter(f"{run_dir} trained on {cfg.data.source}: validation scenes need the built-in "
                                 "scenes (data.source synthetic)", param_hint="--run")
    if eval_seed in (cfg.data.eval_seed, cfg.data.seed):
        raise click.BadParameter(f"{eval_seed} is the run's data.eval_seed or data.seed: pick another seed, so that "
                                 "the choice does not look at the reported or the training scenes",
                                 param_hint="--eval-seed")
    path = run_dir / "segmenter_encoder.keras"
    if not path.is_file():
        raise click.BadParameter(f"{run_dir} has no segmenter_encoder.keras (segment.encoder was false, or the "
                                 "segmentation stage did not finish)", param_hint="--run")
    distribute.set_precision(cfg.distribute.mixed_precision)  # as the run computed
    data = build_eval_dataset(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, eval_seed=eval_seed)))
    segmenter = keras.saving.load_model(path)
    click.echo(f"{run_dir}: encoder path on {cfg.data.eval_scenes} validation scenes (seed {eval_seed})")
    click.echo(f"{'steps':>6}{'mean IoU':>10}{'seconds':>9}")
    for n in (int(s) for s in steps.split(",")):
        segmenter.network.refine_steps = n
        segmenter.predict_function = None  # retrace: the step count is part of the graph
        start = time.perf_counter()
        iou = evaluate_segmenter(segmenter, data)["mean_iou"]
        click.echo(f"{n:>6}{iou:>10.3f}{time.perf_counter() - start:>9.1f}")


if __name__ == "__main__":
    main()
