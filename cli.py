"""keras-layered command line: `python cli.py train`, `python cli.py --help`."""

import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TF's C++ start-up chatter hides the progress bar

import click
import yaml

from keras_layered.config import ConfigError, load_config

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "synthetic.yaml"


@click.group(
    epilog="""\b
Examples:
  python cli.py train                                   # built-in scenes, configs/synthetic.yaml
  python cli.py train --set train.steps=500 --out runs/quick
  python cli.py train --config my.yaml --set perturb.max_shift=0 --dry-run
  python cli.py evaluate --model runs/synthetic         # mean IoU on held-out scenes
  python cli.py segment --model runs/synthetic photos/ --out masks/
  python cli.py export --run runs/synthetic --out exported/"""
)
def main():
    """Unsupervised object segmentation with perturbed layered GANs (Bielski & Favaro, 2019)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("keras_layered").setLevel(logging.INFO)


@main.command(
    epilog="""\b
Two stages: the layered GAN, then the segmentation networks trained against its frozen
generator. Writes into --out: config.yaml (the resolved config), checkpoints/, tensorboard/,
samples/step_NNNNNN.png (rows: composite | background | foreground | mask | shifted composite),
generator.keras (EMA generator), discriminator.keras, segmenter.keras (served by segment and
export), segmenter_encoder.keras, segmenter_distilled.keras and evaluation.json (held-out scenes).
Running again on the same --out resumes each stage where it stopped."""
)
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help=f"YAML config file [default: OUT/config.yaml when resuming, else {DEFAULT_CONFIG.relative_to(DEFAULT_CONFIG.parents[1])}].")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value, e.g. --set train.steps=500 (repeatable).")
@click.option("--out", "run_dir", type=click.Path(file_okay=False), default="runs/synthetic", show_default=True,
              help="Run directory (created, or resumed if it holds a checkpoint).")
@click.option("--stage", type=click.Choice(["gan", "encoder", "all"]), default="all", show_default=True,
              help="gan: the layered GAN; encoder: the segmentation stage on a trained GAN; all: both.")
@click.option("--dry-run", is_flag=True, help="Print the resolved config and exit.")
def train(config_path, overrides, run_dir, stage, dry_run):
    """Train the layered GAN and the segmentation networks on the configured data."""
    if config_path is None:  # a run continues with its own config
        saved = Path(run_dir) / "config.yaml"
        config_path = saved if saved.is_file() else DEFAULT_CONFIG
    try:
        cfg = load_config(config_path, overrides)
    except ConfigError as err:
        raise click.UsageError(str(err)) from err
    if dry_run:
        click.echo(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return
    from keras_layered.training import run  # imports TensorFlow: after the cheap checks

    try:
        results = run.train(cfg, run_dir, stage=stage)
    except ConfigError as err:
        raise click.UsageError(str(err)) from err
    if results:
        click.echo(_score_table(results))
    click.echo(f"done: {run_dir}")


def _score_table(results):
    lines = [f"{'method':<20}{'mean IoU':>10}{'Dice':>8}{'pixel acc':>11}{'dataset IoU':>13}{'images':>8}"]
    for method, r in results.items():
        lines.append(f"{method:<20}{r['mean_iou']:>10.3f}{r['mean_dice']:>8.3f}{r['pixel_accuracy']:>11.3f}"
                     f"{r['dataset_iou']:>13.3f}{r['num_images']:>8d}")
    return "\n".join(lines)


def _segmenter_path(model):
    """--model: a .keras file, or a run / export directory holding segmenter.keras."""
    path = Path(model)
    if path.is_dir():
        path = path / "segmenter.keras"
    if not path.is_file():
        raise click.BadParameter(
            f"no segmenter at {path}: give a segmenter .keras file or a run directory that finished "
            f"`python cli.py train` (it writes segmenter.keras)", param_hint="--model")
    return path


def _load_segmenter(path):
    import keras

    import keras_layered  # noqa: F401  (registers the model classes)

    model = keras.saving.load_model(path)
    if not hasattr(model, "resolution"):
        raise click.BadParameter(f"{path} is not a segmenter (a keras_layered Segmenter)", param_hint="--model")
    return model


@main.command(epilog="""\b
Masks are written as OUT/<stem>.png at each image's own size: 255 = object, 0 = background
(--soft: the probability x 255). Images of any size are resized to the model's resolution and
the mask is resized back. Grayscale, palette and RGBA images are converted to RGB (transparency
over white). Files that cannot be read are reported and skipped.""")
@click.option("--model", required=True, help="Segmenter .keras file or run directory.")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True), metavar="IMAGES_OR_DIRS...")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--threshold", default=0.5, show_default=True, type=click.FloatRange(0, 1),
              help="Mask probability at or above which a pixel is object.")
@click.option("--soft", is_flag=True, help="Write probabilities instead of binary masks.")
@click.option("--cutout", is_flag=True, help="Also write OUT/<stem>_cutout.png: the image with the mask as alpha.")
def segment(model, inputs, out_dir, batch_size, threshold, soft, cutout):
    """Write a foreground mask for every image in IMAGES_OR_DIRS (folders are searched recursively)."""
    from keras_layered.segment import segment_images

    segmenter = _load_segmenter(_segmenter_path(model))
    result = segment_images(segmenter, list(inputs), out_dir, batch_size=batch_size, threshold=threshold,
                            soft=soft, cutout=cutout)
    click.echo(f"wrote {len(result.masks)} masks to {out_dir}" +
               (f"; skipped {len(result.skipped)} unreadable files" if result.skipped else ""))


@main.command(epilog="""\b
Protocol: masks thresholded at 0.5; IoU (Jaccard), Dice and pixel accuracy per image, averaged
over the images (mean IoU); dataset IoU pools all pixels. --data synthetic: held-out built-in
scenes (data.eval_seed, data.eval_scenes and data.difficulty of the run's config.yaml when
--model is in a run directory). --data folder:PATH: images with ground-truth masks, e.g. CUB's
images/ + segmentations/ or images/ + masks/ with the same stems.""")
@click.option("--model", required=True, help="Segmenter .keras file or run directory.")
@click.option("--data", "spec", default="synthetic", show_default=True, help="synthetic or folder:PATH.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False),
              help="JSON file for the scores [default: evaluation_<model>_<data>.json beside the model].")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
def evaluate(model, spec, out_path, batch_size):
    """Score a segmenter's masks against ground truth: mean IoU, Dice, pixel accuracy."""
    import json

    from keras_layered.evaluation import evaluate_segmenter

    path = _segmenter_path(model)
    segmenter = _load_segmenter(path)
    try:
        dataset, name = _evaluation_data(spec, path, segmenter.resolution, batch_size)
    except (ConfigError, ValueError, OSError) as err:
        raise click.BadParameter(str(err), param_hint="--data") from err
    scores = evaluate_segmenter(segmenter, dataset)
    click.echo(_score_table({path.stem: scores}))
    out_path = Path(out_path) if out_path else path.with_name(f"evaluation_{path.stem}_{name}.json")
    out_path.write_text(json.dumps({"model": str(path), "data": spec, **scores}, indent=2) + "\n")
    click.echo(f"wrote {out_path}")


