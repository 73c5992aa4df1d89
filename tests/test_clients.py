"""The exported run as clients this project did not write use it: a Jupyter kernel running the
example notebook, TF Serving's REST (and gRPC) request formats, `saved_model_cli run` and
onnxruntime; each must give `segmenter.predict`'s masks."""

import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path

import keras
import nbclient
import nbformat
import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner
from PIL import Image

from helpers import config_with

from keras_layered.data.synthetic import make_scenes
from keras_layered.evaluation import mask_scores
from keras_layered.models import Segmenter
from keras_layered.segment import segment_images

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "segment_images.ipynb"
RES = 8
HAVE_ONNX = all(importlib.util.find_spec(name) for name in ("tf2onnx", "onnxruntime"))
TINY = {
    "data": {"resolution": RES, "eval_scenes": 8},
    "model": {"latent_dim": 8, "base_width": 16, "min_width": 8, "d_base_width": 16, "d_min_width": 8},
    "train": {"steps": 2, "steps_per_epoch": 2, "batch_size": 4, "sample_every": 2, "checkpoint_every": 2},
    # The served U-Net with the largest-component loop and the mirror-image average, as the
    # shipped recipe serves it.
    "segment": {"encoder": False, "steps": 2, "steps_per_epoch": 2, "batch_size": 4, "unet_width": 4,
                "unet_depth": 2, "largest_component": True, "unet_flip_average": True},
}

from keras_layered import cli


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from keras_layered.training import run

    run_dir = tmp_path_factory.mktemp("run")
    run.train(config_with(TINY), run_dir, verbose=0)
    return run_dir


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
    """`python cli.py export` of the run (with --onnx where the extra is installed): its directory and output."""
    out = tmp_path_factory.mktemp("exported")
    args = ["export", "--run", str(run_dir), "--out", str(out)] + (["--onnx"] if HAVE_ONNX else [])
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 0, result.output
    return types.SimpleNamespace(dir=out, output=result.output)


@pytest.fixture(scope="module")
def segmenter(run_dir):
    model = keras.saving.load_model(run_dir / "segmenter.keras")
    assert model.largest_component and model.flip_average
    return model


def images():
    rng = np.random.default_rng(0)
    return {"uint8": rng.integers(0, 256, (4, RES, RES, 3)).astype("uint8"),
            "float": rng.random((4, RES, RES, 3)).astype("float32")}  # in [0, 1]


def test_export_prints_what_each_artifact_is_for_and_which_client_loads_it(exported):
    lines = {line.split("  ", 1)[0]: line for line in exported.output.splitlines() if "  " in line}
    uses = {"segmenter": ("TF Serving", "saved_model_cli run"), "generator": ("TF Serving",),
            "segmenter.keras": ("keras.saving.load_model", "import keras_layered", "segment_images.ipynb"),
            "generator.keras": ("keras.saving.load_model",)}
    if HAVE_ONNX:
        uses.update({"segmenter.onnx": ("onnxruntime", "float32"), "segmenter_uint8.onnx": ("onnxruntime", "uint8")})
    for name, clients in uses.items():
        line = lines[str(exported.dir / name)]
        assert (exported.dir / name).exists(), name
        for client in clients:
            assert client in line, (name, client)
    assert "signature 'serving_uint8':" in exported.output  # the signatures follow their SavedModel


# --- TF Serving ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(exported):
    """The exported segmenter SavedModel, loaded as TF Serving loads it (no keras_layered code runs)."""
    return tf.saved_model.load(str(exported.dir / "segmenter"))


def tf_serving_rest_predict(saved_model, body):
    """What TF Serving's REST `:predict` does with a JSON body in the row format: "instances" is a
    list of per-example values (a signature with one input) or of {input name: value} objects;
    each input becomes a tensor of the signature's dtype; the response's "predictions" is one
    value per example (one output) or one {output name: value} object per example."""
    request = json.loads(body)
    signature = saved_model.signatures[request.get("signature_name", "serving_default")]
    _, specs = signature.structured_input_signature
    instances = request["instances"]
    if all(isinstance(instance, dict) for instance in instances):
        columns = {name: [instance[name] for instance in instances] for name in specs}
    else:
        (name,) = specs
        columns = {name: instances}
    tensors = {name: tf.constant(np.asarray(values, specs[name].dtype.as_numpy_dtype))
               for name, values in columns.items()}
    outputs = {name: value.numpy().tolist() for name, value in signature(**tensors).items()}
    if len(outputs) == 1:
        predictions = next(iter(outputs.values()))
    else:
        predictions = [dict(zip(outputs, row)) for row in zip(*outputs.values())]
    return json.dumps({"predictions": predictions})


