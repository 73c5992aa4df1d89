import keras
import numpy as np
import pytest
from helpers import assert_config_round_trip

from keras_layered.models.layered_generator import LayeredGenerator

LATENT = 8


def latents(n, seed=0, scale=1.0):
    return (np.random.default_rng(seed).standard_normal((n, LATENT)) * scale).astype("float32")


@pytest.fixture(scope="module")
def generators():
    """One small generator per resolution, built once for the module."""
    keras.utils.set_random_seed(0)
    return {res: LayeredGenerator(resolution=res, latent_dim=LATENT, base_width=32, min_width=8)
            for res in (8, 16)}


def branch_layer(gen, branch, name):
    return getattr(gen, f"{branch}_branch").get_layer(f"{branch}_{name}")


@pytest.mark.parametrize("resolution", [8, 16])
def test_output_keys_shapes_and_ranges(generators, resolution):
    gen = generators[resolution]
    # Large latents push the pre-activations far out, so an unbounded output would show.
    for training in (False, True):
        out = gen(latents(4, scale=10.0), training=training)
        assert set(out) == {"background", "foreground", "mask"}
        out = {k: keras.ops.convert_to_numpy(v) for k, v in out.items()}
        assert out["background"].shape == (4, resolution, resolution, 3)
        assert out["foreground"].shape == (4, resolution, resolution, 3)
        assert out["mask"].shape == (4, resolution, resolution, 1)
        for key in ("background", "foreground"):
            assert out[key].min() >= -1.0 and out[key].max() <= 1.0, key
            assert np.all(np.isfinite(out[key])), key
        assert out["mask"].min() >= 0.0 and out["mask"].max() <= 1.0
        # Not degenerate: the three layers differ between samples.
        assert out["mask"].std() > 0
        assert not np.allclose(out["background"][0], out["background"][1])


def test_width_schedule_halves_per_level(generators):
    gen = generators[16]  # widths 32 (4 px) -> 16 (8 px) -> 8 (16 px)
    for branch, channels in (("background", 3), ("object", 4)):
        assert tuple(branch_layer(gen, branch, "dense").kernel.shape) == (LATENT, 4 * 4 * 32)
        assert tuple(branch_layer(gen, branch, "conv0").kernel.shape) == (3, 3, 32, 16)
        assert tuple(branch_layer(gen, branch, "conv1").kernel.shape) == (3, 3, 16, 8)
        assert tuple(branch_layer(gen, branch, "out").kernel.shape) == (3, 3, 8, channels)


def test_width_schedule_floored_at_min_width():
    gen = LayeredGenerator(resolution=16, latent_dim=LATENT, base_width=16, min_width=12)
    gen(latents(1))
    # 16 at 4 px, then max(8, 12) = 12 and max(4, 12) = 12.
    assert tuple(branch_layer(gen, "object", "dense").kernel.shape) == (LATENT, 4 * 4 * 16)
    assert tuple(branch_layer(gen, "object", "conv0").kernel.shape) == (3, 3, 16, 12)
    assert tuple(branch_layer(gen, "object", "conv1").kernel.shape) == (3, 3, 12, 12)


def _all_layers(gen):
    return list(gen.background_branch.layers) + list(gen.object_branch.layers)


def test_norm_none_has_no_batch_normalization():
    gen = LayeredGenerator(resolution=16, latent_dim=LATENT, base_width=16, min_width=8, norm="none")
    gen(latents(2))
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in _all_layers(gen))
    assert gen.non_trainable_weights == []
    # Without a norm layer the convs keep their bias.
    assert branch_layer(gen, "background", "conv0").use_bias


