"""Keras callbacks of a training run: image grids, checkpoints, mask-collapse warnings."""

import logging
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from PIL import Image

from keras_layered.training.collapse import diagnose_masks
from keras_layered.training.grid import layer_grid

log = logging.getLogger("keras_layered")


def _step(model):
    # A trainer's main optimizer counts its steps (the generator's, for a LayeredGAN).
    return int(model.optimizer.iterations.numpy())


class SampleGrid(keras.callbacks.Callback):
    """Every `every` steps: a PNG grid in `run_dir/samples/` (small images enlarged to >= 96 px
    tiles so a person can judge them), the same grid in TensorBoard, and a mask-collapse check on
    a larger batch of samples."""

    def __init__(self, run_dir, every, num_rows=8, num_check=64, seed=1234):
        super().__init__()
        self.dir = Path(run_dir) / "samples"
        self.every = every
        self.num_rows, self.num_check, self.seed = num_rows, num_check, seed
        self.writer = tf.summary.create_file_writer(str(Path(run_dir) / "tensorboard" / "samples"))
        self.warnings = []

    def on_train_begin(self, logs=None):
        self.dir.mkdir(parents=True, exist_ok=True)
        # Fixed latents so grids of successive steps are comparable.
        rng = np.random.default_rng(self.seed)
        self.z = rng.standard_normal((self.num_check, self.model.latent_dim)).astype("float32")

    def on_train_batch_end(self, batch, logs=None):
        step = _step(self.model)
        if step % self.every == 0:
            self.write(step)

    def on_train_end(self, logs=None):
        step = _step(self.model)
        if not (self.dir / f"step_{step:06d}.png").exists():
            self.write(step)

    def write(self, step):
        grid = layer_grid(self.model, self.z[: self.num_rows])
        zoom = max(1, 96 // self.model.generator.resolution)
        picture = Image.fromarray(grid)
        picture.resize((picture.width * zoom, picture.height * zoom), Image.NEAREST).save(
            self.dir / f"step_{step:06d}.png"
        )
        with self.writer.as_default():
            tf.summary.image("layers (composite | bg | fg | mask | shifted)", grid[None], step=step)
        masks = keras.ops.convert_to_numpy(self.model(self.z)["mask"])
        for message in diagnose_masks(masks):
            log.warning("step %d: %s", step, message)
            self.warnings.append((step, message))


class Checkpoint(keras.callbacks.Callback):
    """Checkpoints the whole training state (models, EMA, optimizers, RNG) every `every` steps
    and at the end into `directory`, and restores the latest one before training starts.
    `objects(model)` names what to save, e.g. {"gan": model, "g_optimizer": ...}."""

    def __init__(self, directory, every, objects, max_to_keep=2):
        super().__init__()
        self.directory = Path(directory)
        self.every = every
        self.objects = objects
        self.max_to_keep = max_to_keep
        self.manager = None
        self.last_saved = None

    def restore(self, model):
        """Restores the latest checkpoint into `model`; returns the restored step (0 if none)."""
        ckpt = tf.train.Checkpoint(**self.objects(model))
        self.manager = tf.train.CheckpointManager(ckpt, self.directory, self.max_to_keep)
        if self.manager.latest_checkpoint:
            ckpt.restore(self.manager.latest_checkpoint).assert_existing_objects_matched()
        return _step(model)

    def on_train_begin(self, logs=None):
        if self.manager is None:
            self.restore(self.model)

    def on_train_batch_end(self, batch, logs=None):
        step = _step(self.model)
        if step % self.every == 0:
            self.save(step)

    def on_train_end(self, logs=None):
        step = _step(self.model)
        if step != self.last_saved:
            self.save(step)

    def save(self, step):
        self.manager.save(checkpoint_number=step)
        self.last_saved = step
