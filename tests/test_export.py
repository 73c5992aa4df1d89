import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_layered.export import describe_signatures, export_run
from keras_layered.layers import LargestComponent, composite
from keras_layered.models import Encoder, GeneratorInversion, LayeredGenerator, MaskEnsemble, Segmenter, UNet

RES, LATENT = 8, 4
KINDS = ("unet", "inversion", "refined", "largest", "ensemble")
GENERATOR_KEYS = ("composite", "background", "foreground", "mask")


@pytest.fixture(scope="module")
def generator():
    keras.utils.set_random_seed(0)
    gen = LayeredGenerator(RES, LATENT, base_width=16, min_width=8, norm="batch")
    gen(inputs()["z"], training=True)  # moves the BatchNormalization statistics off their initial values
    return gen


@pytest.fixture(scope="module")
def segmenters(generator):
    keras.utils.set_random_seed(1)
    return {
        "unet": Segmenter(UNet(RES, width=8, depth=1), RES),
        "inversion": Segmenter(
            GeneratorInversion(Encoder(RES, LATENT, base_width=16, min_width=8, hidden_dim=16), generator,
                               refine_steps=0), RES
        ),
        # Latent refinement differentiates inside the served graph: it must export too.
        "refined": Segmenter(
            GeneratorInversion(Encoder(RES, LATENT, base_width=16, min_width=8, hidden_dim=16), generator,
                               refine_steps=3), RES
        ),
        # The largest-component loop (a tf.while_loop) in the served graph, on the synthetic
        # recipe's form of U-Net (capped channels, up-convolutions before the repeat, masks
        # averaged over the mirror image).
        "largest": Segmenter(UNet(RES, width=8, depth=2, max_width=8, low_res_upconv=True), RES,
                             largest_component=True, flip_average=True),
        # segment.serve: ensemble, as the photo recipe serves it.
        "ensemble": Segmenter(
            MaskEnsemble([UNet(RES, width=8, depth=1),
                          GeneratorInversion(Encoder(RES, LATENT, base_width=16, min_width=8, hidden_dim=16),
                                             generator, refine_steps=0)],
                         [0.7, 0.3], flip_average=[True, True]), RES, largest_component=True, threshold=0.4),
    }


def inputs():
    rng = np.random.default_rng(0)
    return {
        "uint8": rng.integers(0, 256, (4, RES, RES, 3)).astype("uint8"),
        "float": rng.random((4, RES, RES, 3)).astype("float32"),  # in [0, 1]
        "z": rng.standard_normal((4, LATENT)).astype("float32"),
    }


@pytest.fixture(scope="module")
def runs(segmenters, generator, tmp_path_factory):
    """export_run of each segmenter (with the same generator), in tmp/<kind>/."""
    root = tmp_path_factory.mktemp("export")
    return {kind: export_run(segmenters[kind], generator, root / kind) for kind in KINDS}


# SavedModels first, without keras_layered (they must stand alone), then the .keras files with
# nothing but `import keras_layered`.
FRESH_PROCESS = textwrap.dedent("""
    import os, sys
    os.environ["KERAS_BACKEND"] = "tensorflow"
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import numpy as np
    import tensorflow as tf
    root, kinds = sys.argv[1], sys.argv[2:]
    x = dict(np.load(root + "/inputs.npz"))
    out = {}
    for kind in kinds:
        seg = tf.saved_model.load(f"{root}/{kind}/segmenter").signatures
        out[f"{kind}/saved/uint8"] = seg["serving_default"](images=x["uint8"])["mask"]
        out[f"{kind}/saved/uint8_tensor"] = seg["serving_uint8"](images=tf.constant(x["uint8"]))["mask"]
        out[f"{kind}/saved/float"] = seg["serving_default"](images=x["float"])["mask"]
        gen = tf.saved_model.load(f"{root}/{kind}/generator").signatures["serving_default"]
        out.update({f"{kind}/saved/{k}": v for k, v in gen(z=tf.constant(x["z"])).items()})
    import keras
    import keras_layered
    for kind in kinds:
        seg = keras.saving.load_model(f"{root}/{kind}/segmenter.keras")
        out[f"{kind}/keras/uint8"] = seg.predict(x["uint8"], verbose=0)
        out[f"{kind}/keras/float"] = seg.predict(x["float"], verbose=0)
        gen = keras.saving.load_model(f"{root}/{kind}/generator.keras")
        out[f"{kind}/keras/mask"] = gen(x["z"], training=False)["mask"]
    np.savez(root + "/outputs.npz", **{k: np.asarray(v) for k, v in out.items()})
""")