def _evaluation_data(spec, model_path, resolution, batch_size):
    """(dataset of {"image", "mask"} batches, short name for the output file) for --data."""
    from keras_layered.data.spec import parse_data_spec

    parsed = parse_data_spec(spec)
    if parsed.kind == "synthetic":
        from keras_layered.training.build import build_eval_dataset

        run_config = model_path.parent / "config.yaml"
        # The run's held-out scenes, at the resolution the model reads.
        cfg = load_config(run_config if run_config.is_file() else None, [f"data.resolution={resolution}"])
        return build_eval_dataset(cfg, batch_size), "synthetic"
    if parsed.kind == "folder":
        from keras_layered.data.folder import folder_dataset

        dataset = folder_dataset(parsed.path_or_name, resolution, batch_size, with_masks=True, training=False)
        return dataset, Path(parsed.path_or_name).name or "folder"
    raise ValueError(f"evaluate does not read {parsed.kind}: data yet; use synthetic or folder:PATH")


@main.command(epilog="""\b
Writes into --out: segmenter/ (SavedModel; serving_default: images float32 [batch, H, W, 3] in
[0, 1] or [0, 255] -> mask [batch, H, W, 1]; serving_uint8: the same for uint8 images),
generator/ (SavedModel; z -> composite, background, foreground, mask), and segmenter.keras,
generator.keras for keras.saving.load_model (after `import keras_layered`).""")
@click.option("--run", "run_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="A run directory that finished `python cli.py train`.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Export directory.")
@click.option("--method", type=click.Choice(["served", "encoder", "distilled"]), default="served",
              show_default=True, help="Which segmenter: the run's segment.serve one, or a named one.")
def export(run_dir, out_dir, method):
    """Export a trained run for TF Serving (SavedModel) and notebooks (.keras)."""
    import keras

    from keras_layered.export import describe_signatures, export_run

    run_dir = Path(run_dir)
    name = "segmenter.keras" if method == "served" else f"segmenter_{method}.keras"
    segmenter = _load_segmenter(_segmenter_path(run_dir / name))
    generator_path = run_dir / "generator.keras"
    if not generator_path.is_file():
        raise click.BadParameter(f"{run_dir} holds no generator.keras: train it first", param_hint="--run")
    paths = export_run(segmenter, keras.saving.load_model(generator_path), out_dir)
    for key in ("segmenter", "generator"):
        click.echo(f"{paths[key]} (SavedModel)\n{describe_signatures(paths[key])}")
    click.echo(f"{paths['segmenter_keras']}\n{paths['generator_keras']}")


if __name__ == "__main__":
    sys.exit(main())
