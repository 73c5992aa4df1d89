import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_layered.models.style_generator import StyleLayeredGenerator

LATENT = 8


def _tiny(**kwargs):
    args = dict(resolution=8, latent_dim=LATENT, mapping_layers=2, base_width=32, min_width=16, seed=1)
    args.update(kwargs)
    return StyleLayeredGenerator(**args)


def _z(batch=2, seed=0):
    return np.random.default_rng(seed).standard_normal((batch, LATENT)).astype("float32")


def _set_noise_strength(model, value):
    for v in model.weights:
        if v.path.endswith("noise_strength"):
            v.assign(np.full(v.shape, value, "float32"))


def _assert_outputs_close(a, b):
    for key in ("background", "foreground", "mask"):
        np.testing.assert_allclose(np.asarray(a[key]), np.asarray(b[key]), atol=1e-5)


@pytest.mark.parametrize("resolution", [8, 16])
def test_output_keys_shapes_dtypes_and_ranges(resolution):
    model = _tiny(resolution=resolution)
    _set_noise_strength(model, 1.0)
    # Large output kernels push the raw maps far outside [-1, 1]: only the heads can bound them.
    for synthesis in (model.background_synthesis, model.object_synthesis):
        synthesis.to_output.kernel.assign(synthesis.to_output.kernel * 100.0)
    out = model(_z(3))
    assert set(out) == {"background", "foreground", "mask"}
    expected = {"background": 3, "foreground": 3, "mask": 1}
    for key, channels in expected.items():
        value = np.asarray(out[key])
        assert value.shape == (3, resolution, resolution, channels)
        assert out[key].dtype == "float32"
        assert np.all(np.isfinite(value))
        assert value.std() > 0.1
    assert np.abs(np.asarray(out["background"])).max() <= 1.0
    assert np.abs(np.asarray(out["foreground"])).max() <= 1.0
    mask = np.asarray(out["mask"])
    assert mask.min() >= 0.0 and mask.max() <= 1.0


@pytest.mark.parametrize(
    "resolution, base_width, min_width, widths",
    [(16, 32, 8, [32, 16, 8]), (16, 32, 16, [32, 16, 16]), (32, 256, 32, [256, 128, 64, 32])],
)
def test_width_schedule(resolution, base_width, min_width, widths):
    model = _tiny(resolution=resolution, base_width=base_width, min_width=min_width)
    for synthesis, out_channels in ((model.background_synthesis, 3), (model.object_synthesis, 4)):
        assert tuple(synthesis.constant.shape) == (1, 4, 4, widths[0])
        expected = [(3, 3, widths[0], widths[0])]
        for previous, width in zip(widths, widths[1:]):
            expected += [(3, 3, previous, width), (3, 3, width, width)]
        assert [tuple(conv.kernel.shape) for conv in synthesis.convs] == expected
        assert tuple(synthesis.to_output.kernel.shape) == (1, 1, widths[-1], out_channels)
    assert model.num_ws == 2 * len(widths)


def test_get_config_round_trip():
    model = _tiny(resolution=16, mapping_layers=3, mapping_lr_multiplier=0.05, style_mixing_prob=0.9, seed=7)
    config = model.get_config()
    expected = dict(
        resolution=16,
        latent_dim=LATENT,
        mapping_layers=3,
        mapping_lr_multiplier=0.05,
        base_width=32,
        min_width=16,
        style_mixing_prob=0.9,
        seed=7,
    )
    assert {key: config[key] for key in expected} == expected
    clone = StyleLayeredGenerator.from_config(config)
    assert clone.get_config() == config
    assert [tuple(v.shape) for v in clone.weights] == [tuple(v.shape) for v in model.weights]


