"""Distribution and precision: strategies, per-replica random draws, MirroredStrategy against one
device, mixed precision. Multi-device runs use 2 logical CPU devices in a subprocess (they must be
configured before TensorFlow initialises its devices); no GPU is needed."""

import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_layered import distribute
from helpers import config_with

from keras_layered.config import choices
from keras_layered.training.build import build_layered_gan, build_segmentation_trainer

RES, LATENT, BATCH = 8, 8, 4

TINY = {
    "data": {"resolution": RES},
    "model": {"latent_dim": LATENT, "base_width": 16, "min_width": 8, "d_base_width": 16, "d_min_width": 8},
    "loss": {"penalty_every": 2},
    "train": {"batch_size": BATCH, "g_lr": 1e-3, "d_lr": 1e-3, "seed": 0},
    "segment": {"batch_size": BATCH, "encoder_base_width": 16, "encoder_min_width": 8, "unet_width": 4,
                "unet_depth": 2},
}

# A GAN stage of 2 steps (TINY keeps the recipe's 4000): for tests of what a run records.
SHORT_RUN = {**TINY["train"], "steps": 2, "steps_per_epoch": 2, "sample_every": 2, "checkpoint_every": 2,
             "ema_bn_batches": 1}


def tiny_config(**sections):
    """TINY with some sections' keys overridden, e.g. tiny_config(loss={"adversarial": "wgan_gp"})."""
    return config_with(TINY, **sections)


def real_dataset():
    images = np.random.default_rng(0).uniform(-1, 1, (BATCH, RES, RES, 3)).astype("float32")
    return tf.data.Dataset.from_tensors(images).repeat()


def numpy_weights(model):
    return [keras.ops.convert_to_numpy(w).copy() for w in model.weights]


# --- strategies ----------------------------------------------------------------------------------


def test_every_configured_precision_resolves_to_a_dtype_policy():
    # distribute.PRECISIONS is the config's list: every option it allows must be one this module sets.
    for name in choices("distribute.mixed_precision"):
        assert distribute.resolve_precision(name) in ("none", "mixed_float16", "mixed_bfloat16"), name


def test_default_and_auto_strategies_on_this_machine():
    assert distribute.make_strategy("default") is tf.distribute.get_strategy()
    assert distribute.make_strategy("default").num_replicas_in_sync == 1
    auto = distribute.make_strategy("auto")
    if len(tf.config.list_physical_devices("GPU")) > 1:
        assert isinstance(auto, tf.distribute.MirroredStrategy)
    else:
        assert auto is tf.distribute.get_strategy()
    assert distribute.make_strategy("auto") is auto, "one strategy per process"


def test_bad_strategy_names_and_missing_tf_config(monkeypatch):
    with pytest.raises(ValueError, match="distribute.strategy must be one of"):
        distribute.make_strategy("tpu")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="TF_CONFIG"):
        distribute.make_strategy("multi_worker")
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {}, "task": {"type": "worker", "index": 0}}))
    with pytest.raises(ValueError, match="cluster.worker"):
        distribute.make_strategy("multi_worker")


def test_one_device_draws_are_plain_keras_draws():
    # The single-device path draws exactly what keras.random draws: runs before multi-replica
    # support keep their random streams.
    a, b = keras.random.SeedGenerator(7), keras.random.SeedGenerator(7)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(distribute.normal((5, 3), a)),
                                  keras.ops.convert_to_numpy(keras.random.normal((5, 3), seed=b)))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(distribute.uniform((5, 2), a, -1.0, 2.0)),
                                  keras.ops.convert_to_numpy(keras.random.uniform((5, 2), -1.0, 2.0, seed=b)))


# --- MirroredStrategy on 2 logical CPU devices against one device ---------------------------------

