"""Reliability of training runs: resume after a kill or a signal with nothing lost, a clear stop on
non-finite losses, and reproducible weights on CPU."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner


from keras_layered.config import config_from_dict
from keras_layered.data.synthetic import synthetic_scenes
from keras_layered.training import run as run_module
from keras_layered.training.build import build_dataset, build_layered_gan
from keras_layered.training.callbacks import Checkpoint, NonFiniteLossError, TrainingInterrupted, seed_states

REPO = Path(__file__).resolve().parents[1]
RES, BATCH = 8, 4
MODEL = {"latent_dim": 8, "base_width": 16, "min_width": 8, "d_base_width": 16, "d_min_width": 8}



def tiny_config(**train):
    return config_from_dict({
        "data": {"resolution": RES, "eval_scenes": 8},
        "model": MODEL,
        "loss": {"penalty_every": 2},  # the R1 schedule depends on the restored D step
        "train": {"batch_size": BATCH, "steps": 6, "steps_per_epoch": 3, "checkpoint_every": 4,
                  "sample_every": 100, **train},
        "segment": {"encoder": False, "steps": 4, "steps_per_epoch": 2, "checkpoint_every": 3,
                    "batch_size": BATCH, "unet_width": 4, "unet_depth": 2},
    })


def state(model):
    """Every variable of the training state, in model order: weights, EMA, BatchNorm statistics,
    random-generator states and the optimizers' slots and step counters."""
    optimizers = [o for o in (getattr(model, n, None) for n in ("g_optimizer", "d_optimizer", "unet_optimizer"))
                  if o is not None]
    variables = list(model.variables) + [v for o in optimizers for v in o.variables]
    return [keras.ops.convert_to_numpy(v).copy() for v in variables]


def assert_same_state(a, b):
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b)):
        np.testing.assert_array_equal(x, y, err_msg=f"variable {i}")


def checkpoint_step(directory, counter="g_optimizer"):
    """The latest checkpoint in `directory` and the step stored in it: the count of `counter`, an
    optimizer's or, for "gan" / "trainer", the trainer's own step counter."""
    latest = tf.train.latest_checkpoint(str(directory))
    name = "step" if counter in ("gan", "trainer") else "_iterations"
    step = tf.train.load_variable(latest, f"{counter}/{name}/.ATTRIBUTES/VARIABLE_VALUE") if latest else None
    return latest, step


def signal_at(monkeypatch, step, signum=signal.SIGTERM):
    """Sends `signum` to this process once, at the end of training step `step` (the trainer's
    count), as `kill` would."""
    original = Checkpoint.on_train_batch_end
    sent = []

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.step.numpy()) == step and not sent:
            sent.append(step)
            os.kill(os.getpid(), signum)
        return original(self, batch, logs)

    monkeypatch.setattr(Checkpoint, "on_train_batch_end", on_train_batch_end)
    return lambda: monkeypatch.setattr(Checkpoint, "on_train_batch_end", original)


# --- data position ----------------------------------------------------------------------------------


def test_scene_stream_continues_at_start():
    stream = [b.numpy() for b in synthetic_scenes(RES, BATCH, seed=3).take(3)]
    resumed = [b.numpy() for b in synthetic_scenes(RES, BATCH, seed=3, start=2 * BATCH).take(1)]
    np.testing.assert_array_equal(resumed[0], stream[2])
    assert not np.array_equal(stream[1], stream[2])
    finite = list(synthetic_scenes(RES, BATCH, seed=3, num_scenes=10, start=4, with_masks=True))
    assert [len(b["image"]) for b in finite] == [4, 2]
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="start must be"):
            synthetic_scenes(RES, BATCH, start=bad)


# --- resume ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """6 GAN steps in one go: the state an interrupted and resumed run must reproduce."""
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    gan = run_module.train_gan(tiny_config(), run_dir, verbose=0)
    return state(gan)


