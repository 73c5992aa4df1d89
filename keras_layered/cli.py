"""The keras-layered command line (`keras-layered`, or `python cli.py` in a checkout): train, segment, evaluate, export, fid.

Nothing here imports TensorFlow at module level: each command imports what it needs, so `--help`
and `train --dry-run` (but for a tfds: source, which TFDS looks up) start without it, and `train`
can choose the CPU kernels (distribute.onednn) before TensorFlow loads.
"""

import json
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TF's C++ start-up chatter hides the progress bar

import click
import yaml

from keras_layered import kernels
from keras_layered.config import choices, load_config
from keras_layered.errors import ConfigError
from keras_layered.recipes import data_source, default_recipe, recipe, recipe_names, resolve_config
from keras_layered.training.checks import STAGE_ALIASES, STAGES

DEFAULT_CONFIG = recipe("synthetic")  # the built-in scenes' recipe (keras_layered/recipes.py finds it)


@click.group(
    epilog="""\b
Examples (in a source checkout, `python cli.py` runs the same commands):
  keras-layered train                                   # built-in scenes, the synthetic recipe
  keras-layered train --set train.steps=500 --out runs/quick
  keras-layered train --config my.yaml --set perturb.max_shift=0 --dry-run
  keras-layered evaluate --model runs/synthetic         # mean IoU on held-out scenes
  keras-layered segment --model runs/synthetic photos/ --out masks/
  keras-layered export --run runs/synthetic --out exported/ --onnx
  keras-layered train --data folder:my_photos           # photographs: the photo recipe
  keras-layered train --config cub_64 --data folder:data/CUB_200_2011
  keras-layered fid --run runs/CUB_200_2011             # FID of the generator vs its data"""
)
def main():
    """Unsupervised object segmentation with perturbed layered GANs (Bielski & Favaro, 2019)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("keras_layered").setLevel(logging.INFO)


class _StageChoice(click.Choice):
    """--stage's choices (`STAGES`), which also takes the old names of `STAGE_ALIASES`, unlisted."""

    def __init__(self):
        super().__init__(STAGES)

    def convert(self, value, param, ctx):
        return super().convert(STAGE_ALIASES.get(value, value), param, ctx)


@main.command(
    epilog="""\b
Two stages: the layered GAN, then the segmentation networks trained against its frozen
generator. Writes into --out: config.yaml (the resolved config), checkpoints/, tensorboard/,
samples/step_NNNNNN.png (rows: composite | background | foreground | mask | shifted composite),
generator.keras (EMA generator), discriminator.keras, segmenter.keras (served by segment and
export), segmenter_encoder.keras, segmenter_distilled.keras and evaluation.json (scores on
the data's ground-truth masks: held-out scenes, a dataset's test split, a folder's masks).
Running again on the same --out resumes each stage where it stopped."""
)
@click.option("--config", "config_path", type=click.Path(dir_okay=False), metavar="NAME|FILE",
              help=f"A shipped recipe ({', '.join(recipe_names())}) or a YAML config file [default: "
                   f"OUT/config.yaml when resuming, else synthetic, or photos with --data folder:PATH or tfds:NAME].")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value, e.g. --set train.steps=500 (repeatable).")
@click.option("--data", "data_spec", metavar="SPEC",
              help="Training data, overriding data.source: synthetic, folder:PATH or tfds:NAME[/CONFIG].")
@click.option("--out", "run_dir", type=click.Path(file_okay=False),
              help="Run directory (created, or resumed if it holds a checkpoint) [default: runs/<data name>, "
                   "e.g. runs/synthetic, runs/CUB_200_2011].")
@click.option("--stage", type=_StageChoice(), default="all", show_default=True,
              help="gan: the layered GAN; segmenter: the segmentation stage on a trained GAN (the encoder and "
                   "the distilled U-Net; encoder is its old name); all: both.")