MIRRORED_CODE = textwrap.dedent(
    """
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
    from keras_layered.training.build import build_generator, build_layered_gan, build_segmentation_trainer

    cfg = config_from_dict(json.loads(sys.argv[1]))
    out, steps, batch, res = sys.argv[2], 3, cfg.train.batch_size, cfg.data.resolution
    images = np.random.default_rng(0).uniform(-1, 1, (steps * batch, res, res, 3)).astype("float32")


    class StepLogs(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.logs = []

        def on_train_batch_end(self, batch, logs=None):
            self.logs.append({k: float(v) for k, v in logs.items()})


    def fit(model):
        record = StepLogs()
        model.fit(tf.data.Dataset.from_tensor_slices(images).batch(batch), epochs=1, verbose=0, callbacks=[record])
        return record.logs


    def values(weights):
        return [keras.ops.convert_to_numpy(w) for w in weights]


    result, arrays = {}, {}
    for name in ("default", "mirrored"):
        strategy = distribute.make_strategy(name)
        with strategy.scope():
            gan = build_layered_gan(cfg)
            keras.utils.set_random_seed(1)
            generator = build_generator(cfg)
            generator(np.zeros((1, cfg.model.latent_dim), np.float32))  # built, as loaded from generator.keras
            for w in generator.weights:  # style generator: its noise on, as in a trained one (zero at init)
                if "noise_strength" in w.path:
                    w.assign(np.full(w.shape, 0.5, np.float32))
            trainer = build_segmentation_trainer(cfg, generator)
        result[name] = {"replicas": strategy.num_replicas_in_sync, "gan": fit(gan), "segment": fit(trainer)}
        for key, weights in (("g", gan.generator.weights), ("d", gan.discriminator.weights),
                             ("ema", gan.generator_ema.weights), ("encoder", trainer.encoder.weights),
                             ("unet", trainer.unet.weights)):
            for i, w in enumerate(values(weights)):
                arrays[f"{name}/{key}/{i}"] = w
    np.savez(out, **arrays)
    print("RESULT" + json.dumps(result))
    """
)


@pytest.mark.slow
def test_mirrored_strategy_on_two_devices_matches_one_device(tmp_path):
    """One epoch (3 steps, global batch 4) of the GAN and of the segmentation stage (encoder + U-Net)
    under MirroredStrategy on 2 logical CPUs gives the losses and weights of the same run on one
    device: the global batch's latents and shifts are split over the replicas, each replica's mean
    loss counts 1/2, gradients are summed. Without BatchNorm in the generator (norm=none): BN would
    normalise each replica's half-batch with its own statistics. The lazy R1 penalty (due on steps
    1 and 3) and the EMA update (in each replica's context) are part of the comparison."""
    single, mirrored, arrays = run_one_device_and_mirrored(tiny_config(model={"norm": "none"}), tmp_path)
    for stage in ("gan", "segment"):
        assert_same_logs(single[stage], mirrored[stage], stage)
    assert single["gan"][0]["d_penalty"] > 0 and single["gan"][1]["d_penalty"] < single["gan"][0]["d_penalty"]
    names = [k.split("/", 1)[1] for k in arrays.files if k.startswith("default/")]
    assert {n.split("/")[0] for n in names} == {"g", "d", "ema", "encoder", "unet"}
    for name in names:
        np.testing.assert_allclose(arrays[f"mirrored/{name}"], arrays[f"default/{name}"], rtol=1e-5, atol=1e-6,
                                   err_msg=name)


@pytest.mark.slow
def test_mirrored_style_generator_matches_one_device(tmp_path):
    """The same equivalence with model.generator=style: its per-layer noise maps and style-mixing
    choices are per-replica draws, so 2 replicas draw the rows one device draws for the global
    batch (drawn on each replica alone, both halves would get the same noise and mixing). Noise
    is on in both stages: the GAN's noise strengths are trained from step 1 on, the segmentation
    stage's generator has them set to 0.5."""
    cfg = tiny_config(model={"generator": "style", "mapping_layers": 2, "style_mixing_prob": 0.5})
    single, mirrored, arrays = run_one_device_and_mirrored(cfg, tmp_path)
    for stage in ("gan", "segment"):
        assert_same_logs(single[stage], mirrored[stage], stage)
    names = [k.split("/", 1)[1] for k in arrays.files if k.startswith("default/")]
    for name in names:
        np.testing.assert_allclose(arrays[f"mirrored/{name}"], arrays[f"default/{name}"], rtol=1e-5, atol=5e-5,
                                   err_msg=name)


@pytest.mark.slow
def test_mirrored_shifted_fraction_shifts_each_replicas_last_rows(tmp_path):
    """segment.shifted_fraction > 0 under MirroredStrategy, docs/distributed.md's one exception to the test
    above: each replica shifts the last row of its 2 (one device: the last 2 of 4). The GAN stage
    still matches one device; the segmentation stage runs on 2 replicas with finite losses and
    weights, and its encoder departs from one device's (other images shifted). Which rows each
    replica shifts is the code's slicing, not checked here."""
    cfg = tiny_config(model={"norm": "none"}, segment={"shifted_fraction": 0.5})
    single, mirrored, arrays = run_one_device_and_mirrored(cfg, tmp_path)
    assert_same_logs(single["gan"], mirrored["gan"], "gan")
    assert len(single["segment"]) == len(mirrored["segment"]) == 3
    for one, two in zip(single["segment"], mirrored["segment"]):
        assert set(one) == set(two) and all(np.isfinite(list(two.values())))
    encoder = [k.split("/", 1)[1] for k in arrays.files if k.startswith("mirrored/encoder/")]
    assert encoder and all(np.isfinite(arrays[f"mirrored/{k}"]).all() for k in encoder)
    # Other shifted images, so other gradients: far beyond the 1e-5 of the equivalence above.
    assert max(np.abs(arrays[f"mirrored/{k}"] - arrays[f"default/{k}"]).max() for k in encoder) > 1e-4


