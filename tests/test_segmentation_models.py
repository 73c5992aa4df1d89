import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import assert_config_round_trip

from keras_layered.layers import LargestComponent
from keras_layered.models.encoder import Encoder
from keras_layered.models.generator_inversion import GeneratorInversion
from keras_layered.models.layered_generator import LayeredGenerator
from keras_layered.models.mask_ensemble import MaskEnsemble
from keras_layered.models.segmenter import Segmenter
from keras_layered.models.unet import UNet

RES, LATENT = 8, 4
GENERATOR_KEYS = ("background", "foreground", "mask")
INVERSION_KEYS = ("latent", *GENERATOR_KEYS, "composite")
SHAPE_MESSAGE = "expected images of shape"


def numpy(x):
    return keras.ops.convert_to_numpy(x)


def images(n, resolution=RES, seed=0, scale=1.0):
    """Model-range images, (n, resolution, resolution, 3) in [-scale, scale]."""
    return np.random.default_rng(seed).uniform(-scale, scale, (n, resolution, resolution, 3)).astype("float32")


def uint8_images(n, resolution=RES, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, resolution, resolution, 3), dtype=np.uint8)


def tiny_encoder(latent_dim=LATENT):
    return Encoder(RES, latent_dim, base_width=16, min_width=8, hidden_dim=16)


def tiny_generator():
    return LayeredGenerator(RES, LATENT, base_width=16, min_width=8)


def tiny_unet_segmenter():
    return Segmenter(UNet(RES, width=4, depth=1), RES)


def batch_norm_statistics(model):
    return [numpy(w) for w in model.non_trainable_weights if "moving" in w.path]


@pytest.fixture(scope="module")
def encoder():
    keras.utils.set_random_seed(0)
    encoder = tiny_encoder()
    encoder(images(1))  # built, so that saving it saves its weights
    return encoder


@pytest.fixture(scope="module")
def inversion(encoder):
    keras.utils.set_random_seed(1)
    generator = tiny_generator()
    z = np.random.default_rng(0).standard_normal((8, LATENT)).astype("float32")
    generator(z, training=True)  # moves the BatchNormalization statistics off their initial values
    inversion = GeneratorInversion(encoder, generator, refine_steps=0)
    inversion(images(1))
    return inversion


@pytest.fixture(scope="module")
def unet():
    keras.utils.set_random_seed(2)
    unet = UNet(16, width=4, depth=2)
    unet(images(1, 16))
    return unet


@pytest.fixture(scope="module")
def segmenters(inversion):
    keras.utils.set_random_seed(3)
    segmenters = {"unet": Segmenter(UNet(RES, width=4, depth=2), RES), "inversion": Segmenter(inversion, RES)}
    segmenters["ensemble"] = Segmenter(MaskEnsemble([segmenters["unet"].network, inversion], [0.6, 0.4],
                                                    flip_average=[True, False]), RES, largest_component=True)
    for segmenter in segmenters.values():
        segmenter(uint8_images(1))
    return segmenters


# Encoder


def test_encoder_output_shape(encoder):
    x = images(4, scale=10.0)
    latent = numpy(encoder(x))
    assert latent.shape == (4, LATENT)
    assert np.all(np.isfinite(latent))
    assert not np.allclose(latent[0], latent[1])  # a per-sample function of the image
    # No normalisation layers: training and inference modes compute the same function.
    np.testing.assert_array_equal(numpy(encoder(x, training=True)), latent)


@pytest.mark.parametrize("resolution", [12, 4, 512])
def test_encoder_bad_resolution_raises(resolution):
    with pytest.raises(ValueError, match="resolution"):
        Encoder(resolution, LATENT, base_width=16, min_width=8, hidden_dim=16)


def test_encoder_get_config_from_config_round_trip():
    args = dict(resolution=16, latent_dim=6, base_width=24, min_width=8, hidden_dim=12)
    clone = assert_config_round_trip(Encoder, args)
    assert numpy(clone(images(2, 16))).shape == (2, 6)


def test_encoder_keras_save_load_round_trip(encoder, tmp_path):
    x = images(4, seed=1)
    encoder.save(tmp_path / "encoder.keras")
    loaded = keras.saving.load_model(tmp_path / "encoder.keras")
    assert isinstance(loaded, Encoder)
    assert loaded.get_config() == encoder.get_config()
    np.testing.assert_array_equal(numpy(loaded(x)), numpy(encoder(x)))


