"""The EMA generator's BatchNorm statistics: recomputed for its own weights before it is used."""

import json
import subprocess
import sys
import types

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import config_with

from keras_layered.training import run as run_module
from keras_layered.training.build import build_layered_gan
from keras_layered.training.callbacks import seed_states
from keras_layered.training.ema import fixed_latents, recompute_batch_norm_statistics

EPS = 1e-3  # BatchNormalization's default epsilon

TINY = {
    "data": {"resolution": 8},
    "model": {"latent_dim": 8, "base_width": 16, "min_width": 8, "d_base_width": 16, "d_min_width": 8},
    "train": {"batch_size": 4, "g_lr": 1e-3, "d_lr": 1e-3, "ema_decay": 0.5, "ema_bn_batches": 3,
              "steps": 4, "steps_per_epoch": 2, "checkpoint_every": 2, "sample_every": 2},
}


def values(weights):
    return [keras.ops.convert_to_numpy(w).copy() for w in weights]


def dense_then_two_norms():
    """z (B, 1) -> 2 z, -z -> BatchNorm -> BatchNorm: statistics a person can compute."""
    model = keras.Sequential([
        keras.Input((1,)),
        keras.layers.Dense(2, use_bias=False, kernel_initializer=keras.initializers.Constant([[2.0, -1.0]])),
        keras.layers.BatchNormalization(momentum=0.9, name="first"),
        keras.layers.BatchNormalization(momentum=0.9, name="second"),
    ])
    return model


def test_statistics_are_the_mean_of_the_batch_statistics_in_training_mode():
    model = dense_then_two_norms()
    # Batch 1: z = 1, 3 -> (2, -1), (6, -3): mean (4, -2), variance (4, 1).
    # Batch 2: z = 0, 2 -> (0, 0), (4, -2): mean (2, -1), variance (4, 1).
    latents = [np.array([[1.0], [3.0]], "float32"), np.array([[0.0], [2.0]], "float32")]
    assert recompute_batch_norm_statistics(model, latents) == 2
    first, second = model.get_layer("first"), model.get_layer("second")
    np.testing.assert_allclose(first.moving_mean.numpy(), [3.0, -1.5], rtol=1e-6)
    np.testing.assert_allclose(first.moving_variance.numpy(), [4.0, 1.0], rtol=1e-6)
    # The second sees the first normalising with each batch's own statistics (training mode):
    # mean 0, variance v / (v + eps); in inference mode it would see other values.
    np.testing.assert_allclose(second.moving_mean.numpy(), [0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(second.moving_variance.numpy(), [4.0 / (4.0 + EPS), 1.0 / (1.0 + EPS)], rtol=1e-5)
    assert first.momentum == second.momentum == 0.9  # put back


def test_a_model_without_batch_norm_is_not_run():
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(2)])
    assert recompute_batch_norm_statistics(model, [np.zeros((2, 3), "float32")]) == 0  # wrong shape: never called


def test_a_frozen_model_is_refused():
    model = dense_then_two_norms()
    model.trainable = False
    with pytest.raises(ValueError, match="frozen BatchNormalization"):
        recompute_batch_norm_statistics(model, [np.ones((2, 1), "float32")])


def test_fixed_latents_are_the_same_on_every_call_and_standard_normal():
    a, b = fixed_latents(16, 64, 8), fixed_latents(16, 64, 8)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (16, 64, 8) and a.dtype == np.float32
    assert abs(a.mean()) < 0.05 and abs(a.std() - 1.0) < 0.05


def branch_statistics(generator, latents):
    """For each BatchNorm of the generator's two branches, the mean over `latents` of the batch
    mean and (biased) variance of its input, run layer by layer in training mode."""
    stats = {}
    for branch in (generator.background_branch, generator.object_branch):
        for z in latents:
            x = z
            for layer in branch.layers:
                if isinstance(layer, keras.layers.BatchNormalization):
                    h = keras.ops.convert_to_numpy(x).astype("float64")
                    m, v = h.mean(axis=(0, 1, 2)), h.var(axis=(0, 1, 2))
                    stats.setdefault(layer.name, []).append((m, v))
                    gamma, beta = layer.gamma.numpy(), layer.beta.numpy()
                    x = ((h - m) / np.sqrt(v + layer.epsilon) * gamma + beta).astype("float32")
                else:
                    x = layer(x)
    return {name: tuple(np.mean(per_batch, axis=0)) for name, per_batch in stats.items()}