@pytest.mark.parametrize("signature, dtype, named", [
    ("serving_uint8", "uint8", False),
    ("serving_uint8", "uint8", True),  # {"images": ...} per instance
    (None, "float", False),  # no signature_name: serving_default
    ("serving_default", "uint8", False),  # 0..255 integers sent to the float32 signature
])
def test_rest_request_gives_the_masks_of_predict(served, segmenter, signature, dtype, named):
    pictures = images()[dtype]
    instances = [{"images": image.tolist()} for image in pictures] if named else pictures.tolist()
    body = json.dumps({**({"signature_name": signature} if signature else {}), "instances": instances})
    response = json.loads(tf_serving_rest_predict(served, body))
    masks = np.asarray(response["predictions"], np.float32)
    assert masks.shape == (4, RES, RES, 1)
    np.testing.assert_allclose(masks, segmenter.predict(pictures, verbose=0), atol=1e-5)


def test_saved_model_cli_run_gives_the_masks_of_predict(exported, segmenter, tmp_path):
    """TensorFlow's own command-line client, in its own process (a TF1 session on the SignatureDef)."""
    script = Path(sys.executable).with_name("saved_model_cli")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]
    np.save(tmp_path / "images.npy", images()["uint8"])
    proc = subprocess.run(
        [*command, "run", "--dir", str(exported.dir / "segmenter"), "--tag_set", "serve",
         "--signature_def", "serving_uint8", "--inputs", f"images={tmp_path / 'images.npy'}",
         "--outdir", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    masks = np.load(tmp_path / "out" / "mask.npy")
    np.testing.assert_allclose(masks, segmenter.predict(images()["uint8"], verbose=0), atol=1e-5)


def test_grpc_predict_request_gives_the_masks_of_predict(served, segmenter):
    """The gRPC request of docs/serving.md, serialized and handled as the server does (TensorProto in and out)."""
    predict_pb2 = pytest.importorskip("tensorflow_serving.apis.predict_pb2")
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "segmenter"
    request.model_spec.signature_name = "serving_uint8"
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(images()["uint8"]))
    received = predict_pb2.PredictRequest.FromString(request.SerializeToString())
    signature = served.signatures[received.model_spec.signature_name]
    outputs = signature(**{k: tf.constant(tf.make_ndarray(v)) for k, v in received.inputs.items()})
    response = predict_pb2.PredictResponse()
    for name, value in outputs.items():
        response.outputs[name].CopyFrom(tf.make_tensor_proto(value.numpy()))
    masks = tf.make_ndarray(predict_pb2.PredictResponse.FromString(response.SerializeToString()).outputs["mask"])
    np.testing.assert_allclose(masks, segmenter.predict(images()["uint8"], verbose=0), atol=1e-5)


# --- ONNX ------------------------------------------------------------------------------------------


@pytest.mark.skipif(not HAVE_ONNX, reason="the onnx extra (tf2onnx, onnxruntime) is not installed")
@pytest.mark.parametrize("dtype, name", [("float", "segmenter.onnx"), ("uint8", "segmenter_uint8.onnx")])
def test_onnx_masks_equal_the_keras_models(exported, segmenter, dtype, name):
    import onnx
    import onnxruntime

    session = onnxruntime.InferenceSession(str(exported.dir / name), providers=["CPUExecutionProvider"])
    pictures = images()[dtype]
    masks = session.run(["mask"], {"images": pictures})[0]
    expected = segmenter.predict(pictures, verbose=0)
    np.testing.assert_allclose(masks, expected, atol=1e-4)
    # The largest-component loop is in the ONNX graph: it removed regions the network found.
    plain = Segmenter(segmenter.network, RES, flip_average=True).predict(pictures, verbose=0)
    assert ((plain > 0.5) & (masks <= 0.5)).any()
    # Its areas are one scatter-add, linear in the pixels, not tf2onnx's (segments x largest
    # segment) matrix of a segment sum.
    nodes = onnx.load(exported.dir / name).graph.node
    assert [n.op_type for n in nodes if n.op_type in ("ScatterElements", "ScatterND", "Unique")] == ["ScatterElements"]
    (scatter,) = [n for n in nodes if n.op_type == "ScatterElements"]
    assert {a.name: a.s for a in scatter.attribute}.get("reduction") == b"add"


def test_onnx_export_refuses_latent_refinement_naming_the_alternatives(tmp_path):
    pytest.importorskip("tf2onnx")
    from keras_layered.export import export_onnx
    from keras_layered.models import Encoder, GeneratorInversion, LayeredGenerator

    generator = LayeredGenerator(RES, 4, base_width=16, min_width=8)
    encoder = Encoder(RES, 4, base_width=16, min_width=8, hidden_dim=16)
    refining = Segmenter(GeneratorInversion(encoder, generator, refine_steps=3), RES)
    with pytest.raises(ValueError, match=r"3 gradient steps \(segment.refine_steps\).*--method distilled"):
        export_onnx(refining, tmp_path / "onnx")
    assert not (tmp_path / "onnx").exists()


def test_onnx_export_refuses_an_ensemble_whose_encoder_path_refines(tmp_path):
    pytest.importorskip("tf2onnx")
    from keras_layered.export import export_onnx
    from keras_layered.models import Encoder, GeneratorInversion, LayeredGenerator, MaskEnsemble, UNet

    inversion = GeneratorInversion(Encoder(RES, 4, base_width=16, min_width=8, hidden_dim=16),
                                   LayeredGenerator(RES, 4, base_width=16, min_width=8), refine_steps=5)
    ensemble = Segmenter(MaskEnsemble([UNet(RES, width=4, depth=2), inversion], [0.5, 0.5]), RES)
    with pytest.raises(ValueError, match=r"5 gradient steps \(segment.refine_steps\)"):
        export_onnx(ensemble, tmp_path / "onnx")


@pytest.mark.skipif(not HAVE_ONNX, reason="the onnx extra (tf2onnx, onnxruntime) is not installed")
def test_onnx_export_of_an_ensemble_matches_its_masks(tmp_path):
    import onnxruntime

    from keras_layered.export import export_onnx
    from keras_layered.models import Encoder, GeneratorInversion, LayeredGenerator, MaskEnsemble, UNet

    keras.utils.set_random_seed(0)
    inversion = GeneratorInversion(Encoder(RES, 4, base_width=16, min_width=8, hidden_dim=16),
                                   LayeredGenerator(RES, 4, base_width=16, min_width=8), refine_steps=0)
    ensemble = Segmenter(MaskEnsemble([UNet(RES, width=4, depth=2), inversion], [0.7, 0.3],
                                      flip_average=[True, True]), RES, largest_component=True, threshold=0.4)
    ensemble.build((None, RES, RES, 3))
    paths = export_onnx(ensemble, tmp_path / "onnx", dtypes=("uint8",))
    images = np.random.default_rng(3).integers(0, 256, (4, RES, RES, 3)).astype("uint8")
    session = onnxruntime.InferenceSession(str(paths["uint8"]), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(["mask"], {"images": images})[0], ensemble.predict(images, verbose=0),
                               atol=1e-5)


@pytest.mark.skipif(not HAVE_ONNX, reason="the onnx extra (tf2onnx, onnxruntime) is not installed")
def test_onnx_export_of_a_mixed_precision_segmenter_computes_in_float32(tmp_path):
    """onnxruntime has no bfloat16 convolutions on CPU: a model trained under mixed_bfloat16 (the
    shipped recipe on CPUs with AVX512_BF16) is converted as its float32 copy."""
    import onnxruntime

    from keras_layered.export import export_onnx, in_float32
    from keras_layered.models import UNet

    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")  # the conftest fixture restores float32
    keras.utils.set_random_seed(0)
    mixed = Segmenter(UNet(RES, width=4, depth=2), RES, largest_component=True)
    mixed.build((None, RES, RES, 3))
    float32 = in_float32(mixed)
    assert keras.mixed_precision.dtype_policy().name == "mixed_bfloat16"  # left as it was
    assert mixed.network.compute_dtype == "bfloat16" and float32.network.compute_dtype == "float32"
    for copied, original in zip(float32.get_weights(), mixed.get_weights(), strict=True):
        np.testing.assert_array_equal(copied, original)
    assert in_float32(float32) is float32
    path = export_onnx(mixed, tmp_path, dtypes=("float32",))["float32"]
    assert [p.name for p in tmp_path.iterdir()] == ["segmenter.onnx"]
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    pictures = images()["float"]
    np.testing.assert_allclose(session.run(["mask"], {"images": pictures})[0], float32.predict(pictures, verbose=0),
                               atol=1e-4)


@pytest.mark.skipif(not HAVE_ONNX, reason="the onnx extra (tf2onnx, onnxruntime) is not installed")
def test_onnx_export_checks_the_converted_masks(exported, tmp_path, monkeypatch):
    """A conversion that gives other masks is refused, not written: here another U-Net's export
    gets the run's segmenter's ONNX graph."""
    import onnx
    import tf2onnx

    from keras_layered.export import export_onnx
    from keras_layered.models import UNet

    keras.utils.set_random_seed(5)
    other = Segmenter(UNet(RES, width=4, depth=2), RES, largest_component=True)
    converted = onnx.load(exported.dir / "segmenter.onnx")
    monkeypatch.setattr(tf2onnx.convert, "from_function", lambda *args, **kwargs: (converted, None))
    with pytest.raises(RuntimeError, match="float32 segmenter's masks differ from the Keras model's by up to"):
        export_onnx(other, tmp_path)
    assert not list(tmp_path.iterdir())


def test_export_onnx_without_the_extra_names_it(run_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tf2onnx", None)  # import tf2onnx now raises ImportError
    result = CliRunner().invoke(cli.main, ["export", "--run", str(run_dir), "--out", str(tmp_path / "out"), "--onnx"])
    assert result.exit_code == 2 and 'pip install -e ".[onnx]"' in result.output, result.output
    assert not (tmp_path / "out" / "segmenter").exists()  # refused before writing anything


# --- the notebook ----------------------------------------------------------------------------------


def test_committed_notebook_has_no_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(cell.outputs == [] and cell.execution_count is None for cell in code)
    assert notebook.metadata.kernelspec.name == "python3"


@pytest.mark.slow
def test_notebook_runs_top_to_bottom_in_a_jupyter_kernel(run_dir, segmenter, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_LAYERED_RUN", str(run_dir))
    monkeypatch.setenv("KERAS_LAYERED_MASKS", str(tmp_path / "masks"))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(notebook, timeout=300, resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    text = "".join(output.get("text", "") for output in outputs if output.output_type == "stream")
    assert any("image/png" in output.get("data", {}) for output in outputs)  # the matplotlib figure
    # The notebook's numbers are predict's on the run's held-out scenes.
    data = config_with(TINY).data
    scenes = make_scenes(tf.range(6), RES, seed=data.eval_seed, difficulty=data.difficulty, edges=data.edges)
    pictures = np.round((scenes["image"].numpy() + 1.0) * 127.5).astype("uint8")
    masks = segmenter.predict(pictures, verbose=0)
    iou = mask_scores(masks, scenes["mask"].numpy())["iou"].mean()
    assert f"mean IoU over 6 held-out scenes: {iou:.4f}" in text, text
    assert f"wrote 6 masks and 6 cut-outs to {tmp_path / 'masks'}" in text, text
    # The folder cell segmented the scenes it wrote as PNG files, with the run's geometry (shorter
    # side to crop_scale x R, centre crop, mask put back), as `segment` does.
    reference = segment_images(segmenter, run_dir / "notebook_scenes", tmp_path / "reference",
                               crop_scale=data.crop_scale)
    assert len(reference.masks) == 6
    for i in range(6):
        written = np.asarray(Image.open(tmp_path / "masks" / f"scene_{i}.png"))
        np.testing.assert_array_equal(written, np.asarray(Image.open(tmp_path / "reference" / f"scene_{i}.png")))
        assert set(np.unique(written)) <= {0, 255}
