"""A training run: a directory holding the config, checkpoints, logs, samples and models."""

import logging
from pathlib import Path

import keras

from keras_layered.config import ConfigError
from keras_layered.training.build import build_dataset, build_layered_gan
from keras_layered.training.callbacks import Checkpoint, SampleGrid

log = logging.getLogger("keras_layered")


def epoch_plan(steps, steps_per_epoch):
    """(epochs, steps_per_epoch) covering exactly `steps` generator steps."""
    steps_per_epoch = min(steps_per_epoch, steps)
    if steps % steps_per_epoch:
        raise ConfigError(
            f"train.steps ({steps}) must be a multiple of train.steps_per_epoch ({steps_per_epoch})"
        )
    return steps // steps_per_epoch, steps_per_epoch


def train_gan(cfg, run_dir, verbose="auto"):
    """Trains (or resumes) the layered GAN of `cfg` in `run_dir`; returns the `LayeredGAN`.

    Writes `config.yaml`, `checkpoints/`, `tensorboard/`, `samples/step_*.png` and, at the end,
    `generator.keras` (the EMA generator) and `discriminator.keras`.
    """
    run_dir = Path(run_dir)
    epochs, steps_per_epoch = epoch_plan(cfg.train.steps, cfg.train.steps_per_epoch)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.save(run_dir / "config.yaml")

    gan = build_layered_gan(cfg)
    checkpoint = Checkpoint(run_dir, cfg.train.checkpoint_every)
    done = checkpoint.restore(gan)
    if done:
        log.info("resuming %s from step %d", run_dir, done)
    if done < cfg.train.steps:
        samples = SampleGrid(run_dir, cfg.train.sample_every)
        callbacks = [
            keras.callbacks.TensorBoard(run_dir / "tensorboard", update_freq=50),
            samples,
            checkpoint,
        ]
        gan.fit(
            build_dataset(cfg),
            epochs=epochs,
            initial_epoch=done // steps_per_epoch,
            steps_per_epoch=steps_per_epoch,
            callbacks=callbacks,
            verbose=verbose,
        )
    gan.generator_ema.save(run_dir / "generator.keras")
    gan.discriminator.save(run_dir / "discriminator.keras")
    return gan