# UNet


def test_unet_output_shape_and_range(unet):
    x = images(3, 16, scale=10.0)  # large inputs push the mask logits far out
    mask = numpy(unet(x))
    assert mask.shape == (3, 16, 16, 1)
    assert mask.min() >= 0.0 and mask.max() <= 1.0
    assert np.all(np.isfinite(mask))


def test_unet_masks_are_the_sigmoid_of_the_logits_training_reads(unet):
    x = images(2, 16, scale=10.0)
    logits = numpy(unet.mask_logits(x))
    assert logits.min() < 0.0, "logits, not probabilities"
    np.testing.assert_array_equal(numpy(unet(x)), numpy(keras.ops.sigmoid(logits)))


def test_unet_mask_varies_per_pixel_and_moves_with_the_image(unet):
    x = images(1, 16, seed=4)
    mask = numpy(unet(x))[0, ..., 0]
    assert mask.std() > 0  # not one value per image
    shifted = numpy(unet(np.roll(x, 3, axis=2)))[0, ..., 0]
    assert np.abs(shifted - mask).max() > 1e-4  # a function of where things are, not of their histogram


def test_unet_local_change_changes_the_mask_there(unet):
    x = images(1, 16, seed=5)
    y = x.copy()
    y[0, 7:9, 7:9] = -x[0, 7:9, 7:9]  # only a 2x2 region changes
    delta = np.abs(numpy(unet(y)) - numpy(unet(x)))[0, ..., 0]
    assert np.all(delta[7:9, 7:9] > 0)


def test_unet_skip_connection_alone_carries_the_full_resolution_input(unet):
    """With the decoder's path from the bottleneck cut (its last up-conv zeroed), the mask is a
    function of the full-resolution skip alone: two 3x3 convs down, two up, a 1x1 out, so one
    input pixel reaches exactly the outputs within Chebyshev distance 4."""
    cut = UNet.from_config(unet.get_config())
    cut.build((None, 16, 16, 3))
    cut.set_weights(unet.get_weights())
    for w in cut.up_convs[0].weights:
        w.assign(np.zeros(w.shape, "float32"))
    x = images(1, 16, seed=6)
    y = x.copy()
    y[0, 8, 8] = -x[0, 8, 8]
    masks = numpy(cut(np.concatenate([x, y])))[..., 0]
    assert masks[0].std() > 0
    changed = masks[0] != masks[1]
    rows, cols = np.indices((16, 16))
    expected = np.maximum(np.abs(rows - 8), np.abs(cols - 8)) <= 4
    np.testing.assert_array_equal(changed, expected)


def test_unet_max_width_caps_the_channels_per_level():
    unet = UNet(16, width=4, depth=3, max_width=8)
    unet.build((None, 16, 16, 3))
    assert unet.widths == [4, 8, 8, 8]
    assert [b.layers[-2].filters for b in unet.down_blocks] == [4, 8, 8] and unet.bottom.layers[-2].filters == 8
    assert UNet(16, width=4, depth=3).widths == [4, 8, 16, 32]  # 0: no cap


@pytest.mark.parametrize("max_width", [2, -1, 8.0, True])
def test_unet_bad_max_width_raises(max_width):
    with pytest.raises(ValueError, match=r"max_width must be 0 \(no cap\) or an int >= width \(4\)"):
        UNet(16, width=4, depth=2, max_width=max_width)


def test_unet_low_res_upconv_convolves_before_the_repeat():
    """The up-convolution on the low-resolution tensor, then nearest x2: every 2x2 block of the
    up-conv's output is one value, which a conv after the repeat would not give."""
    keras.utils.set_random_seed(7)
    unet = UNet(8, width=4, depth=1, low_res_upconv=True)
    unet(images(1))
    captured = {}
    concat = keras.ops.concatenate

    def spy(tensors, axis):
        captured["up"] = numpy(tensors[0])
        return concat(tensors, axis=axis)

    keras.ops.concatenate = spy
    try:
        unet(images(1, seed=8))
    finally:
        keras.ops.concatenate = concat
    up = captured["up"][0]
    assert up.shape == (8, 8, 4) and up.std() > 0
    np.testing.assert_array_equal(up, np.repeat(np.repeat(up[::2, ::2], 2, axis=0), 2, axis=1))
    config = unet.get_config()
    assert config["low_res_upconv"] is True
    same = UNet.from_config(config)
    same.build((None, 8, 8, 3))
    same.set_weights(unet.get_weights())
    np.testing.assert_array_equal(numpy(same(images(2))), numpy(unet(images(2))))