@click.option("--strategy", type=click.Choice(choices("distribute.strategy")),
              help="Devices, overriding distribute.strategy [default: auto = every GPU when more than one is "
                   "visible, else one device]; multi_worker reads the cluster from TF_CONFIG (README).")
@click.option("--dry-run", is_flag=True,
              help="Check the command as training would (config, data, resuming --out) and print the resolved "
                   "config; writes nothing.")
def train(config_path, overrides, data_spec, run_dir, stage, strategy, dry_run):
    """Train the layered GAN and the segmentation networks on the configured data."""
    if strategy is not None:
        overrides = (*overrides, f"distribute.strategy={strategy}")
    if data_spec is not None:  # JSON-quoted: a valid YAML string whatever the path holds
        overrides = (*overrides, f"data.source={json.dumps(data_spec)}")
    try:
        if config_path is not None:
            config_path = resolve_config(config_path)
        if run_dir is None:  # named after the data, so runs on different data never resume each other
            run_dir = _default_run_dir(config_path, overrides)
        if config_path is None:  # a run continues with its own config
            saved = Path(run_dir) / "config.yaml"
            config_path = saved if saved.is_file() else _starting_recipe(overrides)
        cfg = load_config(config_path, overrides)
    except ConfigError as err:
        raise click.UsageError(str(err)) from err
    if dry_run:  # refuses what `train` would refuse
        from keras_layered.training.checks import check_train

        try:
            cfg = check_train(cfg, run_dir, stage)
        except ConfigError as err:
            raise click.UsageError(str(err)) from err
        click.echo(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return
    # Before TensorFlow loads: it reads the oneDNN setting once, when imported (`run.train` warns
    # if it was loaded with other kernels already, e.g. by a caller in the same process).
    kernels.configure_onednn(cfg.distribute.onednn)
    from keras_layered.training import run
    from keras_layered.training.callbacks import NonFiniteLossError, TrainingInterrupted

    if cfg.data.source != "synthetic" and Path(config_path).resolve() == DEFAULT_CONFIG:
        click.echo(f"note: {DEFAULT_CONFIG.name} is tuned for the built-in scenes; for photographs start from "
                   f"the photo recipe (--config photos)", err=True)
    try:
        results = run.train(cfg, run_dir, stage=stage)
    except ConfigError as err:
        raise click.UsageError(str(err)) from err
    except NonFiniteLossError as err:
        raise click.ClickException(str(err)) from err
    except TrainingInterrupted as err:
        click.echo(f"\n{err}", err=True)
        raise click.exceptions.Exit(128 + err.signum) from err  # the shell's code for a signal
    if results:
        click.echo(_score_table(results))
    click.echo(f"done: {run_dir}")


def _starting_recipe(overrides):
    """The recipe a new run starts from without --config; said on stderr when it is the photo recipe."""
    source = data_source(overrides)
    path = default_recipe(source)
    if path != DEFAULT_CONFIG:
        click.echo(f"using the photo recipe {path.name} for {source} (pass --config to choose another)", err=True)
    return path


def _default_run_dir(config_path, overrides):
    """runs/<short name of the data source> of the config that `train` will load."""
    from keras_layered.data.spec import parse_data_spec

    cfg = load_config(config_path or default_recipe(data_source(overrides)), overrides)
    return str(Path("runs") / parse_data_spec(cfg.data.source).short_name)


def _score_table(results):
    lines = [f"{'method':<20}{'mean IoU':>10}{'inverted':>10}{'Dice':>8}{'pixel acc':>11}{'dataset IoU':>13}"
             f"{'images':>8}"]
    for method, r in results.items():
        lines.append(f"{method:<20}{r['mean_iou']:>10.3f}{r['mean_inverted_iou']:>10.3f}{r['mean_dice']:>8.3f}"
                     f"{r['pixel_accuracy']:>11.3f}"
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
            f"`keras-layered train` (it writes segmenter.keras)", param_hint="--model")
    return path


def _load_segmenter(path):
    import keras  # registers the package's model classes with it (keras_layered/__init__.py)

    model = keras.saving.load_model(path)
    if not hasattr(model, "resolution"):
        raise click.BadParameter(f"{path} is not a segmenter (a keras_layered Segmenter)", param_hint="--model")
    return model


@main.command(epilog="""\b
Masks are written as OUT/<stem>.png at each image's own size: 255 = object, 0 = background
(--soft: the probability x 255). Each image is seen as in training and `evaluate`: shorter side
resized to data.crop_scale x the model's resolution (from the run's config.yaml), centre crop;
its mask is put back in place, 0 outside the crop. Grayscale, palette and RGBA images are
converted to RGB (transparency over white). Files that cannot be read are reported and skipped.""")
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

    path = _segmenter_path(model)
    segmenter = _load_segmenter(path)
    crop_scale = _run_data_config(path.parent, None, segmenter.resolution).crop_scale  # as `evaluate` crops
    result = segment_images(segmenter, list(inputs), out_dir, batch_size=batch_size, threshold=threshold,
                            soft=soft, cutout=cutout, crop_scale=crop_scale)
    click.echo(f"wrote {len(result.masks)} masks to {out_dir}" +
               (f"; skipped {len(result.skipped)} unreadable files" if result.skipped else ""))


@main.command(epilog="""\b
Protocol: masks thresholded at 0.5; IoU (Jaccard), Dice and pixel accuracy per image, averaged
over the images (mean IoU); dataset IoU pools all pixels. --data synthetic: held-out built-in
scenes (data.eval_seed, data.eval_scenes and data.difficulty of the run's config.yaml when
--model is in a run directory). --data folder:PATH: the images with ground-truth masks, e.g.
CUB's images/ + segmentations/ or images/ + masks/ with the same stems. --data tfds:NAME: the
dataset's test split (caltech_birds2011, oxford_iiit_pet), read from the run's data.data_dir.
Folders and datasets: data.eval_images of them (512; a fixed subset drawn with data.eval_seed,
the first ones of a test split), or all with --all.""")
@click.option("--model", required=True, help="Segmenter .keras file or run directory.")
@click.option("--data", "spec", metavar="SPEC",
              help="synthetic, folder:PATH or tfds:NAME [default: the run's data.source, else synthetic].")
@click.option("--out", "out_path", type=click.Path(dir_okay=False),
              help="JSON file for the scores [default: evaluation_<model>_<data>.json beside the model].")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--all", "score_all", is_flag=True, help="Score every image with a mask of a folder or dataset "
              "[default: data.eval_images of them].")