@pytest.fixture(scope="module")
def fresh(runs):
    """Outputs of the exported files, loaded in one fresh interpreter for all kinds."""
    root = runs[KINDS[0]]["segmenter"].parents[1]
    np.savez(root / "inputs.npz", **inputs())
    proc = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(root), *KINDS],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(np.load(root / "outputs.npz"))


@pytest.mark.parametrize("kind", KINDS)
def test_saved_model_masks_match_predict(segmenters, fresh, kind):
    x = inputs()
    expected = {dtype: segmenters[kind].predict(x[dtype], verbose=0) for dtype in ("uint8", "float")}
    assert expected["uint8"].shape == (4, RES, RES, 1)
    # numpy uint8 through the float32 signature (read as [0, 255]) and a tf.uint8 tensor through
    # serving_uint8 both give the uint8 masks.
    for name, dtype in (("uint8", "uint8"), ("uint8_tensor", "uint8"), ("float", "float")):
        np.testing.assert_allclose(fresh[f"{kind}/saved/{name}"], expected[dtype], atol=1e-5, err_msg=name)
    assert not np.allclose(expected["uint8"], expected["float"])  # the inputs differ, so should the masks


@pytest.mark.parametrize("kind", KINDS)
def test_keras_round_trip_in_fresh_process(segmenters, generator, fresh, kind):
    x = inputs()
    for dtype in ("uint8", "float"):
        np.testing.assert_allclose(fresh[f"{kind}/keras/{dtype}"], segmenters[kind].predict(x[dtype], verbose=0),
                                   atol=1e-5, err_msg=dtype)
    expected = keras.ops.convert_to_numpy(generator(x["z"], training=False)["mask"])
    np.testing.assert_allclose(fresh[f"{kind}/keras/mask"], expected, atol=1e-5)


def test_exported_largest_component_removes_regions(segmenters, fresh):
    plain = Segmenter(segmenters["largest"].network, RES, flip_average=True).predict(inputs()["uint8"], verbose=0)
    saved = fresh["largest/saved/uint8"]
    assert ((plain > 0.5) & (saved <= 0.5)).any()  # regions the loops removed, in the served graph
    np.testing.assert_allclose(saved, keras.ops.convert_to_numpy(LargestComponent()(plain)), atol=1e-5)