@pytest.mark.parametrize("resolution, depth", [(16, 0), (16, 5), (8, 4), (16, 2.0)])
def test_unet_bad_depth_raises(resolution, depth):
    with pytest.raises(ValueError, match="depth"):
        UNet(resolution, width=4, depth=depth)


def test_unet_bad_resolution_raises():
    with pytest.raises(ValueError, match="resolution"):
        UNet(12, width=4, depth=2)


def test_unet_get_config_from_config_round_trip():
    args = dict(resolution=16, width=6, depth=3)
    clone = assert_config_round_trip(UNet, args)
    assert numpy(clone(images(2, 16))).shape == (2, 16, 16, 1)


def test_unet_keras_save_load_round_trip(unet, tmp_path):
    x = images(2, 16, seed=7)
    unet.save(tmp_path / "unet.keras")
    loaded = keras.saving.load_model(tmp_path / "unet.keras")
    assert isinstance(loaded, UNet)
    assert loaded.get_config() == unet.get_config()
    np.testing.assert_array_equal(numpy(loaded(x)), numpy(unet(x)))


# GeneratorInversion


def test_inversion_outputs_are_the_generator_decoding_the_encoder_latent(inversion):
    x = images(4, seed=8)
    out = {k: numpy(v) for k, v in inversion(x).items()}
    assert set(out) == set(INVERSION_KEYS)
    assert out["latent"].shape == (4, LATENT)
    for key in ("background", "foreground", "composite"):
        assert out[key].shape == (4, RES, RES, 3), key
    assert out["mask"].shape == (4, RES, RES, 1)
    bg, fg, mask = out["background"], out["foreground"], out["mask"]
    np.testing.assert_array_equal(out["composite"], bg * (1.0 - mask) + fg * mask)
    np.testing.assert_array_equal(out["latent"], numpy(inversion.encoder(x)))
    expected = inversion.generator(inversion.encoder(x), training=False)
    for key in GENERATOR_KEYS:
        np.testing.assert_array_equal(out[key], numpy(expected[key]), err_msg=key)


def test_inversion_uses_the_generator_in_inference_mode(inversion):
    x = images(4, seed=9)
    before = batch_norm_statistics(inversion.generator)
    assert before  # the generator has BatchNormalization statistics to protect
    train = inversion(x, training=True)
    for b, a in zip(before, batch_norm_statistics(inversion.generator)):
        np.testing.assert_array_equal(a, b)
    # The encoder has no normalisation either, so training mode changes nothing at all.
    infer = inversion(x, training=False)
    for key in INVERSION_KEYS:
        np.testing.assert_array_equal(numpy(train[key]), numpy(infer[key]), err_msg=key)


def test_inversion_mismatched_latent_dim_raises_with_the_fix():
    with pytest.raises(ValueError, match=f"latent_dim={LATENT}"):
        GeneratorInversion(tiny_encoder(latent_dim=LATENT + 1), tiny_generator())


def test_inversion_keras_save_load_round_trip(inversion, tmp_path):
    x = images(4, seed=10)
    inversion.save(tmp_path / "inversion.keras")
    loaded = keras.saving.load_model(tmp_path / "inversion.keras")
    assert isinstance(loaded, GeneratorInversion)
    assert isinstance(loaded.encoder, Encoder) and isinstance(loaded.generator, LayeredGenerator)
    assert loaded.encoder.get_config() == inversion.encoder.get_config()
    assert loaded.generator.get_config() == inversion.generator.get_config()
    for a, b in zip(batch_norm_statistics(loaded.generator), batch_norm_statistics(inversion.generator)):
        np.testing.assert_array_equal(a, b)
    expected, actual = inversion(x), loaded(x)
    for key in INVERSION_KEYS:
        np.testing.assert_array_equal(numpy(actual[key]), numpy(expected[key]), err_msg=key)


# Segmenter


def network_input(images):
    """What a Segmenter hands its network for `images` (B, 2, 2, 3): its rescaling to [-1, 1]."""
    return numpy(Segmenter(keras.layers.Identity(), 2)(images))