@pytest.mark.slow
def test_sigterm_mid_epoch_then_resume_is_bit_identical_to_an_uninterrupted_run(uninterrupted, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    handler_before = signal.getsignal(signal.SIGTERM)
    undo = signal_at(monkeypatch, 5)  # mid-epoch (3 steps each) and off the checkpoint grid (4)
    with pytest.raises(TrainingInterrupted) as info:
        run_module.train_gan(tiny_config(), run_dir, verbose=0)
    undo()
    err = info.value
    assert (err.step, err.signum) == (5, signal.SIGTERM)
    assert str(err) == f"SIGTERM received: saved step 5 to {run_dir / 'checkpoints' / 'ckpt-5'}; " \
                       f"rerun the same command to resume"
    assert signal.getsignal(signal.SIGTERM) is handler_before, "the previous handler is back"
    assert checkpoint_step(run_dir / "checkpoints") == (str(run_dir / "checkpoints" / "ckpt-5"), 5)
    assert not (run_dir / "generator.keras").exists(), "an interrupted stage does not finish"
    # The random generators' states are part of the checkpoint.
    assert sum(name.startswith("rng/") for name, _ in tf.train.list_variables(err.path)) == 4  # z, shift, jitter, mixing

    gan = run_module.train_gan(tiny_config(), run_dir, verbose=0)
    assert int(gan.g_optimizer.iterations.numpy()) == 6 and int(gan.d_optimizer.iterations.numpy()) == 6
    assert checkpoint_step(run_dir / "checkpoints")[1] == 6
    # Same data (resumed at scene 5 x 4), same random draws, same optimizer state: same bits.
    assert_same_state(state(gan), uninterrupted)
    assert sorted(p.name for p in (run_dir / "samples").iterdir()) == ["step_000006.png"]
    assert (run_dir / "generator.keras").is_file()


@pytest.mark.slow
def test_segmentation_stage_resumes_mid_epoch_and_ends_at_its_steps(tmp_path, monkeypatch):
    cfg = tiny_config(steps=2, steps_per_epoch=2)
    reference, run_dir = tmp_path / "reference", tmp_path / "run"
    run_module.train_gan(cfg, reference, verbose=0)
    shutil.copytree(reference, run_dir)
    trainers = []
    original_fit = run_module.fit_steps

    def recording_fit_steps(model, *args, **kwargs):
        trainers.append(model)
        return original_fit(model, *args, **kwargs)

    monkeypatch.setattr(run_module, "fit_steps", recording_fit_steps)
    run_module.train_segmentation(cfg, reference, verbose=0)

    undo = signal_at(monkeypatch, 3)  # checkpoint_every 3, epochs of 2: the save lands mid-epoch
    with pytest.raises(TrainingInterrupted, match="saved step 3"):
        run_module.train_segmentation(cfg, run_dir, verbose=0)
    undo()
    run_module.train_segmentation(cfg, run_dir, verbose=0)
    reference_trainer, _, resumed = trainers
    assert int(resumed.unet_optimizer.iterations.numpy()) == 4, "ends at segment.steps, not past it"
    assert checkpoint_step(run_dir / "checkpoints" / "segmentation", "unet_optimizer") == (
        str(run_dir / "checkpoints" / "segmentation" / "ckpt-4"), 4)
    assert_same_state(state(resumed), state(reference_trainer))


def skip_step(monkeypatch, step):
    """Makes every gradient of training step `step` (from 1, counted in this process) non-finite,
    the loss values staying finite: a float16 loss-scale optimizer skips that step."""
    factor = tf.Variable(1.0, trainable=False)
    batches = []
    apply = keras.optimizers.LossScaleOptimizer.apply
    monkeypatch.setattr(keras.optimizers.LossScaleOptimizer, "apply",
                        lambda self, grads, variables=None: apply(self, [g * factor for g in grads], variables))

    def on_train_batch_begin(self, batch, logs=None):
        batches.append(batch)
        factor.assign(float("inf") if len(batches) == step else 1.0)

    monkeypatch.setattr(Checkpoint, "on_train_batch_begin", on_train_batch_begin, raising=False)
    return batches.clear  # counts from 0 again, for the next run


def recorded_data_starts(monkeypatch):
    starts = []

    def recording(cfg, batch_size=None, start=0):
        starts.append(start)
        return build_dataset(cfg, batch_size, start)

    monkeypatch.setattr(run_module, "build_dataset", recording)
    return starts


@pytest.mark.slow
def test_float16_skipped_step_still_counts_for_checkpoints_data_and_resume(tmp_path, monkeypatch):
    cfg = config_from_dict({**tiny_config().to_dict(), "distribute": {"mixed_precision": "mixed_float16"}})
    starts = recorded_data_starts(monkeypatch)
    restart_count = skip_step(monkeypatch, 2)  # a D step due for the lazy penalty (penalty_every 2) comes after it
    gan = run_module.train_gan(cfg, tmp_path / "uninterrupted", verbose=0)
    assert sorted(p.name for p in (tmp_path / "uninterrupted" / "checkpoints").glob("*.index")) == [
        "ckpt-4.index", "ckpt-6.index"], "numbered by steps run, the skipped one included"
    assert [int(o.iterations.numpy()) for o in (gan.g_optimizer, gan.d_optimizer)] == [5, 5], "one update skipped"
    assert int(gan.step.numpy()) == 6 and float(gan.g_optimizer.dynamic_scale.numpy()) == 2.0**14
    uninterrupted = state(gan)

    run_dir = tmp_path / "run"
    restart_count()
    undo = signal_at(monkeypatch, 5)
    with pytest.raises(TrainingInterrupted, match="saved step 5"):
        run_module.train_gan(cfg, run_dir, verbose=0)
    undo()
    del starts[:]
    gan = run_module.train_gan(cfg, run_dir, verbose=0)
    assert starts == [5 * BATCH], "resumed at the data of step 6"
    assert int(gan.step.numpy()) == 6 and int(gan.g_optimizer.iterations.numpy()) == 5
    assert checkpoint_step(run_dir / "checkpoints", "gan")[1] == 6
    assert_same_state(state(gan), uninterrupted)


def test_second_signal_stops_at_once(tmp_path):
    checkpoint = Checkpoint(tmp_path, 1, lambda m: {})
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        with checkpoint.saving_on_signals(model=None):
            os.kill(os.getpid(), signal.SIGINT)
            assert checkpoint.signum == signal.SIGINT  # the first only asks to stop
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # not reached: the second signal raises
    assert signal.getsignal(signal.SIGINT) is before


# --- non-finite losses and weights ----------------------------------------------------------------


def poison(monkeypatch, batch_index):
    """Training data whose batch number `batch_index` (from scene 0) is all NaN."""

    def poisoned(cfg, batch_size=None, start=0):
        size = batch_size or cfg.train.batch_size
        clean = build_dataset(cfg, batch_size, start)
        nan = tf.constant(float("nan"))
        return clean.enumerate(start // size).map(lambda i, x: tf.where(i == batch_index, x * nan, x))

    monkeypatch.setattr(run_module, "build_dataset", poisoned)


@pytest.mark.slow
def test_poisoned_batch_stops_naming_term_and_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    cfg = tiny_config(steps=6, steps_per_epoch=6, checkpoint_every=2)
    poison(monkeypatch, 2)  # the third batch: step 3
    with pytest.raises(NonFiniteLossError) as info:
        run_module.train_gan(cfg, run_dir, verbose=0)
    err = info.value
    good = str(run_dir / "checkpoints" / "ckpt-2")
    # Logged terms come in name order; a NaN real batch poisons the D loss first.
    assert (err.term, err.step, err.last_good) == ("d_adversarial", 3, good)
    assert re.match(r"d_adversarial is nan at step 3 \(also non-finite: d_loss, [a-z_, ]+\): training stopped",
                    str(err)), str(err)
    assert f"the last good checkpoint, {good}, is kept" in str(err)
    # Nothing of the poisoned state was written: not at step 3, nor at the end of `fit`.
    assert checkpoint_step(run_dir / "checkpoints") == (good, 2)
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("*.index")) == ["ckpt-2.index"]
    assert not (run_dir / "generator.keras").exists()

    monkeypatch.setattr(run_module, "build_dataset", build_dataset)
    gan = run_module.train_gan(cfg, run_dir, verbose=0)  # the rerun resumes from the good state
    assert int(gan.g_optimizer.iterations.numpy()) == 6
    assert all(np.isfinite(w).all() for w in state(gan))


def test_checkpoint_refuses_non_finite_weights(tmp_path):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="dense")])
    model.compile(keras.optimizers.Adam(), "mse")
    model.optimizer.build(model.trainable_variables)
    checkpoint = Checkpoint(tmp_path, 1, lambda m: {"model": m})
    assert checkpoint.restore(model) == 0
    checkpoint.set_model(model)
    checkpoint.save(1)
    model.layers[0].kernel.assign(np.array([[1.0], [np.inf]], "float32"))
    with pytest.raises(NonFiniteLossError, match=r"weight \S*dense/kernel is not finite at step 2") as info:
        checkpoint.save(2)
    assert info.value.last_good == str(tmp_path / "ckpt-1")
    assert tf.train.latest_checkpoint(str(tmp_path)) == str(tmp_path / "ckpt-1")