def test_norm_batch_has_batch_normalization(generators):
    gen = generators[16]
    bns = [layer for layer in _all_layers(gen) if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(bns) == 4  # two upsampling levels in each of the two branches
    assert not branch_layer(gen, "background", "conv0").use_bias


@pytest.mark.parametrize("resolution", [12, 512, 4])
def test_bad_resolution_raises(resolution):
    with pytest.raises(ValueError, match="resolution"):
        LayeredGenerator(resolution=resolution, latent_dim=LATENT, base_width=16, min_width=8)


def test_bad_norm_raises():
    with pytest.raises(ValueError, match="norm") as info:
        LayeredGenerator(resolution=8, latent_dim=LATENT, base_width=16, min_width=8, norm="layer")
    assert "'layer'" in str(info.value)


def test_transposed_upsampling_is_a_4x4_stride_2_transposed_conv_per_level():
    gen = LayeredGenerator(resolution=16, latent_dim=LATENT, base_width=32, min_width=8, upsampling="transposed")
    out = gen(latents(3, scale=10.0), training=True)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "background": (3, 16, 16, 3), "foreground": (3, 16, 16, 3), "mask": (3, 16, 16, 1)}
    assert not any(isinstance(layer, keras.layers.UpSampling2D) for layer in _all_layers(gen))
    for branch in ("background", "object"):
        for name, kernel in (("conv0", (4, 4, 16, 32)), ("conv1", (4, 4, 8, 16))):  # (k, k, out, in)
            conv = branch_layer(gen, branch, name)
            assert isinstance(conv, keras.layers.Conv2DTranspose) and conv.strides == (2, 2), name
            assert tuple(conv.kernel.shape) == kernel and not conv.use_bias, name
    # What the layer computes: an impulse at input pixel (1, 1) lands on output pixels 2*1 + (-1..2)
    # (the 4x4 footprint, centred by "same" padding), nowhere else.
    conv = branch_layer(gen, "object", "conv1")
    impulse = np.zeros((1, 8, 8, 16), "float32")
    impulse[0, 1, 1, 0] = 1.0
    response = np.abs(keras.ops.convert_to_numpy(conv(impulse))).sum(axis=-1)[0]
    rows, cols = np.nonzero(response)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (1, 4, 1, 4)


def test_nearest_upsampling_is_the_default_and_what_a_config_without_the_key_builds():
    assert LayeredGenerator(resolution=8, latent_dim=LATENT).upsampling == "nearest"
    config = LayeredGenerator(resolution=16, latent_dim=LATENT, base_width=16, min_width=8).get_config()
    del config["upsampling"]  # a generator saved before the choice existed
    old = LayeredGenerator.from_config(config)
    old(latents(1))
    assert sum(isinstance(layer, keras.layers.UpSampling2D) for layer in _all_layers(old)) == 4
    assert tuple(branch_layer(old, "object", "conv0").kernel.shape) == (3, 3, 16, 8)


def test_bad_upsampling_raises():
    with pytest.raises(ValueError, match="upsampling must be one of nearest, transposed, got 'bilinear'"):
        LayeredGenerator(resolution=8, latent_dim=LATENT, upsampling="bilinear")


def test_get_config_from_config_round_trip():
    args = dict(resolution=16, latent_dim=LATENT, base_width=24, min_width=8, norm="none", upsampling="transposed")
    gen = LayeredGenerator(**args)
    clone = assert_config_round_trip(LayeredGenerator, args)
    gen(latents(1))
    clone(latents(1))
    assert [tuple(w.shape) for w in clone.weights] == [tuple(w.shape) for w in gen.weights]


@pytest.mark.parametrize("upsampling", ["nearest", "transposed"])
def test_keras_save_load_round_trip(generators, upsampling, tmp_path):
    gen = generators[16] if upsampling == "nearest" else LayeredGenerator(
        resolution=16, latent_dim=LATENT, base_width=32, min_width=8, upsampling="transposed")
    z = latents(4, seed=3)
    gen(z, training=True)  # moves the BatchNormalization statistics away from their initial values
    path = tmp_path / "generator.keras"
    gen.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, LayeredGenerator)
    assert loaded.get_config() == gen.get_config()
    expected, actual = gen(z, training=False), loaded(z, training=False)
    for key in ("background", "foreground", "mask"):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(actual[key]),
                                      keras.ops.convert_to_numpy(expected[key]), err_msg=key)