def test_segmenter_reads_uint8_exactly():
    x = np.repeat(np.array([0, 255, 51, 204], np.uint8).reshape(1, 2, 2, 1), 3, axis=-1)
    out = network_input(x)
    assert out.dtype == np.float32
    assert out[0, 0, 0, 0] == -1.0 and out[0, 0, 1, 0] == 1.0  # the extremes exactly
    np.testing.assert_allclose(out[0, 1, :, 0], [-0.6, 0.6], atol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_segmenter_reads_float_images_in_the_unit_interval(dtype):
    x = np.repeat(np.array([0.0, 1.0, 0.5, 0.25], dtype).reshape(1, 2, 2, 1), 3, axis=-1)
    out = network_input(x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[..., 0].ravel(), [-1.0, 1.0, 0.0, -0.5], atol=1e-7)


def test_segmenter_reads_each_float_image_by_its_own_peak():
    unit = np.repeat(np.array([0.0, 0.5, 1.0, 0.25], np.float32).reshape(2, 2, 1), 3, axis=-1)
    # [0, 1]; [0, 255]; dark [0, 1]; a [0, 1] image a resize overshot to 1.05; max 2.5 -> [0, 255]
    batch = np.stack([unit, unit * 255.0, unit * 0.5, unit * 1.05, unit * 2.5])
    out = network_input(batch)[..., 0].reshape(5, 4)
    np.testing.assert_allclose(out[0], [-1.0, 0.0, 1.0, -0.5], atol=1e-6)
    np.testing.assert_allclose(out[1], [-1.0, 0.0, 1.0, -0.5], atol=1e-6)
    np.testing.assert_allclose(out[2], [-1.0, -0.5, 0.0, -0.75], atol=1e-6)
    np.testing.assert_allclose(out[3], np.array([0.0, 0.5, 1.0, 0.25]) * 1.05 * 2 - 1, atol=1e-6)
    np.testing.assert_allclose(out[4], np.array([0.0, 0.5, 1.0, 0.25]) * 2.5 * 2 / 255 - 1, atol=1e-6)


@pytest.mark.parametrize("kind", ["unet", "inversion", "ensemble"])
def test_segmenter_masks_shape_range_and_dtype_agreement(segmenters, kind):
    segmenter = segmenters[kind]
    x = uint8_images(4, seed=11)
    masks = numpy(segmenter(x))
    assert masks.shape == (4, RES, RES, 1)
    assert masks.min() >= 0.0 and masks.max() <= 1.0
    assert not np.allclose(masks[0], masks[1])
    # The same pictures as uint8, as float in [0, 1], and as float in [0, 255].
    np.testing.assert_allclose(numpy(segmenter(x.astype("float32") / 255.0)), masks, atol=1e-6)
    np.testing.assert_allclose(numpy(segmenter(x.astype("float32"))), masks, atol=1e-6)
    np.testing.assert_allclose(segmenter.predict(x, verbose=0), masks, atol=1e-6)


def test_segmenter_reads_integer_images_as_0_255_and_rejects_bool(segmenters):
    segmenter = segmenters["unet"]
    x = uint8_images(2, seed=13)
    np.testing.assert_allclose(numpy(segmenter(x.astype("int32"))), numpy(segmenter(x)), atol=1e-6)
    with pytest.raises(TypeError, match="uint8 in \\[0, 255\\] or float in \\[0, 1\\], got dtype bool"):
        segmenter(x > 127)


def test_segmenter_inversion_masks_are_the_inversion_masks(segmenters, inversion):
    x = uint8_images(4, seed=12)
    expected = numpy(inversion(x.astype("float32") / 127.5 - 1.0)["mask"])
    np.testing.assert_allclose(numpy(segmenters["inversion"](x)), expected, atol=1e-6)


def test_segmenter_largest_component_keeps_one_region_and_survives_saving(tmp_path):
    keras.utils.set_random_seed(4)
    network = UNet(RES, width=4, depth=1)
    plain, largest = Segmenter(network, RES), Segmenter(network, RES, largest_component=True)
    x = uint8_images(8, seed=14)
    masks = numpy(plain(x))
    assert (masks > 0.5).any(axis=(1, 2, 3)).all()
    expected = numpy(LargestComponent()(masks))
    assert not np.allclose(expected, masks)  # some images had more than one region
    np.testing.assert_array_equal(numpy(largest(x)), expected)
    largest.save(tmp_path / "segmenter.keras")
    loaded = keras.saving.load_model(tmp_path / "segmenter.keras")
    assert loaded.largest_component is True
    np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, atol=1e-6)