def dropout_model(seed):
    """A tiny compiled model with one random generator (its Dropout's)."""
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1), keras.layers.Dropout(0.5, seed=seed)])
    model.compile(keras.optimizers.Adam(), "mse")
    model.optimizer.build(model.trainable_variables)
    return model


def test_checkpoint_restores_random_generator_states_and_reads_older_checkpoints(tmp_path, caplog):
    model = dropout_model(seed=1)
    model.optimizer.iterations.assign(3)
    state_variable = model.layers[-1].seed_generator.state
    assert [id(v) for v in seed_states(model)] == [id(state_variable)]
    state_variable.assign([7, 9])
    checkpoint = Checkpoint(tmp_path / "new", 1, lambda m: {"model": m, "optimizer": m.optimizer})
    checkpoint.restore(model)
    checkpoint.set_model(model)
    checkpoint.save(3)
    again = dropout_model(seed=2)
    assert Checkpoint(tmp_path / "new", 1, lambda m: {"model": m, "optimizer": m.optimizer}).restore(again) == 3
    np.testing.assert_array_equal(again.layers[-1].seed_generator.state, [7, 9])

    # A checkpoint written before the random states were saved still restores, with a warning.
    old = tf.train.CheckpointManager(tf.train.Checkpoint(model=model, optimizer=model.optimizer), tmp_path / "old", 1)
    old.save(checkpoint_number=3)
    with caplog.at_level("WARNING", logger="keras_layered"):
        step = Checkpoint(tmp_path / "old", 1, lambda m: {"model": m, "optimizer": m.optimizer}).restore(
            dropout_model(seed=2))
    assert step == 3 and "random draws restart from the seed" in caplog.text