def evaluate(model, spec, out_path, batch_size, score_all):
    """Score a segmenter's masks against ground truth: mean IoU, Dice, pixel accuracy."""
    from keras_layered.data.sources import evaluation_dataset, evaluation_split
    from keras_layered.data.spec import parse_data_spec
    from keras_layered.evaluation import evaluate_segmenter
    from keras_layered.training.run import with_progress

    path = _segmenter_path(model)
    segmenter = _load_segmenter(path)
    try:
        data = _run_data_config(path.parent, spec, segmenter.resolution, score_all)
        dataset = evaluation_dataset(data, batch_size)
    except (ConfigError, ValueError, OSError) as err:
        raise click.BadParameter(str(err), param_hint="--data") from err
    if dataset is None:
        hint = (" (a folder's masks: images/<sub>/<stem>.* with segmentations/<sub>/<stem>.png or masks/<sub>/"
                "<stem>.*)" if data.source.startswith("folder:") else "")
        raise click.BadParameter(f"{data.source} has no ground-truth masks to score against{hint}",
                                 param_hint="--data")
    scores = evaluate_segmenter(segmenter, with_progress(dataset, f"scoring {path.stem} on {evaluation_split(data)}"))
    click.echo(_score_table({path.stem: scores}))
    name = parse_data_spec(data.source).short_name
    out_path = Path(out_path) if out_path else path.with_name(f"evaluation_{path.stem}_{name}.json")
    out_path.write_text(json.dumps({"model": str(path), "data": data.source, **scores}, indent=2) + "\n")
    click.echo(f"wrote {out_path}")


