import shutil
import subprocess
import sys
import textwrap
import types
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from helpers import config_with

from keras_layered.layers import BackgroundContrastJitter, BackgroundMixing, RandomShift, composite
from keras_layered.models.discriminator import Discriminator
from keras_layered.models.layered_generator import LayeredGenerator
from keras_layered.training import run as run_module
from keras_layered.training.build import build_layered_gan
from keras_layered.training.grid import COLUMNS
from keras_layered.training.layered_gan import LayeredGAN

RES, LATENT, BATCH = 8, 8, 4

TINY = {
    "data": {"resolution": RES},
    "model": {"latent_dim": LATENT, "base_width": 16, "min_width": 8, "d_base_width": 16, "d_min_width": 8},
    "loss": {"penalty_every": 1},
    "train": {"batch_size": BATCH, "g_lr": 1e-3, "d_lr": 1e-3, "seed": 0},
}


def tiny_config(**sections):
    """TINY with some sections' keys overridden, e.g. tiny_config(loss={"adversarial": "wgan_gp"})."""
    return config_with(TINY, **sections)


def real_batch(seed=0, resolution=RES):
    return np.random.default_rng(seed).uniform(-1, 1, (BATCH, resolution, resolution, 3)).astype("float32")


def real_dataset():
    return tf.data.Dataset.from_tensors(real_batch()).repeat()


def fit_one_step(gan):
    return gan.fit(real_dataset(), epochs=1, steps_per_epoch=1, verbose=0).history


PERTURBATIONS = {
    "shift": lambda: RandomShift(0.25, seed=5),
    "jitter": lambda: BackgroundContrastJitter(0.3, seed=5),
    "mixing": lambda: BackgroundMixing(0.5, seed=5),
}


@pytest.mark.parametrize("kind", sorted(PERTURBATIONS))
def test_perturbations_are_built_with_their_random_state_before_any_call(kind, tmp_path):
    # Built at construction, else `fit` under tf.distribute calls the trainer holding them on a
    # data batch to build them, which it cannot take.
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no Keras warning at construction or call
        trained, fresh = PERTURBATIONS[kind](), PERTURBATIONS[kind]()
        assert fresh.built
        # Its random state is its variable from the start, so a checkpoint restores it before
        # the first call and the draws continue where they stopped.
        assert [id(v) for v in fresh.variables] == [id(fresh.seed_generator.state)]
        x = np.random.default_rng(0).uniform(-1, 1, (16, RES, RES, 3)).astype("float32")
        first = keras.ops.convert_to_numpy(trained(x, training=True))
        path = tf.train.Checkpoint(rng=trained.variables).write(str(tmp_path / "rng"))
        tf.train.Checkpoint(rng=fresh.variables).read(path).assert_consumed()
        second = keras.ops.convert_to_numpy(trained(x, training=True))
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(fresh(x, training=True)), second)
    assert not np.array_equal(first, second)


def values(weights):
    return [keras.ops.convert_to_numpy(w).copy() for w in weights]


def snapshot(gan):
    return {
        "g": values(gan.generator.trainable_weights),
        "g_nt": values(gan.generator.non_trainable_weights),
        "d": values(gan.discriminator.trainable_weights),
        "ema": values(gan.generator_ema.trainable_weights),
        "ema_nt": values(gan.generator_ema.non_trainable_weights),
    }


def changed(before, after):
    return [not np.array_equal(b, a) for b, a in zip(before, after)]


def latents(n, seed=5):
    return np.random.default_rng(seed).standard_normal((n, LATENT)).astype("float32")


def make_gan(resolution=RES, **kwargs):
    """A LayeredGAN built directly from tiny models (not compiled)."""
    generator = LayeredGenerator(resolution=resolution, latent_dim=LATENT, base_width=16, min_width=8)
    discriminator = Discriminator(resolution=resolution, base_width=16, min_width=8)
    return LayeredGAN(generator, discriminator, **kwargs)


@pytest.fixture(scope="module")
def trained():
    """A tiny GAN from the config builder, before and after one `fit` step."""
    gan = build_layered_gan(tiny_config())
    before = snapshot(gan)
    history = fit_one_step(gan)
    return types.SimpleNamespace(gan=gan, before=before, after=snapshot(gan), history=history)


# --- one training step -------------------------------------------------------------------------


