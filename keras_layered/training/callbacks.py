"""Keras callbacks of a training run: image grids, mask-collapse warnings, checkpoints that survive
kills, signals and non-finite losses."""

import collections.abc
import contextlib
import logging
import signal
import threading
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from PIL import Image

from keras_layered.training.collapse import diagnose_masks, mask_summary
from keras_layered.training.grid import layer_grid

log = logging.getLogger("keras_layered")


def _step(model):
    # The trainers count every step, float16 ones a loss-scale optimizer skipped too; a plain
    # Keras model, its optimizer's updates.
    counter = getattr(model, "step", None)
    return int((model.optimizer.iterations if counter is None else counter).numpy())


class SampleGrid(keras.callbacks.Callback):
    """Every `every` steps: a PNG grid in `run_dir/samples/` (small images enlarged to >= 96 px
    tiles so a person can judge them), the same grid in TensorBoard, and a mask-collapse check on
    a larger batch of samples; at the end of training also the last step's grid. With
    `final_step`, a `fit` that ends earlier (a resumed run finishing its epoch, an interrupted
    one) writes no end grid."""

    def __init__(self, run_dir, every, num_rows=8, num_check=64, seed=1234, final_step=None):
        super().__init__()
        self.dir = Path(run_dir) / "samples"
        self.every = every
        self.final_step = final_step
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
        if self.final_step is not None and step < self.final_step:
            return
        if not (self.dir / f"step_{step:06d}.png").exists():
            self.write(step)

    def write(self, step):
        # A generator drawing noise at inference (the style one) would advance its random state:
        # put it back, so a grid on a checkpoint step leaves nothing for a resumed run to miss.
        with random_states_kept(self.model), self.model.refreshed_ema_statistics():
            self._write(step)

    def _write(self, step):
        grid = layer_grid(self.model, self.z[: self.num_rows], seed=self.seed)
        zoom = max(1, 96 // self.model.generator.resolution)
        picture = Image.fromarray(grid)
        picture.resize((picture.width * zoom, picture.height * zoom), Image.NEAREST).save(
            self.dir / f"step_{step:06d}.png"
        )
        with self.writer.as_default():
            tf.summary.image("layers (composite | bg | fg | mask | shifted)", grid[None], step=step)
        masks = keras.ops.convert_to_numpy(self.model(self.z)["mask"])
        log.info("step %d: %s", step, mask_summary(masks))
        for message in diagnose_masks(masks):
            log.warning("step %d: %s", step, message)
            self.warnings.append((step, message))


class TrainingInterrupted(Exception):
    """Training stopped on SIGTERM / SIGINT (Ctrl-C) after saving a checkpoint at the current step."""

    def __init__(self, signum, step, path):
        self.signum, self.step, self.path = signum, step, path
        super().__init__(
            f"{signal.Signals(signum).name} received: saved step {step} to {path}; "
            f"rerun the same command to resume"
        )


class NonFiniteLossError(FloatingPointError):
    """A loss term or weight became NaN or infinite; nothing of that state was checkpointed."""

    def __init__(self, term, value, step, last_good, others=()):
        self.term, self.value, self.step, self.last_good = term, value, step, last_good
        kept = (f"the last good checkpoint, {last_good}, is kept and a rerun resumes from it"
                if last_good else "no checkpoint had been written yet")
        also = f" (also non-finite: {', '.join(others)})" if others else ""
        super().__init__(
            f"{term} is {value} at step {step}{also}: training stopped, nothing of this state was saved; {kept}. "
            f"Lower the learning rates (train.g_lr / train.d_lr, segment.lr) or raise the penalty weights "
            f"and rerun the same command."
        )


class Checkpoint(keras.callbacks.Callback):
    """Checkpoints the whole training state (models, EMA, optimizers, step, the models' random
    generators) every `every` steps and at the end into `directory`, and restores the latest one
    before training starts. `objects(model)` names what to save, e.g. {"gan": model, ...}.

    Every step's logged loss terms and, before each save, the model's weights must be finite,
    else `NonFiniteLossError` stops training with the last good checkpoint left as the latest.
    Inside `saving_on_signals()`, SIGTERM and SIGINT make the next batch end save and stop `fit`.
    """

    def __init__(self, directory, every, objects, max_to_keep=2):
        super().__init__()
        self.directory = Path(directory)
        self.every = every
        self.objects = objects
        self.max_to_keep = max_to_keep
        self.manager = None
        self.last_saved = None
        self.signum = None

    def restore(self, model):
        """Restores the latest checkpoint into `model`; returns the restored step (0 if none)."""
        # Keras SeedGenerators are not trackable themselves: their state variables are listed, in
        # the model's (construction) order, so z, shifts and jitter continue their sequences.
        rng = seed_states(model)
        objects = dict(self.objects(model), **({"rng": rng} if rng else {}))
        latest = tf.train.latest_checkpoint(str(self.directory))
        if latest:
            saved = dict(objects)
            names = [name for name, _ in tf.train.list_variables(latest)]
            if rng and not any(name.startswith("rng/") for name in names):
                log.warning("%s predates saved random-generator states: random draws restart from the seed",
                            latest)
                del saved["rng"]
            status = tf.train.Checkpoint(**saved).restore(latest)
            counter = getattr(model, "step", None)
            if counter is not None and not any(name.endswith("/step/.ATTRIBUTES/VARIABLE_VALUE") for name in names):
                # Written before the trainers had their own step counter: the optimizer counted.
                status.expect_partial()
                counter.assign(model.optimizer.iterations)
            else:
                status.assert_existing_objects_matched()
        self.manager = tf.train.CheckpointManager(tf.train.Checkpoint(**objects), self.directory, self.max_to_keep)
        self.last_saved = _step(model) if latest else None
        return _step(model)

    def on_train_begin(self, logs=None):
        if self.manager is None:
            self.restore(self.model)

    def on_train_batch_end(self, batch, logs=None):
        step = _step(self.model)
        bad = [(name, value) for name, value in (logs or {}).items() if not np.all(np.isfinite(value))]
        if bad:
            (name, value), others = bad[0], [name for name, _ in bad[1:]]
            raise NonFiniteLossError(name, value, step, self.manager.latest_checkpoint, others)
        if step % self.every == 0 or self.signum is not None:
            self.save(step)
        if self.signum is not None:
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        self.save(_step(self.model))

    def save(self, step):
        """Saves the state at `step` unless already saved; refuses a non-finite state."""
        if step == self.last_saved:
            return
        for weight in self.model.weights:
            if not np.all(np.isfinite(keras.ops.convert_to_numpy(weight))):
                raise NonFiniteLossError(f"weight {weight.path}", "not finite", step, self.manager.latest_checkpoint)
        # Atomic: TensorFlow writes the files under temporary names and renames them, then
        # rewrites the `checkpoint` index; a kill mid-save leaves the previous one the latest.
        self.manager.save(checkpoint_number=step)
        self.last_saved = step

    @contextlib.contextmanager
    def saving_on_signals(self, model, signums=(signal.SIGTERM, signal.SIGINT)):
        """While active, SIGTERM / SIGINT ask the training of `model` to stop instead of killing the
        process: the next batch end saves the current step and ends `fit`, and leaving raises
        `TrainingInterrupted`. A second signal raises KeyboardInterrupt at once, without saving.
        The previous handlers come back on leaving. Signals are only caught in the main thread."""
        self.signum = None
        previous = {}
        if threading.current_thread() is threading.main_thread():
            previous = {signum: signal.signal(signum, self._on_signal) for signum in signums}
        try:
            yield self
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        if self.signum is not None:
            step = _step(model)
            self.set_model(model)
            self.save(step)  # a signal between or after `fit`s: nothing saved it yet
            raise TrainingInterrupted(self.signum, step, self.manager.latest_checkpoint)

    def _on_signal(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        log.warning("%s received: saving at the end of this step (again to stop at once, unsaved)",
                    signal.Signals(signum).name)


def seed_states(model):
    """The state variables of every `keras.random.SeedGenerator` of `model` and of its layers, in
    the order of `model.variables` (the checkpoint's order: construction order)."""
    states = {id(generator.state) for generator in _seed_generators(model)}
    return [v for v in model.variables if id(v) in states]


def _seed_generators(root):
    """Every SeedGenerator among the attributes of `root` and, recursively, of its layers (also in
    lists, tuples and dicts): found by type, whatever names Keras or the layers give them."""
    found, seen, pending = [], set(), [root]
    while pending:
        value = pending.pop()
        if id(value) in seen:
            continue
        seen.add(id(value))
        if isinstance(value, keras.random.SeedGenerator):
            found.append(value)
        elif isinstance(value, keras.layers.Layer):
            pending.extend(vars(value).values())
        elif isinstance(value, collections.abc.Mapping):
            pending.extend(value.values())
        elif isinstance(value, (list, tuple, set)):
            pending.extend(value)
    return found


@contextlib.contextmanager
def random_states_kept(model):
    """Restores the states of `model`'s random generators on leaving: what runs inside takes no
    random numbers from the sequences training continues with."""
    states = seed_states(model)
    saved = [keras.ops.convert_to_numpy(v).copy() for v in states]
    try:
        yield
    finally:
        for variable, value in zip(states, saved):
            variable.assign(value)