def _run_data_config(run_dir, spec, resolution, score_all=False):
    """The config of the run in `run_dir` (its config.yaml, else the defaults) with `spec` as
    data.source when given and the model's resolution (and every image with a mask if `score_all`):
    the run's data options (data_dir, crop, held-out scenes) apply to the data scored against."""
    run_config = Path(run_dir) / "config.yaml"
    overrides = [f"data.resolution={resolution}"] + ([f"data.source={json.dumps(spec)}"] if spec else [])
    overrides += ["data.eval_images=0"] if score_all else []
    return load_config(run_config if run_config.is_file() else None, overrides).data


# What each artifact of `export` is for, and the client that loads it.
ARTIFACT_USES = {
    "segmenter": "SavedModel, images -> mask: TF Serving (REST :predict, gRPC Predict), "
                 "tf.saved_model.load, saved_model_cli run",
    "generator": "SavedModel, z -> layers: TF Serving, tf.saved_model.load",
    "segmenter_keras": "Keras model: keras.saving.load_model after `import keras_layered`, then predict "
                       "(examples/segment_images.ipynb)",
    "generator_keras": "Keras model of the generator: keras.saving.load_model after `import keras_layered`",
    "segmenter_onnx": "ONNX, images float32 [0, 1] or [0, 255] -> mask: onnxruntime.InferenceSession",
    "segmenter_uint8_onnx": "ONNX, images uint8 -> mask: onnxruntime.InferenceSession",
}