@keras.saving.register_keras_serializable(package="keras_layered_tests")
class ColumnRamp(keras.layers.Layer):
    """A mask that depends on where the image is: image channel 0 (in [-1, 1]) mapped to [0, 1],
    times a ramp over the columns, so mirroring the image changes the mask."""

    def call(self, images):
        ramp = keras.ops.reshape(keras.ops.linspace(0.0, 1.0, keras.ops.shape(images)[2]), (1, 1, -1, 1))
        return (images[..., :1] + 1.0) / 2.0 * ramp


def test_segmenter_flip_average_is_the_mean_over_the_mirror_image_and_survives_saving(tmp_path):
    x = uint8_images(3, seed=15)
    channel = x[..., :1].astype("float64") / 255.0  # the network's input back in [0, 1]
    ramp = np.linspace(0.0, 1.0, RES).reshape(1, 1, RES, 1)
    # Mirrored image through the network, mirrored back: channel * (1 - ramp).
    expected = (channel * ramp + channel * ramp[:, :, ::-1]) / 2.0
    plain, averaged = Segmenter(ColumnRamp(), RES), Segmenter(ColumnRamp(), RES, flip_average=True)
    np.testing.assert_allclose(numpy(plain(x)), channel * ramp, atol=1e-5)
    np.testing.assert_allclose(numpy(averaged(x)), expected, atol=1e-5)
    assert np.abs(expected - channel * ramp).max() > 0.1  # the two differ
    averaged.save(tmp_path / "segmenter.keras")
    loaded = keras.saving.load_model(tmp_path / "segmenter.keras")
    assert loaded.flip_average is True
    np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, atol=1e-5)


def _translated(x, dy, dx):
    """x (B, H, W, C) moved by (dy, dx) pixels, edge pixels repeated: by index clipping."""
    rows = np.clip(np.arange(x.shape[1]) - dy, 0, x.shape[1] - 1)
    cols = np.clip(np.arange(x.shape[2]) - dx, 0, x.shape[2] - 1)
    return x[:, rows][:, :, cols]


def test_segmenter_shift_average_is_the_mean_over_translations_moved_back_and_survives_saving(tmp_path):
    x = uint8_images(3, seed=16)
    channel = x[..., :1].astype("float64") / 255.0
    ramp = np.linspace(0.0, 1.0, RES).reshape(1, 1, RES, 1)
    offsets = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    expected = sum(_translated(_translated(channel, dy, dx) * ramp, -dy, -dx) for dy, dx in offsets) / 9.0
    averaged = Segmenter(ColumnRamp(), RES, shift_average=1)
    np.testing.assert_allclose(numpy(averaged(x)), expected, atol=1e-5)
    assert np.abs(expected - channel * ramp).max() > 0.05  # not the plain masks
    np.testing.assert_allclose(numpy(Segmenter(ColumnRamp(), RES)(x)), channel * ramp, atol=1e-5)  # 0: off
    # With the mirror average inside each translation.
    both = Segmenter(ColumnRamp(), RES, flip_average=True, shift_average=1)
    mirrored = (ramp + ramp[:, :, ::-1]) / 2.0
    expected_both = sum(_translated(_translated(channel, dy, dx) * mirrored, -dy, -dx) for dy, dx in offsets) / 9.0
    np.testing.assert_allclose(numpy(both(x)), expected_both, atol=1e-5)
    both.save(tmp_path / "shifted.keras")
    loaded = keras.saving.load_model(tmp_path / "shifted.keras")
    assert loaded.shift_average == 1 and loaded.flip_average is True
    np.testing.assert_allclose(loaded.predict(x, verbose=0), expected_both, atol=1e-5)