def test_generator_saved_model_matches_inference_mode(generator, fresh):
    z = inputs()["z"]
    expected = {k: keras.ops.convert_to_numpy(v) for k, v in generator(z, training=False).items()}
    saved = {k: fresh[f"unet/saved/{k}"] for k in GENERATOR_KEYS}
    for key in ("background", "foreground", "mask"):
        np.testing.assert_allclose(saved[key], expected[key], atol=1e-5, err_msg=key)
    np.testing.assert_allclose(
        saved["composite"], composite(saved["background"], saved["foreground"], saved["mask"]), atol=1e-6
    )
    assert saved["composite"].shape == (4, RES, RES, 3) and saved["mask"].shape == (4, RES, RES, 1)
    # Batch statistics (training=True) would give other layers: the export uses the moving ones.
    # (On a copy, since a training call updates the moving statistics.)
    copy = LayeredGenerator.from_config(generator.get_config())
    copy.build((None, LATENT))
    copy.set_weights(generator.get_weights())
    training = keras.ops.convert_to_numpy(copy(z, training=True)["mask"])
    assert not np.allclose(saved["mask"], training, atol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_segmenter_signatures(runs, kind):
    signatures = tf.saved_model.load(str(runs[kind]["segmenter"])).signatures
    assert set(signatures) == {"serving_default", "serving_uint8"}
    for name, dtype in (("serving_default", tf.float32), ("serving_uint8", tf.uint8)):
        args, kwargs = signatures[name].structured_input_signature
        assert args == ()
        assert set(kwargs) == {"images"}
        assert kwargs["images"].dtype == dtype
        assert kwargs["images"].shape.as_list() == [None, RES, RES, 3]
        outputs = signatures[name].structured_outputs
        assert set(outputs) == {"mask"}
        assert outputs["mask"].dtype == tf.float32
        assert outputs["mask"].shape.as_list() == [None, RES, RES, 1]


def test_generator_signature(runs):
    signature = tf.saved_model.load(str(runs["unet"]["generator"])).signatures["serving_default"]
    _, kwargs = signature.structured_input_signature
    assert set(kwargs) == {"z"} and kwargs["z"].dtype == tf.float32
    assert kwargs["z"].shape.as_list() == [None, LATENT]
    outputs = signature.structured_outputs
    assert set(outputs) == set(GENERATOR_KEYS)
    for key in GENERATOR_KEYS:
        assert outputs[key].shape.as_list() == [None, RES, RES, 1 if key == "mask" else 3], key


def test_export_run_writes_all_paths(runs):
    paths = runs["unet"]
    assert set(paths) == {"segmenter", "generator", "segmenter_keras", "generator_keras"}
    assert (paths["segmenter"] / "saved_model.pb").is_file()
    assert (paths["generator"] / "saved_model.pb").is_file()
    assert paths["segmenter_keras"].is_file() and paths["generator_keras"].is_file()
    assert paths["segmenter_keras"].parent == paths["segmenter"].parent


def test_describe_signatures(runs):
    text = describe_signatures(runs["unet"]["segmenter"])
    assert "signature 'serving_default':" in text and "signature 'serving_uint8':" in text
    assert f"images: float32 (None, {RES}, {RES}, 3)" in text
    assert f"images: uint8 (None, {RES}, {RES}, 3)" in text
    assert f"mask: float32 (None, {RES}, {RES}, 1)" in text
    assert "__saved_model_init_op" not in text
    text = describe_signatures(runs["unet"]["generator"])
    assert f"z: float32 (None, {LATENT})" in text
    for key in GENERATOR_KEYS:
        assert f"    {key}: float32 (None, {RES}, {RES}, " in text, key


@pytest.mark.parametrize("shape", [(1, RES, RES, 4), (1, 2 * RES, 2 * RES, 3), (RES, RES, 3)])
def test_wrong_shape_raises(runs, shape):
    serve = tf.saved_model.load(str(runs["unet"]["segmenter"])).signatures["serving_default"]
    with pytest.raises(TypeError, match=r"shape=\(" + ", ".join(map(str, shape))):
        serve(images=np.zeros(shape, "float32"))


def test_uint8_tensor_needs_the_uint8_signature(runs):
    """As documented: a tf.uint8 Tensor is not converted by the float32 signature."""
    signatures = tf.saved_model.load(str(runs["unet"]["segmenter"])).signatures
    images = tf.constant(inputs()["uint8"])
    with pytest.raises(tf.errors.InvalidArgumentError, match="uint8"):
        signatures["serving_default"](images=images)
    assert signatures["serving_uint8"](images=images)["mask"].shape == (4, RES, RES, 1)


SHAPE_MESSAGE = rf"Segmenter: expected images of shape \(batch, {RES}, {RES}, 3\)"


@pytest.mark.parametrize("shape", [(2, RES, RES, 4), (2, RES, RES, 1), (RES, RES, 3), (1, 2, RES, RES, 3),
                                   (2, 2 * RES, 2 * RES, 3)])
@pytest.mark.parametrize("signature", ["serving_default", "serving_uint8"])
def test_saved_model_refuses_a_wrong_shape_tensor_with_the_expected_shape(runs, shape, signature):
    """A concrete signature does not check a tf.Tensor's shape: the guard inside the graph does,
    with the Segmenter's message (what to convert, that `segment` resizes), not a trace from a conv."""
    serve = tf.saved_model.load(str(runs["unet"]["segmenter"])).signatures[signature]
    dtype = tf.float32 if signature == "serving_default" else tf.uint8
    with pytest.raises(tf.errors.InvalidArgumentError, match=SHAPE_MESSAGE) as info:
        serve(images=tf.zeros(shape, dtype))
    assert "resize to" in str(info.value)


@pytest.mark.parametrize("dtype, signature, expected", [
    (tf.int32, "serving_default", "expected to be a float tensor but is a int32 tensor"),
    (tf.float64, "serving_default", "expected to be a float tensor but is a double tensor"),
    (tf.string, "serving_default", "expected to be a float tensor but is a string tensor"),
    (tf.float32, "serving_uint8", "expected to be a uint8 tensor but is a float tensor"),
])
def test_saved_model_refuses_a_wrong_dtype_tensor_naming_both_dtypes(runs, dtype, signature, expected):
    serve = tf.saved_model.load(str(runs["unet"]["segmenter"])).signatures[signature]
    images = tf.zeros((1, RES, RES, 3), dtype) if dtype != tf.string else tf.fill((1, RES, RES, 3), "x")
    with pytest.raises(tf.errors.InvalidArgumentError, match=expected):
        serve(images=images)


def test_saved_model_converts_numeric_numpy_arrays_of_another_dtype(runs, segmenters):
    """numpy arrays (unlike tf.Tensors) are converted to the signature's float32: an int array of
    0..255 values gives the masks of the same uint8 pixels."""
    serve = tf.saved_model.load(str(runs["unet"]["segmenter"])).signatures["serving_default"]
    pixels = inputs()["uint8"]
    expected = segmenters["unet"].predict(pixels, verbose=0)
    for dtype in ("int32", "float64"):
        np.testing.assert_allclose(serve(images=pixels.astype(dtype))["mask"].numpy(), expected, atol=1e-5,
                                   err_msg=dtype)