@main.command(epilog="""\b
Writes into --out: segmenter/ (SavedModel; serving_default: images float32 [batch, H, W, 3] in
[0, 1] or [0, 255] -> mask [batch, H, W, 1]; serving_uint8: the same for uint8 images),
generator/ (SavedModel; z -> composite, background, foreground, mask), and segmenter.keras,
generator.keras for keras.saving.load_model (after `import keras_layered`). --onnx also writes
segmenter.onnx and segmenter_uint8.onnx for onnxruntime (needs pip install -e ".[onnx]"; not for
an encoder segmenter that refines latents, nor an ensemble holding one).""")
@click.option("--run", "run_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="A run directory that finished `keras-layered train`.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Export directory.")
@click.option("--method", type=click.Choice(["served", *choices("segment.serve")]), default="served",
              show_default=True, help="Which segmenter: the run's segment.serve one, or a named one.")
@click.option("--onnx", is_flag=True, help="Also write the segmenter as ONNX models (tf2onnx).")
def export(run_dir, out_dir, method, onnx):
    """Export a trained run for TF Serving (SavedModel), notebooks (.keras) and onnxruntime (--onnx)."""
    import keras

    from keras_layered.export import describe_signatures, export_run

    run_dir = Path(run_dir)
    name = "segmenter.keras" if method == "served" else f"segmenter_{method}.keras"
    segmenter = _load_segmenter(_segmenter_path(run_dir / name))
    generator_path = run_dir / "generator.keras"
    if not generator_path.is_file():
        raise click.BadParameter(f"{run_dir} holds no generator.keras: train it first", param_hint="--run")
    try:
        paths = export_run(segmenter, keras.saving.load_model(generator_path), out_dir, onnx=onnx)
    except (ImportError, ValueError) as err:  # the ONNX extra missing, a segmenter ONNX cannot express
        raise click.UsageError(str(err)) from err
    except RuntimeError as err:  # a converted ONNX model that fails its check
        raise click.ClickException(str(err)) from err
    for key, path in paths.items():
        click.echo(f"{path}  {ARTIFACT_USES[key]}")
        if key in ("segmenter", "generator"):
            click.echo(describe_signatures(path))


@main.command(epilog="""\b
FID between the run's EMA generator (its composites, z ~ N(0, I)) and the training images of
the data (centre crops at the run's resolution), from InceptionV3's pool features
(keras.applications, ImageNet weights, images resized to 299). The data's statistics are cached
in --stats-dir and reused by later calls. Appends {"fid", ...} to RUN/fid.jsonl. Comparable
between runs of this package, not exactly with published FIDs (those use the TF1 Inception
graph); the standard count is 50000 images, fewer biases FID upwards.""")
@click.option("--run", "run_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="A run directory holding generator.keras.")
@click.option("--data", "spec", metavar="SPEC", help="Data to compare with [default: the run's data.source].")
@click.option("--num-images", default=10000, show_default=True, type=click.IntRange(min=2),
              help="Generated images, and data images (fewer if the data has fewer).")
@click.option("--batch-size", default=50, show_default=True, type=click.IntRange(min=1))
@click.option("--weights", default="imagenet", show_default=True,
              help="imagenet (Keras' cache ~/.keras/models, else a download), the path of a local "
                   "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5, or none (untrained: only "
                   "tests the pipeline, the number means nothing).")
@click.option("--stats-dir", type=click.Path(file_okay=False),
              help="Where the data's statistics are cached [default: fid_stats/ beside the run].")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the generator's latents.")
def fid(run_dir, spec, num_images, batch_size, weights, stats_dir, seed):
    """Frechet Inception Distance of a run's generator against a dataset."""
    import keras  # registers the package's model classes with it (keras_layered/__init__.py)

    from keras_layered import fid as fid_lib
    from keras_layered.data.sources import reference_dataset
    from keras_layered.data.spec import parse_data_spec

    run_dir = Path(run_dir)
    if not (run_dir / "generator.keras").is_file():
        raise click.BadParameter(f"{run_dir} holds no generator.keras: train it first", param_hint="--run")
    generator = keras.saving.load_model(run_dir / "generator.keras")
    weights = None if weights.lower() == "none" else weights
    try:
        data = _run_data_config(run_dir, spec, generator.resolution)
    except ConfigError as err:
        raise click.BadParameter(str(err), param_hint="--data") from err
    try:
        model = fid_lib.load_inception(weights)
    except fid_lib.FidWeightsError as err:
        raise click.BadParameter(str(err), param_hint="--weights") from err
    tag = fid_lib.weights_tag(weights)
    name = parse_data_spec(data.source).short_name
    stats_dir = Path(stats_dir) if stats_dir else run_dir.resolve().parent / "fid_stats"
    # Untrained weights differ on every load: their statistics are never reused.
    cache = None if weights is None else stats_dir / f"{name}_{data.resolution}px_{num_images}_{tag}.npz"
    description = {"data": data.source, "resolution": data.resolution, "crop_scale": data.crop_scale,
                   "data_dir": data.data_dir, "num_images": num_images, "weights": tag}
    try:
        real = fid_lib.dataset_statistics(model, reference_dataset(data, batch_size, num_images), num_images,
                                          cache, description)
    except (ConfigError, ValueError, OSError) as err:
        raise click.BadParameter(str(err), param_hint="--data") from err
    fake = fid_lib.generator_statistics(model, generator, num_images, batch_size, seed)
    value = fid_lib.frechet_distance(*real, *fake)
    click.echo(f"FID {value:.4g}: {num_images} generated images vs {data.source} at {data.resolution} px "
               f"({tag} InceptionV3 weights)" + (f"; data statistics cached in {cache}" if cache else ""))
    with open(run_dir / "fid.jsonl", "a") as log_file:
        log_file.write(json.dumps({"fid": value, "seed": seed, **description}) + "\n")


if __name__ == "__main__":
    sys.exit(main())