def test_keras_save_load_round_trip(tmp_path):
    model = _tiny(resolution=16, style_mixing_prob=0.5, seed=3)
    _set_noise_strength(model, 0.5)
    z = _z(2)
    first, second = model(z), model(z)
    # Noise is on at inference, so consecutive calls differ ...
    assert not np.allclose(np.asarray(first["background"]), np.asarray(second["background"]))
    path = str(tmp_path / "style_generator.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, StyleLayeredGenerator)
    # ... and match once both draw from the same noise-generator state.
    loaded.seed_generator.state.assign(model.seed_generator.state)
    _assert_outputs_close(model(z), loaded(z))


def test_saved_weight_paths_stay_those_of_earlier_files(tmp_path):
    # A .keras file finds each weight by a path made of layer class names: files saved before the
    # equalized layers moved to keras_layered.layers still load only if these paths stay the same.
    import io
    import zipfile

    import h5py

    path = tmp_path / "style_generator.keras"
    model = _tiny(resolution=16)
    model(_z(1))
    model.save(path)
    with zipfile.ZipFile(path) as archive:
        weights = h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r")
        groups = []
        weights.visit(groups.append)
    for expected in ["background_mapping/dense_layers/__equalized_dense/vars",
                     "layers/__synthesis_network_1/convs/__equalized_conv2d_4/vars",
                     "background_synthesis/styles/__noise_ada_in/style/vars"]:
        assert expected in groups, expected


def test_style_mixing_changes_training_outputs_only():
    z = _z(4)
    model = _tiny(resolution=16, style_mixing_prob=1.0)  # noise strengths start at zero
    plain = model(z, training=False)
    mixed = model(z, training=True)
    for key in ("background", "foreground", "mask"):
        per_sample = np.abs(np.asarray(plain[key]) - np.asarray(mixed[key])).reshape(4, -1).max(axis=1)
        assert np.all(per_sample > 1e-4)
    # Inference ignores mixing: repeatable, and what the same weights give without mixing.
    _assert_outputs_close(model(z, training=False), plain)
    no_mixing = _tiny(resolution=16, style_mixing_prob=0.0)
    no_mixing.set_weights(model.get_weights())
    _assert_outputs_close(no_mixing(z, training=True), plain)
    _assert_outputs_close(no_mixing(z, training=False), plain)


def test_mixed_styles_switch_once_after_a_prefix():
    model = _tiny(resolution=16, style_mixing_prob=1.0)
    z = _z(16)
    w = np.asarray(model._mapping(z))
    ws = np.asarray(model._mix_styles(z, model._mapping(z)))
    assert ws.shape == (16, model.num_ws, model.w_dim)
    for sample_ws, sample_w in zip(ws, w):
        is_first = [np.allclose(row, sample_w) for row in sample_ws]
        crossover = is_first.index(False)
        assert 1 <= crossover < model.num_ws
        assert not any(is_first[crossover:])
        np.testing.assert_allclose(sample_ws[crossover:], np.broadcast_to(sample_ws[-1], sample_ws[crossover:].shape))


def test_equalized_learning_rate_in_mapping():
    model = _tiny(latent_dim=4, mapping_lr_multiplier=0.01)
    dense = model.background_mapping.dense_layers[0]
    rng = np.random.default_rng(0)
    kernel = rng.standard_normal((4, 4)).astype("float32")
    bias = rng.standard_normal(4).astype("float32")
    dense.kernel.assign(kernel)
    dense.bias.assign(bias)
    x = rng.standard_normal((2, 4)).astype("float32")
    expected = x @ (kernel * 0.01 * math.sqrt(2.0 / 4)) + bias * 0.01
    np.testing.assert_allclose(np.asarray(dense(x)), expected, rtol=1e-5, atol=1e-6)
    # Stored weights start at N(0, 1 / lr_multiplier) so the effective ones are He-normal.
    wide = _tiny(latent_dim=32, mapping_lr_multiplier=0.01)
    std = np.asarray(wide.object_mapping.dense_layers[1].kernel).std()
    assert 90.0 < std < 110.0


def test_gradients_reach_every_trainable_variable():
    model = _tiny(style_mixing_prob=1.0)
    z = _z(2)
    rng = np.random.default_rng(1)
    channels = {"background": 3, "foreground": 3, "mask": 1}
    # Random weights: plain means of instance-normalised maps would hide some gradients.
    weights = {key: rng.standard_normal((2, 8, 8, c)).astype("float32") for key, c in channels.items()}
    with tf.GradientTape() as tape:
        out = model(z, training=True)
        loss = sum(tf.reduce_mean(out[key] * weights[key]) for key in weights)
    grads = tape.gradient(loss, model.trainable_variables)
    assert len(grads) == len(model.trainable_variables) > 0
    for variable, grad in zip(model.trainable_variables, grads):
        assert grad is not None, variable.path
        assert np.any(np.asarray(grad) != 0), variable.path


def test_runs_under_jit_compiled_tf_function():
    model = _tiny(style_mixing_prob=0.5)
    z = _z(2)

    @tf.function(jit_compile=True)
    def generate(z, training):
        return model(z, training=training)

    _assert_outputs_close(generate(z, False), model(z))  # noise strengths are zero: deterministic
    out = generate(z, True)
    assert tuple(out["mask"].shape) == (2, 8, 8, 1)
    assert np.all(np.isfinite(np.asarray(out["background"])))


@pytest.mark.parametrize("resolution", [12, 4, 512])
def test_bad_resolution_raises(resolution):
    with pytest.raises(ValueError, match="resolution"):
        StyleLayeredGenerator(resolution=resolution)
