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
  python cli.py train --config my.yaml --set perturb.max_shift=0 --dry-run"""
)
def main():
    """Unsupervised object segmentation with perturbed layered GANs (Bielski & Favaro, 2019)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("keras_layered").setLevel(logging.INFO)


@main.command(
    epilog="""\b
Writes into --out: config.yaml (the resolved config), checkpoints/, tensorboard/,
samples/step_NNNNNN.png (rows: composite | background | foreground | mask | shifted composite),
generator.keras (EMA generator) and discriminator.keras. Running again on the same --out resumes."""
)
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=str(DEFAULT_CONFIG),
              show_default=True, help="YAML config file.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value, e.g. --set train.steps=500 (repeatable).")
@click.option("--out", "run_dir", type=click.Path(file_okay=False), default="runs/synthetic", show_default=True,
              help="Run directory (created, or resumed if it holds a checkpoint).")
@click.option("--dry-run", is_flag=True, help="Print the resolved config and exit.")
def train(config_path, overrides, run_dir, dry_run):
    """Train the layered GAN on the configured data."""
    try:
        cfg = load_config(config_path, overrides)
    except ConfigError as err:
        raise click.UsageError(str(err)) from err
    if dry_run:
        click.echo(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return
    from keras_layered.training.run import train_gan  # imports TensorFlow: after the cheap checks

    try:
        train_gan(cfg, run_dir)
    except ConfigError as err:
        raise click.UsageError(str(err)) from err
    click.echo(f"done: {run_dir}")


if __name__ == "__main__":
    sys.exit(main())