def test_fit_step_updates_generator_and_discriminator(trained):
    assert all(changed(trained.before["g"], trained.after["g"])), "every generator weight gets a gradient"
    assert all(changed(trained.before["d"], trained.after["d"])), "every discriminator weight gets a gradient"
    assert int(trained.gan.g_optimizer.iterations.numpy()) == 1
    assert int(trained.gan.d_optimizer.iterations.numpy()) == 1


def test_fit_step_leaves_nothing_nan(trained):
    for group, weights in trained.after.items():
        for w in weights:
            assert np.all(np.isfinite(w)), group
    for name, logged in trained.history.items():
        assert np.all(np.isfinite(logged)), name


def test_fit_history_has_every_tracker(trained):
    assert set(trained.gan.trackers) <= set(trained.history)
    assert {m.name for m in trained.gan.metrics} == set(trained.gan.trackers)
    assert all(len(trained.history[name]) == 1 for name in trained.gan.trackers)
    # A nonsaturating step with penalty_every=1 pays the R1 penalty, and d_loss includes it.
    h = {name: trained.history[name][0] for name in trained.gan.trackers}
    assert h["d_penalty"] > 0
    assert h["d_loss"] == pytest.approx(h["d_adversarial"] + h["d_penalty"], rel=1e-5)
    assert 0.0 <= h["mask_mean"] <= 1.0


def test_ema_starts_as_a_copy_of_the_generator(trained):
    for ema, g in zip(trained.before["ema"], trained.before["g"]):
        np.testing.assert_array_equal(ema, g)


def test_ema_value_after_one_step(trained):
    # _update_ema runs after the generator update, so it sees g_optimizer.iterations == 1.
    step = 1.0
    decay = min(trained.gan.ema_decay, (1.0 + step) / (10.0 + step))
    assert decay == pytest.approx(2.0 / 11.0)
    for ema0, ema1, w1 in zip(trained.before["ema"], trained.after["ema"], trained.after["g"]):
        np.testing.assert_allclose(ema1, decay * ema0 + (1.0 - decay) * w1, rtol=1e-5, atol=1e-6)
    # BatchNormalization statistics are copied, not averaged.
    assert trained.after["ema_nt"], "the batch-norm generator has moving statistics"
    for ema, g in zip(trained.after["ema_nt"], trained.after["g_nt"]):
        np.testing.assert_array_equal(ema, g)


def test_ema_moves_towards_the_generator(trained):
    def norm(arrays):
        return np.sqrt(sum(float(np.sum(np.square(a))) for a in arrays))

    b, a = trained.before, trained.after
    ema_change = norm([e1 - e0 for e0, e1 in zip(b["ema"], a["ema"])])
    g_change = norm([w1 - w0 for w0, w1 in zip(b["g"], a["g"])])
    assert 0.0 < ema_change < g_change
    gap_before = norm([w1 - e0 for e0, w1 in zip(b["ema"], a["g"])])
    gap_after = norm([w1 - e1 for e1, w1 in zip(a["ema"], a["g"])])
    assert gap_after < gap_before


def test_call_returns_the_ema_generator_output(trained):
    z = latents(3)
    out = trained.gan(z)
    ema = trained.gan.generator_ema(z, training=False)
    raw = trained.gan.generator(z, training=False)
    for key in ("background", "foreground", "mask"):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(out[key]), keras.ops.convert_to_numpy(ema[key]))
    assert not np.allclose(keras.ops.convert_to_numpy(out["background"]), keras.ops.convert_to_numpy(raw["background"]))


def test_wgan_gp_runs_a_step():
    gan = build_layered_gan(tiny_config(loss={"adversarial": "wgan_gp"}))
    before = snapshot(gan)
    history = fit_one_step(gan)
    after = snapshot(gan)
    assert set(gan.trackers) <= set(history)
    for name in gan.trackers:
        assert np.all(np.isfinite(history[name])), name
    assert history["d_penalty"][0] > 0
    assert all(changed(before["g"], after["g"]))
    assert all(changed(before["d"], after["d"]))
    for group in ("g", "d", "ema"):
        assert all(np.all(np.isfinite(w)) for w in after[group]), group


def test_train_on_batch_accepts_a_plain_image_batch():
    # Keras' train_on_batch(x) hands train_step the tuple (x, None, None).
    gan = build_layered_gan(tiny_config())
    logs = gan.train_on_batch(real_batch(), return_dict=True)
    assert set(gan.trackers) <= set(logs)
    assert int(gan.g_optimizer.iterations.numpy()) == 1


