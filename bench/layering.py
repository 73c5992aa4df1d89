"""Which way round is a run's layering? Masks of samples of the run's EMA generator
(RUN/generator.keras): their mean, their mean on the image's outer 1-pixel ring, the same two of
the masks cut at 0.5, the share of samples whose cut mask covers more than half of that ring
(each an inverted layering: objects rarely touch most of the border), the share of mask values
between 0.1 and 0.9 (not decided yet), and the collapse check's warnings. With --data, the same
numbers of the true masks of a folder (or dataset) with masks, for comparison.

    python bench/layering.py --run runs/CUB_200_2011 --samples 512
    python bench/layering.py --run RUN --data folder:data/photos64/validation

A healthy layering has its ring well below its mean; an inverted one the ring above it.
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

HEADER = "masks  mean   ring   cut mean  cut ring  inverted  undecided"


def layering(masks):
    """The numbers of the table for masks (N, S, S, 1) in [0, 1]: a dict of floats."""
    from keras_layered.training.collapse import border_ring

    masks = np.asarray(masks, np.float32)
    cut = (masks > 0.5).astype(np.float32)
    cut_ring = border_ring(cut)
    return {"mean": float(masks.mean()), "ring": float(border_ring(masks).mean()),
            "cut_mean": float(cut.mean()), "cut_ring": float(cut_ring.mean()),
            "inverted": float((cut_ring.mean(axis=1) > 0.5).mean()),
            "undecided": float(((masks > 0.1) & (masks < 0.9)).mean())}


def row(name, stats):
    return (f"{name:<6} {stats['mean']:.3f}  {stats['ring']:.3f}  {stats['cut_mean']:>8.3f}  "
            f"{stats['cut_ring']:>8.3f}  {stats['inverted']:>8.3f}  {stats['undecided']:>9.3f}")


def generated_masks(generator, samples, batch_size, seed):
    rng = np.random.default_rng(seed)
    parts = []
    for start in range(0, samples, batch_size):
        z = rng.standard_normal((min(batch_size, samples - start), generator.latent_dim)).astype("float32")
        parts.append(np.asarray(generator(z, training=False)["mask"], np.float32))
    return np.concatenate(parts)


@click.command()
@click.option("--run", "run_dir", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--samples", default=512, show_default=True, type=click.IntRange(min=2))
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the latents.")
@click.option("--data", "spec", default=None,
              help="folder:PATH or tfds:NAME with masks: their true masks' numbers beside the generator's.")
def main(run_dir, samples, batch_size, seed, spec):
    import keras

    import keras_layered  # noqa: F401  (registers the model classes)
    from keras_layered.config import load_config
    from keras_layered.errors import ConfigError
    from keras_layered.training.build import build_eval_dataset
    from keras_layered.training.checks import generator_path
    from keras_layered.training.collapse import diagnose_masks

    run_dir = Path(run_dir)
    try:
        path = generator_path(run_dir)
    except ConfigError as error:
        raise click.BadParameter(str(error), param_hint="--run") from None
    generator = keras.saving.load_model(path, compile=False)
    masks = generated_masks(generator, samples, batch_size, seed)
    click.echo(f"{run_dir}: {samples} samples of generator.keras\n{HEADER}\n{row('fake', layering(masks))}")
    if spec is not None:
        cfg = load_config(run_dir / "config.yaml")
        cfg = dataclasses.replace(cfg, data=validation_source(cfg.data, spec))
        dataset = build_eval_dataset(cfg)
        if dataset is None:
            raise click.BadParameter(f"{spec}: no images with ground-truth masks there", param_hint="--data")
        true = np.concatenate([np.asarray(batch["mask"], np.float32) for batch in dataset])
        click.echo(f"{row('true', layering(true))}   ({len(true)} masks of {spec})")
    for message in diagnose_masks(masks):
        click.echo(f"warning: {message}")


if __name__ == "__main__":
    main()