def norms_of(generator):
    return {layer.name: layer for branch in (generator.background_branch, generator.object_branch)
            for layer in branch.layers if isinstance(layer, keras.layers.BatchNormalization)}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A GAN trained a few steps (EMA weights apart from the generator's) and its generator.keras."""
    cfg = config_with(TINY)
    run_dir = tmp_path_factory.mktemp("run")
    gan = run_module.train_gan(cfg, run_dir, verbose=0)
    return types.SimpleNamespace(cfg=cfg, dir=run_dir, gan=gan)


def test_saved_ema_generator_has_the_batch_statistics_of_its_own_weights(trained):
    generator = keras.saving.load_model(trained.dir / "generator.keras")
    latents = fixed_latents(3, 4, 8)  # train.ema_bn_batches batches of train.batch_size
    expected = branch_statistics(generator, latents)
    online = norms_of(trained.gan.generator)
    assert len(expected) == 2
    for name, norm in norms_of(generator).items():
        mean, var = expected[name]
        np.testing.assert_allclose(norm.moving_mean.numpy(), mean, rtol=1e-4, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(norm.moving_variance.numpy(), var, rtol=1e-4, atol=1e-6, err_msg=name)
        # Not the generator's own statistics, which belong to other weights.
        assert np.abs(norm.moving_mean.numpy() - online[name].moving_mean.numpy()).max() > 1e-3


def test_refresh_leaves_the_generator_and_every_random_state_as_they_were(trained):
    gan = trained.gan
    before = values(gan.generator.weights), values(gan.generator_ema.trainable_weights), values(seed_states(gan))
    gan.refresh_ema_statistics()
    after = values(gan.generator.weights), values(gan.generator_ema.trainable_weights), values(seed_states(gan))
    for group_before, group_after in zip(before, after):
        assert len(group_before) == len(group_after)
        for x, y in zip(group_before, group_after):
            np.testing.assert_array_equal(x, y)


def test_refreshed_statistics_during_training_leave_the_training_state_unchanged():
    """A grid in the middle of training (refreshed statistics, then the stand-ins back) changes
    nothing that the steps after it compute: the state equals that of a run without it."""
    data = tf.data.Dataset.from_tensors(np.zeros((4, 8, 8, 3), "float32")).repeat()
    runs = []
    for grid in (False, True):
        gan = build_layered_gan(config_with(TINY))
        gan.fit(data, epochs=1, steps_per_epoch=2, verbose=0)
        if grid:
            stand_ins = values(gan.generator_ema.non_trainable_weights)
            with gan.refreshed_ema_statistics():
                assert any(np.abs(a - b).max() > 0 for a, b in zip(
                    stand_ins, values(gan.generator_ema.non_trainable_weights)))
            for x, y in zip(stand_ins, values(gan.generator_ema.non_trainable_weights)):
                np.testing.assert_array_equal(x, y)
        gan.fit(data, epochs=1, steps_per_epoch=2, verbose=0)
        runs.append(values(gan.variables) + values(gan.g_optimizer.variables) + values(gan.d_optimizer.variables))
    for x, y in zip(*runs):
        np.testing.assert_array_equal(x, y)


def test_zero_batches_keeps_the_generator_statistics():
    gan = build_layered_gan(config_with(TINY, train={"ema_bn_batches": 0}))
    before = values(gan.generator_ema.non_trainable_weights)
    gan.refresh_ema_statistics()
    for x, y in zip(before, values(gan.generator_ema.non_trainable_weights)):
        np.testing.assert_array_equal(x, y)


MIRRORED_CODE = """
import json, os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
os.environ["KERAS_BACKEND"] = "tensorflow"
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from keras_layered import distribute
from keras_layered.config import config_from_dict
from keras_layered.training.build import build_generator, build_layered_gan
from keras_layered.training.ema import fixed_latents, recompute_batch_norm_statistics

cfg = config_from_dict(json.loads(sys.argv[1]))
strategy = distribute.make_strategy("mirrored")
with strategy.scope():
    gan = build_layered_gan(cfg)
images = np.random.default_rng(0).uniform(-1, 1, (8, 8, 8, 3)).astype("float32")
gan.fit(tf.data.Dataset.from_tensor_slices(images).batch(4), epochs=1, verbose=0)
gan.refresh_ema_statistics()
norms = [v for v in gan.generator_ema.non_trainable_weights if "moving" in v.path]
replicas = [[c.numpy() for c in v.value.values] for v in norms]
one_device = build_generator(cfg)
one_device(np.zeros((1, cfg.model.latent_dim), "float32"))
one_device.set_weights([keras.ops.convert_to_numpy(w) for w in gan.generator_ema.weights])
recompute_batch_norm_statistics(one_device, fixed_latents(cfg.train.ema_bn_batches, cfg.train.batch_size,
                                                          cfg.model.latent_dim))
expected = [v.numpy() for v in one_device.non_trainable_weights if "moving" in v.path]
max_diff = max(float(np.abs(c - e).max()) for r, e in zip(replicas, expected) for c in r)
print("RESULT" + json.dumps({"replicas": [len(r) for r in replicas], "max_diff": max_diff}))
"""


@pytest.mark.slow
def test_under_mirrored_strategy_every_replica_gets_the_one_device_statistics(tmp_path):
    cfg = {**TINY, "train": {**TINY["train"], "steps": 2}}
    done = subprocess.run([sys.executable, "-c", MIRRORED_CODE, json.dumps(cfg)], capture_output=True, text=True,
                          timeout=600, check=True)
    result = json.loads(done.stdout.split("RESULT", 1)[1])
    assert result["replicas"] == [2, 2, 2, 2]  # moving mean and variance of two BatchNorms, on 2 replicas
    assert result["max_diff"] < 1e-6