def r1_expected(gan, real, gamma, every):
    """The lazily weighted R1 penalty of the current discriminator at `real`, computed independently."""
    x = tf.constant(real)
    with tf.GradientTape() as tape:
        tape.watch(x)
        total = tf.reduce_sum(gan.discriminator(x, training=True))
    grads = tape.gradient(total, x).numpy()
    return every * 0.5 * gamma * float(np.mean(np.sum(grads**2, axis=(1, 2, 3))))


def test_penalty_every_applies_penalty_on_due_steps_only():
    gan = build_layered_gan(tiny_config(loss={"penalty_every": 2, "r1_gamma": 5.0}))
    penalties, losses = [], []
    for step in range(3):
        expected = r1_expected(gan, real_batch(), 5.0, 2) if step % 2 == 0 else 0.0
        assert int(gan.d_optimizer.iterations.numpy()) == step
        history = fit_one_step(gan)  # `fit` resets the trackers, so each history holds one step
        penalties.append(history["d_penalty"][0])
        losses.append((history["d_loss"][0], history["d_adversarial"][0]))
        assert penalties[-1] == pytest.approx(expected, rel=1e-4, abs=1e-7), f"step {step}"
    assert penalties[0] > 0 and penalties[1] == 0.0 and penalties[2] > 0
    assert losses[1][0] == pytest.approx(losses[1][1], rel=1e-6)  # no penalty in d_loss on the off step


def test_d_step_alone_changes_only_the_discriminator():
    gan = build_layered_gan(tiny_config())
    before = snapshot(gan)
    terms = tf.function(lambda real: gan._d_step(real, gan.fakes(tf.shape(real)[0]), 0))(tf.constant(real_batch()))
    after = snapshot(gan)
    assert np.isfinite(float(terms["d_loss"]))
    assert all(changed(before["d"], after["d"]))
    assert not any(changed(before["g"], after["g"])), "the D step must not update generator weights"
    assert not any(changed(before["ema"], after["ema"]))
    assert int(gan.d_optimizer.iterations.numpy()) == 1
    assert int(gan.g_optimizer.iterations.numpy()) == 0


def test_optimizers_own_their_network_variables():
    gan = build_layered_gan(tiny_config())
    g_ids = {id(v) for v in gan.generator.trainable_variables}
    d_ids = {id(v) for v in gan.discriminator.trainable_variables}
    assert g_ids.isdisjoint(d_ids)
    assert gan.optimizer is gan.g_optimizer
    # One Adam slot pair (m, v) per variable of the network each optimizer was built for.
    assert len(gan.d_optimizer.variables) == 2 + 2 * len(d_ids)  # + iterations, learning rate
    assert len(gan.g_optimizer.variables) == 2 + 2 * len(g_ids)


# --- the perturbation ----------------------------------------------------------------------------


def random_layers(seed, resolution):
    rng = np.random.default_rng(seed)
    return {
        "background": rng.uniform(-1, 1, (BATCH, resolution, resolution, 3)).astype("float32"),
        "foreground": rng.uniform(-1, 1, (BATCH, resolution, resolution, 3)).astype("float32"),
        "mask": rng.uniform(0, 1, (BATCH, resolution, resolution, 1)).astype("float32"),
    }


def test_perturb_and_composite_without_shift_is_the_plain_composite():
    gan = make_gan(max_shift=0.0, seed=3)
    layers = random_layers(0, RES)
    out = keras.ops.convert_to_numpy(gan.perturb_and_composite(layers))
    expected = keras.ops.convert_to_numpy(composite(layers["background"], layers["foreground"], layers["mask"]))
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-7)
    np.testing.assert_allclose(
        out, layers["background"] * (1 - layers["mask"]) + layers["foreground"] * layers["mask"], atol=1e-6)