@pytest.mark.parametrize("radius", [-1, 1.5, True, RES // 2])
def test_segmenter_bad_shift_average_raises_naming_the_range(radius):
    with pytest.raises(ValueError, match=r"shift_average must be a whole number of pixels in \[0, "):
        Segmenter(ColumnRamp(), RES, shift_average=radius)


@keras.saving.register_keras_serializable(package="keras_layered_tests")
class DictOfConstant(keras.layers.Layer):
    """{"mask": this constant everywhere}, as a GeneratorInversion returns its mask in a dict."""

    def __init__(self, value, **kwargs):
        super().__init__(**kwargs)
        self.value = value

    def call(self, images):
        return {"mask": keras.ops.ones_like(images[..., :1]) * self.value, "latent": images[:, 0, 0]}

    def get_config(self):
        return {**super().get_config(), "value": self.value}


def test_mask_ensemble_is_the_weighted_mean_with_each_members_mirror_average(tmp_path):
    x = uint8_images(3, seed=16)
    channel = x[..., :1].astype("float64") / 255.0
    ramp = np.linspace(0.0, 1.0, RES).reshape(1, 1, RES, 1)
    ensemble = MaskEnsemble([ColumnRamp(), ColumnRamp(), DictOfConstant(0.5)], [0.5, 0.3, 0.2],
                            flip_average=[True, False, True])
    # 0.5 * the ramp's mirror average (channel / 2 everywhere) + 0.3 * the plain ramp + 0.2 * 0.5
    expected = 0.5 * channel * 0.5 + 0.3 * channel * ramp + 0.1
    segmenter = Segmenter(ensemble, RES)
    np.testing.assert_allclose(numpy(segmenter(x)), expected, atol=1e-5)
    segmenter.save(tmp_path / "ensemble.keras")
    loaded = keras.saving.load_model(tmp_path / "ensemble.keras")
    assert isinstance(loaded.network, MaskEnsemble)
    assert loaded.network.shares == [0.5, 0.3, 0.2] and loaded.network.flip_average == [True, False, True]
    np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, atol=1e-5)


def test_mask_ensemble_of_the_two_segmenters_matches_their_masks(segmenters):
    x = uint8_images(4, seed=17)
    unet, inversion = segmenters["unet"], segmenters["inversion"]
    mirrored = numpy(unet(x[:, :, ::-1]))[:, :, ::-1]
    expected = LargestComponent()(0.6 * (numpy(unet(x)) + mirrored) / 2.0 + 0.4 * numpy(inversion(x)))
    np.testing.assert_allclose(numpy(segmenters["ensemble"](x)), numpy(expected), atol=1e-5)


def test_mask_ensemble_config_round_trip_and_refine_steps_of_its_members(inversion):
    ensemble = MaskEnsemble([ColumnRamp(), inversion], [0.75, 0.25], flip_average=[False, True])
    clone = MaskEnsemble.from_config(ensemble.get_config())
    assert clone.shares == [0.75, 0.25] and clone.flip_average == [False, True]
    assert [type(n) for n in clone.networks] == [ColumnRamp, GeneratorInversion]
    assert ensemble.refine_steps == 0
    refining = GeneratorInversion(inversion.encoder, inversion.generator, refine_steps=7)
    assert MaskEnsemble([ColumnRamp(), refining], [0.5, 0.5]).refine_steps == 7
    assert MaskEnsemble([ColumnRamp()], [1.0]).flip_average == [False]


@pytest.mark.parametrize("shares, flips, message", [
    ([0.5, 0.4], None, "sum to 1"),
    ([1.5, -0.5], None, "lie in \\[0, 1\\]"),
    ([1.0], None, "one share and one flip_average per network, got 2 networks, 1 shares"),
    ([0.5, 0.5], [True], "2 networks, 2 shares and 1 flip_average"),
])
def test_mask_ensemble_bad_shares_raise_naming_the_problem(shares, flips, message):
    with pytest.raises(ValueError, match=message):
        MaskEnsemble([ColumnRamp(), ColumnRamp()], shares, flip_average=flips)


@keras.saving.register_keras_serializable(package="keras_layered_tests")
class FixedMask(keras.layers.Layer):
    """The same mask for every image: one row of the given values, zeros below."""

    def __init__(self, values, **kwargs):
        super().__init__(**kwargs)
        self.values = list(values)

    def call(self, images):
        row = keras.ops.reshape(keras.ops.convert_to_tensor(self.values, "float32"), (1, 1, -1, 1))
        mask = keras.ops.pad(row, [[0, 0], [0, len(self.values) - 1], [0, 0], [0, 0]])
        return keras.ops.zeros_like(images[..., :1]) + mask

    def get_config(self):
        return {**super().get_config(), "values": self.values}


def test_segmenter_threshold_puts_that_level_at_one_half_and_survives_saving(tmp_path):
    values = [0.0, 0.1, 0.3, 0.4, 0.7, 1.0, 0.0, 0.45]
    x = uint8_images(2, seed=18)
    plain = numpy(Segmenter(FixedMask(values), RES)(x))[0, 0, :, 0]
    np.testing.assert_array_equal(plain, np.float32(values))  # 0.5: the masks as the network made them
    calibrated = Segmenter(FixedMask(values), RES, threshold=0.4)
    # [0, 0.4] -> [0, 0.5] and [0.4, 1] -> [0.5, 1], linearly.
    expected = [0.0, 0.125, 0.375, 0.5, 0.75, 1.0, 0.0, 0.5 + 0.05 / 1.2]
    np.testing.assert_allclose(numpy(calibrated(x))[0, 0, :, 0], expected, atol=1e-6)
    # With the largest-region step: the region above 0.4 of the network's mask (columns 4-5; column 7
    # is detached from it), at the rescaled values.
    largest = Segmenter(FixedMask(values), RES, largest_component=True, threshold=0.4)
    kept = numpy(largest(x))[0, 0, :, 0]
    np.testing.assert_allclose(kept, [0.0, 0.125, 0.375, 0.5, 0.75, 1.0, 0.0, 0.0], atol=1e-6)
    largest.save(tmp_path / "calibrated.keras")
    loaded = keras.saving.load_model(tmp_path / "calibrated.keras")
    assert loaded.threshold == 0.4
    np.testing.assert_allclose(loaded.predict(x, verbose=0)[0, 0, :, 0], kept, atol=1e-6)


@pytest.mark.parametrize("threshold", [0.0, 1.0, -0.2])
def test_segmenter_bad_threshold_raises_naming_the_range(threshold):
    with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\)"):
        Segmenter(FixedMask([0.5]), RES, threshold=threshold)