def run_one_device_and_mirrored(cfg, tmp_path):
    """MIRRORED_CODE in a subprocess: (one device's logs, 2 replicas' logs, the weights of both)."""
    out = tmp_path / "weights.npz"
    proc = subprocess.run([sys.executable, "-c", MIRRORED_CODE, json.dumps(cfg.to_dict()), str(out)],
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads([line for line in proc.stdout.splitlines() if line.startswith("RESULT")][-1][6:])
    single, mirrored = result["default"], result["mirrored"]
    assert (single["replicas"], mirrored["replicas"]) == (1, 2)
    return single, mirrored, np.load(out)


def assert_same_logs(single, mirrored, stage):
    assert len(single) == len(mirrored) == 3
    for step, (one, two) in enumerate(zip(single, mirrored)):
        assert set(one) == set(two)
        for name in one:
            assert two[name] == pytest.approx(one[name], rel=1e-5, abs=1e-6), f"{stage} step {step}: {name}"


# --- mixed precision -------------------------------------------------------------------------------


def test_set_precision_rejects_unknown_names():
    with pytest.raises(ValueError, match="mixed_precision must be one of"):
        distribute.set_precision("float16")
    distribute.set_precision("mixed_bfloat16")
    assert keras.mixed_precision.dtype_policy().name == "mixed_bfloat16"
    distribute.set_precision("none")
    assert keras.mixed_precision.dtype_policy().name == "float32"


@pytest.mark.parametrize("flags, expected", [
    ("fpu sse avx2 fma avx512f avx512_bf16", True),
    ("fpu sse avx2 fma amx_bf16 amx_tile", True),
    ("fpu sse avx2 fma avx512f avx512bw", False),  # AVX-512 without its bfloat16 extension
])
def test_cpu_has_bfloat16_reads_the_cpu_flags(flags, expected, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    assert distribute.cpu_has_bfloat16(str(cpuinfo), environ={}) is expected
    assert distribute.cpu_has_bfloat16(str(tmp_path / "missing"), environ={}) is False


@pytest.mark.parametrize("cap, expected", [
    ("AVX2", False),  # an AVX2-only CPU, emulated: oneDNN would emulate bfloat16
    ("avx512_core_vnni", False),
    ("AVX512_CORE", False),
    ("AVX512_CORE_BF16", True),
    ("AVX512_CORE_AMX", True),
    ("", True),
])
def test_cpu_has_bfloat16_follows_the_onednn_isa_cap(cap, expected, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 fma avx512f avx512_bf16 amx_bf16 amx_tile\n")
    assert distribute.cpu_has_bfloat16(str(cpuinfo), environ={"ONEDNN_MAX_CPU_ISA": cap}) is expected


@pytest.mark.parametrize("gpu, has_bf16, expected", [
    (None, True, "mixed_bfloat16"),  # CPU with AVX512_BF16 / AMX
    (None, False, "none"),  # CPU without: emulated bfloat16 is slower
    ((9, 0), False, "mixed_bfloat16"),  # Hopper
    ((8, 0), False, "mixed_bfloat16"),  # Ampere
    ((7, 5), True, "mixed_float16"),  # Turing: tensor cores, no bfloat16
    ((6, 1), True, "none"),  # Pascal
    ((0, 0), True, "none"),  # a GPU that reports no CUDA capability
])
def test_auto_precision_is_the_fastest_native_one(gpu, has_bf16, expected, monkeypatch):
    distribute._fastest_precision.cache_clear()
    monkeypatch.setattr(distribute, "_gpu_capability", lambda: gpu)
    monkeypatch.setattr(distribute, "cpu_has_bfloat16", lambda: has_bf16)
    try:
        assert distribute.resolve_precision("auto") == expected
        assert distribute.resolve_precision("mixed_float16") == "mixed_float16"  # explicit names pass through
        distribute.set_precision("auto")
        assert keras.mixed_precision.dtype_policy().name == {"none": "float32"}.get(expected, expected)
    finally:
        distribute._fastest_precision.cache_clear()


def test_a_run_records_the_precision_auto_chose(monkeypatch, tmp_path):
    from keras_layered.config import load_config
    from keras_layered.training import run

    monkeypatch.setattr(distribute, "_fastest_precision", lambda: "mixed_bfloat16")
    run.train(tiny_config(train=SHORT_RUN, distribute={"mixed_precision": "auto"}), tmp_path, stage="gan", verbose=0)
    assert load_config(tmp_path / "config.yaml").distribute.mixed_precision == "mixed_bfloat16"
    assert keras.mixed_precision.dtype_policy().name == "mixed_bfloat16"  # what the run trained in


@pytest.mark.parametrize("precision, compute", [("mixed_bfloat16", "bfloat16"), ("mixed_float16", "float16")])
def test_mixed_precision_gan_step_keeps_outputs_and_variables_float32(precision, compute, tmp_path):
    gan = build_layered_gan(tiny_config(distribute={"mixed_precision": precision}))
    conv = gan.generator.background_branch.layers[3]
    assert conv.compute_dtype == compute and conv.variable_dtype == "float32"
    scaled = isinstance(gan.g_optimizer, keras.optimizers.LossScaleOptimizer)
    assert scaled == isinstance(gan.d_optimizer, keras.optimizers.LossScaleOptimizer) == (compute == "float16")
    assert gan.optimizer is gan.g_optimizer
    before = numpy_weights(gan.generator)
    history = gan.fit(real_dataset(), epochs=1, steps_per_epoch=2, verbose=0).history
    assert all(np.isfinite(v[-1]) for v in history.values())
    assert history["d_penalty"][0] > 0
    assert all(w.dtype == np.float32 for w in numpy_weights(gan.generator) + numpy_weights(gan.discriminator))
    assert any(not np.array_equal(a, b) for a, b in zip(before, numpy_weights(gan.generator)))
    z = np.random.default_rng(0).standard_normal((2, LATENT)).astype("float32")
    layers = gan.generator(z)
    assert {k: keras.backend.standardize_dtype(v.dtype) for k, v in layers.items()} == dict.fromkeys(layers, "float32")
    assert keras.backend.standardize_dtype(gan.discriminator(layers["background"]).dtype) == "float32"
    # The shift and the jitter keep float32 layers float32 (they do not cast to the compute dtype).
    assert keras.backend.standardize_dtype(gan.perturb_and_composite(layers).dtype) == "float32"
    # The saved generator loads in a float32 process, takes float32 latents, gives float32 layers
    # (its sub-layers are rebuilt under the loading process' policy: the same function, in float32).
    gan.generator.save(tmp_path / "generator.keras")
    keras.mixed_precision.set_dtype_policy("float32")
    mask = keras.saving.load_model(tmp_path / "generator.keras")(z)["mask"]
    assert keras.backend.standardize_dtype(mask.dtype) == "float32"
    np.testing.assert_allclose(keras.ops.convert_to_numpy(mask), keras.ops.convert_to_numpy(layers["mask"]),
                               atol=0.02)


def test_mixed_float16_segmentation_step_is_loss_scaled():
    cfg = tiny_config(distribute={"mixed_precision": "mixed_float16"})
    keras.utils.set_random_seed(1)
    from keras_layered.training.build import build_generator

    trainer = build_segmentation_trainer(cfg, build_generator(cfg))
    assert isinstance(trainer.encoder_optimizer, keras.optimizers.LossScaleOptimizer)
    assert isinstance(trainer.unet_optimizer, keras.optimizers.LossScaleOptimizer)
    before = numpy_weights(trainer.unet)
    history = trainer.fit(real_dataset(), epochs=1, steps_per_epoch=2, verbose=0).history
    assert all(np.isfinite(v[-1]) for v in history.values())
    assert any(not np.array_equal(a, b) for a, b in zip(before, numpy_weights(trainer.unet)))
    masks = trainer.unet(np.zeros((1, RES, RES, 3), np.float32))
    assert keras.backend.standardize_dtype(masks.dtype) == "float32"


def test_mixed_float16_segmentation_step_counter_counts_a_skipped_step(monkeypatch):
    cfg = tiny_config(distribute={"mixed_precision": "mixed_float16"})
    keras.utils.set_random_seed(1)
    from keras_layered.training.build import build_generator

    trainer = build_segmentation_trainer(cfg, build_generator(cfg))
    factor = tf.Variable(1.0, trainable=False)  # inf: every gradient of that step non-finite
    apply = keras.optimizers.LossScaleOptimizer.apply
    monkeypatch.setattr(keras.optimizers.LossScaleOptimizer, "apply",
                        lambda self, grads, variables=None: apply(self, [g * factor for g in grads], variables))
    skip_first = keras.callbacks.LambdaCallback(
        on_train_batch_begin=lambda batch, logs: factor.assign(float("inf") if batch == 0 else 1.0))
    history = trainer.fit(real_dataset(), epochs=1, steps_per_epoch=3, verbose=0, callbacks=[skip_first]).history
    assert all(np.isfinite(v[-1]) for v in history.values())
    assert int(trainer.step.numpy()) == 3
    assert [int(o.iterations.numpy()) for o in (trainer.encoder_optimizer, trainer.unet_optimizer)] == [2, 2]