def test_perturb_and_composite_shifts_foreground_and_mask_but_not_background():
    res, value = 16, 0.5
    gan = make_gan(resolution=res, max_shift=0.25, seed=3)  # offsets in [-4, 4] px
    rng = np.random.default_rng(1)
    background = rng.uniform(-1, 1, (8, res, res, 3)).astype("float32")
    square = np.zeros((8, res, res, 1), "float32")
    square[:, 6:10, 6:10] = 1.0  # a 4x4 object that stays inside the frame under any allowed shift
    # The foreground is `value` on the object and something else around it: if foreground and
    # mask moved apart, composited pixels would not all equal `value`.
    foreground = np.where(square > 0, value, -0.3).astype("float32").repeat(3, axis=-1)
    out = keras.ops.convert_to_numpy(
        gan.perturb_and_composite({"background": background, "foreground": foreground, "mask": square}))

    moved = 0
    for i in range(8):
        is_object = np.all(out[i] == value, axis=-1)
        rows, cols = np.nonzero(is_object)
        assert is_object.sum() == 16, f"sample {i}: the whole object survives the shift"
        top, left = rows.min(), cols.min()
        assert rows.max() - top == 3 and cols.max() - left == 3, f"sample {i}: still a 4x4 square"
        assert abs(top - 6) <= 4 and abs(left - 6) <= 4, f"sample {i}: shift within max_shift"
        moved += (top, left) != (6, 6)
        # Where the shifted mask is 0 the composite is exactly the unshifted background.
        np.testing.assert_array_equal(out[i][~is_object], background[i][~is_object], err_msg=f"sample {i}")
    assert moved >= 4, "most samples get a non-zero offset"


def test_background_mixing_composites_over_the_next_samples_background():
    # With the mask 0 everywhere the composite is the background alone, so its rows say which
    # sample's background they show.
    layers = random_layers(0, RES)
    layers["mask"] = np.zeros_like(layers["mask"])
    shared = keras.ops.convert_to_numpy(make_gan(max_shift=0.0, seed=3).perturb_and_composite(layers))
    np.testing.assert_array_equal(shared, layers["background"])
    mixed = keras.ops.convert_to_numpy(make_gan(max_shift=0.0, background_mixing=1.0, seed=3)
                                       .perturb_and_composite(layers))
    np.testing.assert_array_equal(mixed, np.roll(layers["background"], -1, axis=0))


def test_background_mixing_from_the_config():
    assert build_layered_gan(tiny_config(perturb={"background_mixing": 0.5})).mixing.rate == 0.5
    assert build_layered_gan(tiny_config()).mixing.rate == 0.0


def test_unknown_adversarial_loss_raises():
    with pytest.raises(ValueError, match="adversarial_loss") as info:
        make_gan(adversarial_loss="hinge")
    assert "'hinge'" in str(info.value)


# --- export ----------------------------------------------------------------------------------------