BAD_SHAPES = {"rgba": (2, RES, RES, 4), "no_batch_axis": (RES, RES, 3), "wrong_size": (2, 2 * RES, 2 * RES, 3),
              "not_square": (2, RES, 2 * RES, 3)}


@pytest.mark.parametrize("name", BAD_SHAPES)
def test_segmenter_bad_shape_raises_when_called(name):
    with pytest.raises(ValueError, match=SHAPE_MESSAGE) as info:
        tiny_unet_segmenter()(np.zeros(BAD_SHAPES[name], "float32"))
    assert f"(batch, {RES}, {RES}, 3)" in str(info.value)


@pytest.mark.parametrize("name", BAD_SHAPES)
def test_segmenter_bad_shape_raises_in_first_predict(name):
    # The first trace sees the static shape, so the Python check raises while tracing.
    with pytest.raises(ValueError, match=SHAPE_MESSAGE):
        tiny_unet_segmenter().predict(np.zeros(BAD_SHAPES[name], "float32"), verbose=0)


@pytest.mark.parametrize("name", ["rgba", "wrong_size", "not_square", "no_batch_axis"])
def test_segmenter_bad_shape_raises_in_predict_after_good_batches(name):
    """After a good batch, `predict` retraces with relaxed (unknown) dimensions, so the shape is
    checked when the graph runs and TensorFlow raises InvalidArgumentError carrying the message."""
    segmenter = tiny_unet_segmenter()
    assert segmenter.predict(uint8_images(2), verbose=0).shape == (2, RES, RES, 1)
    with pytest.raises(tf.errors.InvalidArgumentError, match=SHAPE_MESSAGE):
        segmenter.predict(np.zeros(BAD_SHAPES[name], "uint8"), verbose=0)
    assert segmenter.predict(uint8_images(3), verbose=0).shape == (3, RES, RES, 1)  # still serves good batches


def test_segmenter_bad_shape_raises_at_run_time_for_free_dimensions():
    segmenter = tiny_unet_segmenter()
    free = tf.TensorSpec((None, None, None, None), tf.uint8)

    def dataset(x):
        one_batch = tf.data.Dataset.from_generator(lambda: iter([x]), output_signature=free)
        return one_batch.apply(tf.data.experimental.assert_cardinality(1))

    assert segmenter.predict(dataset(uint8_images(2)), verbose=0).shape == (2, RES, RES, 1)
    with pytest.raises(tf.errors.InvalidArgumentError, match=SHAPE_MESSAGE):
        segmenter.predict(dataset(np.zeros(BAD_SHAPES["rgba"], "uint8")), verbose=0)