class RandomHolder(keras.layers.Layer):
    """A generator of its own and random layers in a list, a dict and a nested holder."""

    def __init__(self, seed, inner=None, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(1)
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.in_list = [keras.layers.Dense(1), keras.layers.Dropout(0.5, seed=seed + 1)]
        self.in_dict = {"noise": keras.layers.GaussianNoise(0.1, seed=seed + 2)}
        self.inner = inner


def test_seed_states_finds_every_random_generator_in_the_order_of_the_variables():
    inner = RandomHolder(20)
    outer = RandomHolder(10, inner=inner)
    outer.dense.build((None, 2))
    expected = [outer.seed_generator, outer.in_list[1].seed_generator, outer.in_dict["noise"].seed_generator,
                inner.seed_generator, inner.in_list[1].seed_generator, inner.in_dict["noise"].seed_generator]
    states = seed_states(outer)
    assert [id(v) for v in states] == [id(g.state) for g in expected]  # and no kernel or bias


def test_checkpoint_without_a_step_counter_resumes_at_the_optimizers_count(tmp_path):
    old = dropout_model(seed=1)
    old.optimizer.iterations.assign(3)

    def objects(m):
        return {"model": m, "optimizer": m.optimizer}

    tf.train.CheckpointManager(tf.train.Checkpoint(**objects(old)), tmp_path, 1).save(checkpoint_number=3)
    new = dropout_model(seed=1)
    new.step = keras.Variable(0, dtype="int64", trainable=False, name="step")  # as the trainers have
    assert Checkpoint(tmp_path, 1, objects).restore(new) == 3
    assert int(new.step.numpy()) == 3


from keras_layered import cli
TINY_SETS = [f"model.{k}={v}" for k, v in MODEL.items()] + [
    f"data.resolution={RES}", f"train.batch_size={BATCH}", "train.sample_every=1000"]


def cli_args(run_dir, *sets):
    args = ["train", "--stage", "gan", "--out", str(run_dir)]
    for item in [*TINY_SETS, *sets]:
        args += ["--set", item]
    return args


def test_cli_reports_a_non_finite_loss_without_a_traceback(tmp_path):
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(cli.main, cli_args(run_dir, "train.steps=4", "train.steps_per_epoch=4",
                                                   "train.g_lr=1e30", "train.d_lr=1e30"))
    assert result.exit_code == 1, result.output
    assert re.search(r"Error: \w+ is (nan|inf|-inf) at step 1( \(also non-finite: [\w, ]+\))?: training stopped", result.output), result.output
    assert "no checkpoint had been written yet" in result.output and "train.g_lr" in result.output
    assert "Traceback" not in result.output
    assert not list(run_dir.glob("checkpoints/ckpt-*"))


# --- determinism -----------------------------------------------------------------------------------


def test_same_seed_and_config_give_identical_weights_on_cpu():
    cfg = tiny_config()
    states = []
    for _ in range(2):
        gan = build_layered_gan(cfg)
        initial = state(gan)
        gan.fit(build_dataset(cfg), epochs=1, steps_per_epoch=3, verbose=0)
        states.append(state(gan))
    assert_same_state(*states)
    assert sum(not np.array_equal(a, b) for a, b in zip(initial, states[1])) > len(initial) // 2, "it trained"


# --- the CLI in a subprocess, killed ---------------------------------------------------------------


def start_training(run_dir, steps):
    args = cli_args(run_dir, f"train.steps={steps}", "train.steps_per_epoch=20", "train.checkpoint_every=7")
    return subprocess.Popen([sys.executable, "cli.py", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for_a_checkpoint(process, run_dir, timeout=120):
    """Polls until the run has written a checkpoint; fails if the process ends first."""
    deadline = time.monotonic() + timeout
    while tf.train.latest_checkpoint(str(run_dir / "checkpoints")) is None:
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.02)


@pytest.mark.slow
def test_cli_train_killed_with_sigkill_continues_from_its_checkpoint(tmp_path):
    run_dir, steps = tmp_path / "run", 120
    process = start_training(run_dir, steps)
    wait_for_a_checkpoint(process, run_dir)
    process.kill()  # SIGKILL: no handler runs, only what was on disk counts
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    path, saved = checkpoint_step(run_dir / "checkpoints")
    assert 7 <= saved < steps and saved % 7 == 0 and path.endswith(f"ckpt-{saved}")

    again = start_training(run_dir, steps)
    _, stderr = again.communicate(timeout=300)
    assert again.returncode == 0, stderr[-3000:]
    assert f"resuming the GAN stage of {run_dir} from step {saved}" in stderr
    assert checkpoint_step(run_dir / "checkpoints") == (str(run_dir / "checkpoints" / f"ckpt-{steps}"), steps)
    assert int(tf.train.load_variable(str(run_dir / "checkpoints" / f"ckpt-{steps}"),
                                      "d_optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE")) == steps
    assert (run_dir / "generator.keras").is_file()


def generator_weights(run_dir):
    return keras.saving.load_model(run_dir / "generator.keras").get_weights()


@pytest.mark.slow
def test_cli_sigkill_after_a_checkpoint_with_a_grid_on_the_same_step_resumes_bit_identical(tmp_path):
    # The recipe's cadence: a grid (and collapse check) on every checkpoint step, drawn after the save.
    sets = ["train.steps=48", "train.steps_per_epoch=16", "train.checkpoint_every=8", "train.sample_every=8"]
    reference, run_dir = tmp_path / "reference", tmp_path / "run"

    def start(directory):
        return subprocess.Popen([sys.executable, "cli.py", *cli_args(directory, *sets)], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    uninterrupted, killed = start(reference), start(run_dir)
    wait_for_a_checkpoint(killed, run_dir, timeout=600)
    killed.kill()  # right after a checkpoint, whether or not its grid was drawn yet
    killed.communicate(timeout=60)
    _, saved = checkpoint_step(run_dir / "checkpoints")
    assert 8 <= saved < 48, f"killed at step {saved}: not between two checkpoints"
    for process in (uninterrupted, start(run_dir)):
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr[-3000:]
    a, b = generator_weights(reference), generator_weights(run_dir)
    assert len(a) == len(b) > 0
    for i, (x, y) in enumerate(zip(a, b)):
        np.testing.assert_array_equal(x, y, err_msg=f"generator weight {i}")
    # The grids themselves are a function of the weights alone: the resumed run draws the same.
    assert (reference / "samples" / "step_000048.png").read_bytes() == (run_dir / "samples" / "step_000048.png").read_bytes()


@pytest.mark.slow
def test_cli_train_sigterm_saves_the_current_step(tmp_path):
    run_dir = tmp_path / "run"
    process = start_training(run_dir, 100_000)
    wait_for_a_checkpoint(process, run_dir)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    match = re.search(r"SIGTERM received: saved step (\d+) to (\S+); rerun the same command to resume", stderr)
    assert match, stderr[-3000:]
    step, path = int(match.group(1)), match.group(2)
    assert step >= 7 and path == str(run_dir / "checkpoints" / f"ckpt-{step}")
    assert checkpoint_step(run_dir / "checkpoints") == (path, step), "the step it stopped at is the latest"
    assert "Traceback" not in stderr