def test_saved_models_load_with_identical_outputs(trained, tmp_path):
    gan = trained.gan
    gan.generator_ema.save(tmp_path / "generator.keras")
    gan.discriminator.save(tmp_path / "discriminator.keras")
    generator = keras.saving.load_model(tmp_path / "generator.keras")
    discriminator = keras.saving.load_model(tmp_path / "discriminator.keras")
    assert isinstance(generator, LayeredGenerator) and isinstance(discriminator, Discriminator)

    z, x = latents(4, seed=9), real_batch(seed=9)
    expected, actual = gan.generator_ema(z, training=False), generator(z, training=False)
    for key in ("background", "foreground", "mask"):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(actual[key]),
                                      keras.ops.convert_to_numpy(expected[key]), err_msg=key)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(discriminator(x)),
                                  keras.ops.convert_to_numpy(gan.discriminator(x)))

    # A fresh interpreter needs only `import keras_layered`, no custom_objects.
    np.save(tmp_path / "z.npy", z)
    np.save(tmp_path / "x.npy", x)
    script = textwrap.dedent(f"""
        import os
        os.environ["KERAS_BACKEND"] = "tensorflow"
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
        import keras, numpy as np
        import keras_layered
        d = {str(tmp_path)!r}
        g = keras.saving.load_model(d + "/generator.keras")
        D = keras.saving.load_model(d + "/discriminator.keras")
        np.save(d + "/mask.npy", keras.ops.convert_to_numpy(g(np.load(d + "/z.npy"), training=False)["mask"]))
        np.save(d + "/logits.npy", keras.ops.convert_to_numpy(D(np.load(d + "/x.npy"))))
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    np.testing.assert_array_equal(np.load(tmp_path / "mask.npy"), keras.ops.convert_to_numpy(expected["mask"]))
    np.testing.assert_array_equal(np.load(tmp_path / "logits.npy"),
                                  keras.ops.convert_to_numpy(gan.discriminator(x)))


def check_grid_png(png, rows, resolution):
    """The PNG is the (rows*H, 5*W) grid of grid.layer_grid, enlarged by a whole factor (nearest
    neighbour) so that small tiles are at least 96 px; column 3 is the grey mask."""
    with Image.open(png) as image:
        assert image.mode == "RGB"
        pixels = np.asarray(image)
    height, width, _ = pixels.shape
    zoom = width // (len(COLUMNS) * resolution)
    assert zoom >= 1
    assert (height, width) == (rows * resolution * zoom, len(COLUMNS) * resolution * zoom)
    assert resolution * zoom >= 96, "small samples are enlarged to tiles of at least 96 px"
    grid = pixels[::zoom, ::zoom]
    np.testing.assert_array_equal(np.repeat(np.repeat(grid, zoom, axis=0), zoom, axis=1), pixels)
    mask_column = grid[:, 3 * resolution:4 * resolution]
    assert np.all(mask_column[..., 0] == mask_column[..., 1]) and np.all(mask_column[..., 1] == mask_column[..., 2])
    background_column = grid[:, resolution:2 * resolution]
    assert not np.all(background_column[..., 0] == background_column[..., 1])


# --- train_gan: run directory, checkpoints, resume -------------------------------------------------

RUN = {"steps": 4, "steps_per_epoch": 2, "checkpoint_every": 2, "sample_every": 2}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    cfg = tiny_config(train=RUN)
    gan = run_module.train_gan(cfg, run_dir, verbose=0)
    return types.SimpleNamespace(cfg=cfg, dir=run_dir, gan=gan, state=snapshot(gan),
                                 d_iterations=int(gan.d_optimizer.iterations.numpy()))


def test_train_gan_writes_the_run_directory(first_run):
    run_dir, gan = first_run.dir, first_run.gan
    assert int(gan.g_optimizer.iterations.numpy()) == 4
    assert first_run.d_iterations == 4

    checkpoints = run_dir / "checkpoints"
    assert (checkpoints / "ckpt-2.index").is_file() and (checkpoints / "ckpt-4.index").is_file()
    assert (checkpoints / "checkpoint").is_file()

    for step in (2, 4):
        png = run_dir / "samples" / f"step_{step:06d}.png"
        assert png.is_file(), png
        check_grid_png(png, rows=8, resolution=RES)
    assert sorted(p.name for p in (run_dir / "samples").iterdir()) == ["step_000002.png", "step_000004.png"]
    assert list((run_dir / "tensorboard").rglob("events.out.tfevents*")), "TensorBoard event files"

    generator = keras.saving.load_model(run_dir / "generator.keras")
    discriminator = keras.saving.load_model(run_dir / "discriminator.keras")
    for loaded, saved in zip(generator.weights, gan.generator_ema.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded), keras.ops.convert_to_numpy(saved))
    for loaded, saved in zip(discriminator.weights, gan.discriminator.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded), keras.ops.convert_to_numpy(saved))
    # The exported generator is the EMA one, not the raw generator.
    assert any(changed(values(generator.trainable_weights), first_run.state["g"]))


@pytest.mark.slow
def test_train_gan_resumes_from_the_latest_checkpoint(first_run, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    shutil.copytree(first_run.dir, run_dir)
    restored = {}
    original_restore = run_module.Checkpoint.restore

    def recording_restore(self, model):
        step = original_restore(self, model)
        restored.update(step=step, state=snapshot(model),
                        d_iterations=int(model.d_optimizer.iterations.numpy()))
        return step

    monkeypatch.setattr(run_module.Checkpoint, "restore", recording_restore)
    gan = run_module.train_gan(tiny_config(train={**RUN, "steps": 6}), run_dir, verbose=0)

    assert restored["step"] == 4
    assert restored["d_iterations"] == 4
    # The EMA generator's BatchNorm statistics in a checkpoint are the generator's stand-ins; the
    # run recomputed its own for generator.keras after saving it.
    for group, saved_group in (("g", "g"), ("g_nt", "g_nt"), ("d", "d"), ("ema", "ema"), ("ema_nt", "g_nt")):
        for at_resume, saved in zip(restored["state"][group], first_run.state[saved_group]):
            np.testing.assert_array_equal(at_resume, saved, err_msg=group)

    assert int(gan.g_optimizer.iterations.numpy()) == 6
    assert int(gan.d_optimizer.iterations.numpy()) == 6
    assert any(changed(first_run.state["g"], snapshot(gan)["g"])), "the resumed run trains on"
    assert (run_dir / "checkpoints" / "ckpt-6.index").is_file()
    assert (run_dir / "samples" / "step_000006.png").is_file()


def test_train_gan_with_all_steps_done_trains_no_further(first_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(first_run.dir, run_dir)
    gan = run_module.train_gan(first_run.cfg, run_dir, verbose=0)
    assert int(gan.g_optimizer.iterations.numpy()) == 4
    for now, saved in zip(snapshot(gan)["ema"], first_run.state["ema"]):
        np.testing.assert_array_equal(now, saved)


@pytest.mark.parametrize("generator", ["dcgan", "style"])
def test_sample_grids_take_no_random_numbers_from_training(generator, tmp_path):
    from keras_layered.training.callbacks import SampleGrid, seed_states

    gan = build_layered_gan(tiny_config(model={"generator": generator, "mapping_layers": 2},
                                        perturb={"bg_contrast_jitter": 0.3}))
    grids = SampleGrid(tmp_path, every=1, num_check=4)
    grids.set_model(gan)
    grids.on_train_begin()
    before = values(seed_states(gan))
    assert len(before) == 4 + (generator == "style") * 2  # z, shift, jitter, mixing (+ each style generator's noise)
    grids.write(1)
    grids.write(2)
    for a, b in zip(before, values(seed_states(gan))):
        np.testing.assert_array_equal(a, b)
    # Same weights, same grid: the shifted column's draws are the grid's own, fixed ones.
    assert (tmp_path / "samples" / "step_000001.png").read_bytes() == (tmp_path / "samples" / "step_000002.png").read_bytes()
    grid = np.asarray(Image.open(tmp_path / "samples" / "step_000001.png"))[::96 // RES, ::96 // RES]
    assert not np.array_equal(grid[:, :RES], grid[:, 4 * RES:]), "the last column is perturbed"


def linear_float16_gan(gain):
    """A LayeredGAN under mixed_float16 whose D(x) = gain * sum(w * x): the sum in float16, the
    gain in float32; every input's gradient is gain * w."""
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    w = np.linspace(0.005, 0.02, RES * RES * 3).astype("float32")
    discriminator = keras.Sequential([
        keras.Input((RES, RES, 3)), keras.layers.Flatten(),
        keras.layers.Dense(1, use_bias=False, kernel_initializer=keras.initializers.Constant(w[:, None])),
        keras.layers.Rescaling(gain, dtype="float32"),
    ])
    gan = LayeredGAN(LayeredGenerator(resolution=RES, latent_dim=LATENT, base_width=16, min_width=8),
                     discriminator, r1_gamma=5.0, penalty_every=4)
    gan.compile(g_optimizer=keras.optimizers.Adam(), d_optimizer=keras.optimizers.Adam())
    assert isinstance(gan.d_optimizer, keras.optimizers.LossScaleOptimizer)
    return gan, w


def test_float16_penalty_gradient_is_loss_scaled_so_it_does_not_underflow():
    # gain * w is 5e-9 .. 2e-8, below float16's smallest positive number (6e-8): unscaled, the
    # float16 gradient is exactly 0; scaled by the D optimizer's 2^15 it is a normal float16.
    gan, w = linear_float16_gan(1e-6)
    real = tf.constant(real_batch())
    penalty, overflow = gan._lazy_penalty(real, real)
    expected = 4 * 0.5 * 5.0 * float(np.sum((1e-6 * w.astype("float64")) ** 2))  # penalty_every x R1
    assert not bool(overflow)
    assert float(penalty) == pytest.approx(expected, rel=1e-2)


def test_float16_penalty_gradient_overflow_skips_the_d_step():
    gan, _ = linear_float16_gan(1e4)  # 1e4 x 2^15 overflows float16
    before = values(gan.discriminator.trainable_weights)
    real = tf.constant(real_batch())
    terms = tf.function(lambda: gan._d_step(real, real, 0))()
    assert float(terms["d_penalty"]) == 0.0 and np.isfinite(float(terms["d_loss"])), "logged finite"
    assert not any(changed(before, values(gan.discriminator.trainable_weights))), "step skipped"
    assert float(gan.d_optimizer.dynamic_scale.numpy()) == 2.0**14, "the loss scale lowered"