FRESH_PROCESS = textwrap.dedent("""
    import os, sys
    os.environ["KERAS_BACKEND"] = "tensorflow"
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import numpy as np
    import keras
    import keras_layered
    root, kinds = sys.argv[1], sys.argv[2:]
    x = np.load(root + "/images.npy")
    out = {}
    for kind in kinds:
        segmenter = keras.saving.load_model(f"{root}/{kind}.keras")
        out[kind] = segmenter.predict(x, verbose=0)
        out[kind + "/network"] = np.array(type(segmenter.network).__name__)
    np.savez(root + "/masks.npz", **out)
""")


def test_segmenter_keras_round_trip_with_only_the_package_import(segmenters, tmp_path):
    x = uint8_images(4, seed=13)
    np.save(tmp_path / "images.npy", x)
    for kind, segmenter in segmenters.items():
        segmenter.save(tmp_path / f"{kind}.keras")
        loaded = keras.saving.load_model(tmp_path / f"{kind}.keras")
        assert isinstance(loaded, Segmenter) and type(loaded.network) is type(segmenter.network)
        assert loaded.resolution == RES
        np.testing.assert_array_equal(numpy(loaded(x)), numpy(segmenter(x)), err_msg=kind)
    proc = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(tmp_path), *segmenters],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    fresh = np.load(tmp_path / "masks.npz")
    assert str(fresh["unet/network"]) == "UNet" and str(fresh["inversion/network"]) == "GeneratorInversion"
    for kind, segmenter in segmenters.items():
        np.testing.assert_allclose(fresh[kind], segmenter.predict(x, verbose=0), atol=1e-6, err_msg=kind)


def test_inversion_mismatched_resolution_raises_with_the_fix():
    with pytest.raises(ValueError, match="resolution=8"):
        GeneratorInversion(Encoder(16, 4, 16, 8, 16), LayeredGenerator(8, 4, 16, 8))


# Latent refinement at inference


def test_refine_latents_lowers_the_reconstruction_error_per_image():
    from keras_layered.layers import composite
    from keras_layered.models.latent_refinement import refine_latents

    keras.utils.set_random_seed(5)
    generator = tiny_generator()
    rng = np.random.default_rng(6)
    z = rng.standard_normal((6, LATENT)).astype("float32")
    layers = generator(z)
    target = numpy(composite(layers["background"], layers["foreground"], layers["mask"]))
    start = z + rng.normal(scale=0.7, size=z.shape).astype("float32")

    def errors(latents):
        out = generator(latents)
        return np.mean(np.abs(numpy(composite(out["background"], out["foreground"], out["mask"])) - target), axis=(1, 2, 3))

    refined = numpy(refine_latents(generator, start, target, steps=30, learning_rate=0.05))
    assert np.all(errors(refined) < errors(start))
    np.testing.assert_array_equal(numpy(refine_latents(generator, start, target, 0, 0.05)), start)
    # Each image's refinement is its own: the first three alone give the same latents.
    np.testing.assert_allclose(numpy(refine_latents(generator, start[:3], target[:3], 30, 0.05)), refined[:3],
                               atol=1e-5)


def test_inversion_refines_only_at_inference(tmp_path):
    keras.utils.set_random_seed(7)
    encoder, generator = tiny_encoder(), tiny_generator()
    plain = GeneratorInversion(encoder, generator, refine_steps=0)
    refined = GeneratorInversion(encoder, generator, refine_steps=5, refine_learning_rate=0.05)
    x = images(3, seed=8)
    np.testing.assert_allclose(numpy(refined(x, training=True)["latent"]), numpy(plain(x)["latent"]))
    assert not np.allclose(numpy(refined(x)["latent"]), numpy(plain(x)["latent"]))
    segmenter = Segmenter(refined, RES)
    expected = numpy(segmenter(uint8_images(2)))
    segmenter.save(tmp_path / "refined.keras")
    loaded = keras.saving.load_model(tmp_path / "refined.keras")
    assert loaded.network.refine_steps == 5 and loaded.network.refine_learning_rate == 0.05
    np.testing.assert_allclose(numpy(loaded(uint8_images(2))), expected, atol=1e-6)
