"""Encoder path: mean IoU (and that of the inverted mask) per number of latent-refinement steps,
scored on validation images, to choose `segment.refine_steps` without looking at the images the
README reports: built-in scenes of another seed than the reported `data.eval_seed`, or a
validation folder (or dataset) with masks given with --data.

    python bench/refine_steps.py --run bench/results/quality/shift_seed0 --steps 100,150,200
    python bench/refine_steps.py --run RUN --data folder:data/photos32/validation --steps 0,10,50,200

Refinement runs at inference only, so the run's trained encoder is rescored as it is.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import dataclasses
import time
from pathlib import Path

import click


def validation_source(data_config, spec):
    """`data_config` reading every image with a mask of `spec` (a validation split) instead of its
    own held-out images; click.BadParameter when `spec` is the run's training data."""
    if spec == data_config.source:
        raise click.BadParameter(f"{spec} is the run's training data: give a validation split", param_hint="--data")
    return dataclasses.replace(data_config, source=spec, eval_images=0)


def validation_data(run_dir, spec, eval_seed, network):
    """(the run's config, {"image", "mask"} validation batches, what they are, the path of the run's
    segmenter_<network>.keras) for --run / --data / --eval-seed; click.BadParameter for a choice
    that would look at the reported or the training images."""
    from keras_layered import distribute
    from keras_layered.config import load_config
    from keras_layered.training.build import build_eval_dataset

    cfg = load_config(run_dir / "config.yaml")
    if spec is None and cfg.data.source != "synthetic":
        raise click.BadParameter(f"{run_dir} trained on {cfg.data.source}: give its validation images with masks "
                                 "(--data folder:PATH), or use a run on the built-in scenes", param_hint="--run")
    if spec is not None:
        data_config = validation_source(cfg.data, spec)
    if spec is None and eval_seed in (cfg.data.eval_seed, cfg.data.seed):
        raise click.BadParameter(f"{eval_seed} is the run's data.eval_seed or data.seed: pick another seed, so that "
                                 "the choice does not look at the reported or the training scenes",
                                 param_hint="--eval-seed")
    path = run_dir / f"segmenter_{network}.keras"
    if not path.is_file():
        raise click.BadParameter(f"{run_dir} has no {path.name} (segment.{network} was false, or the "
                                 "segmentation stage did not finish)", param_hint="--run")
    distribute.set_precision(cfg.distribute.mixed_precision)  # as the run computed
    if spec is None:
        data_config = dataclasses.replace(cfg.data, eval_seed=eval_seed)
        shown = f"{cfg.data.eval_scenes} validation scenes (seed {eval_seed})"
    else:
        shown = spec
    data = build_eval_dataset(dataclasses.replace(cfg, data=data_config))
    if data is None:
        raise click.BadParameter(f"{spec}: no images with ground-truth masks there", param_hint="--data")
    return cfg, data, shown, path


def score_rows(heading, variants, data):
    """One timed row (mean IoU, inverted IoU, seconds) per (label, segmenter) of `variants`, an
    iterable consumed one pair at a time (so a generator may set up each segmenter in turn)."""
    from keras_layered.evaluation import evaluate_segmenter

    width = max(6, len(heading) + 1)
    click.echo(f"{heading:>{width}}{'mean IoU':>10}{'inverted':>10}{'seconds':>9}")
    for label, segmenter in variants:
        start = time.perf_counter()
        scores = evaluate_segmenter(segmenter, data)
        click.echo(f"{str(label):>{width}}{scores['mean_iou']:>10.3f}{scores['mean_inverted_iou']:>10.3f}"
                   f"{time.perf_counter() - start:>9.1f}")


def validation_options(command):
    """--run, --eval-seed and --data, as both validation scripts take them."""
    command = click.option("--data", "spec", default=None, help="folder:PATH or tfds:NAME with masks, a validation "
                           "split [default: built-in validation scenes; needs a run on synthetic data].")(command)
    command = click.option("--eval-seed", default=777, show_default=True, help="Seed of the validation scenes.")(command)
    return click.option("--run", "run_dir", required=True, type=click.Path(exists=True, file_okay=False,
                                                                           path_type=Path))(command)


@click.command()
@validation_options
@click.option("--steps", default="50,100,150,200", show_default=True, help="Comma-separated refinement steps.")
@click.option("--lr", type=float, default=None, help="Refinement step size [default: the run's segment.refine_lr].")
def main(run_dir, eval_seed, spec, steps, lr):
    import keras

    import keras_layered  # noqa: F401  (registers the model classes)

    _, data, shown, path = validation_data(run_dir, spec, eval_seed, "encoder")
    segmenter = keras.saving.load_model(path)
    if lr is not None:
        segmenter.network.refine_learning_rate = lr
    click.echo(f"{run_dir}: encoder path on {shown}, refinement step size {segmenter.network.refine_learning_rate:g}")

    def refined(n):
        segmenter.network.refine_steps = n
        segmenter.predict_function = None  # retrace: the step count is part of the graph
        return segmenter

    score_rows("steps", ((n, refined(n)) for n in (int(s) for s in steps.split(","))), data)


if __name__ == "__main__":
    main()
