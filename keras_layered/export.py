"""Export for serving: TensorFlow SavedModels (for TF Serving), `.keras` files of a trained run, and
ONNX models of the segmenter (for onnxruntime; needs the `onnx` extra: tf2onnx + onnxruntime).

TensorFlow only: a SavedModel is a TensorFlow graph, whatever Keras backend trained the weights.
"""

import logging
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from keras_layered.layers import composite

__all__ = ["describe_signatures", "export_generator", "export_onnx", "export_run", "export_segmenter"]

log = logging.getLogger("keras_layered")


def _archive(model, input_shape):
    if not model.built:
        model.build(input_shape)
    archive = keras.export.ExportArchive()
    archive.track(model)
    return archive


def _segment_function(segmenter, dtype):
    r = segmenter.resolution
    spec = tf.TensorSpec([None, r, r, 3], dtype, name="images")

    def segment(images):
        return {"mask": segmenter(images)}

    return segment, spec


def export_segmenter(segmenter, directory):
    """Writes `segmenter` as a SavedModel with two signatures, both returning {"mask": float32
    (None, R, R, 1) in [0, 1]} for R = `segmenter.resolution`:

    - `serving_default`: `images`, float32 (None, R, R, 3), in [0, 1] or in [0, 255] (an image
      whose maximum exceeds 2 is read as [0, 255], per image; see
      `keras_layered.models.segmenter.Segmenter`). TF Serving's JSON API lands here. A numpy
      uint8 array works too (it is converted to float32 keeping its values 0..255), but a
      `tf.uint8` Tensor is refused with an InvalidArgumentError: send those to `serving_uint8`.
    - `serving_uint8`: `images`, uint8 (None, R, R, 3) in [0, 255], for clients sending raw bytes
      (a gRPC `TensorProto` of dtype DT_UINT8).

    Called from Python, a loaded signature refuses images of another shape with a TypeError naming
    the shape.
    Returns `directory` as a Path.
    """
    r = segmenter.resolution
    archive = _archive(segmenter, (None, r, r, 3))
    for name, dtype in (("serving_default", tf.float32), ("serving_uint8", tf.uint8)):
        segment, spec = _segment_function(segmenter, dtype)
        archive.add_endpoint(name, segment, input_signature=[spec])
    archive.write_out(str(directory), verbose=False)
    return Path(directory)


def export_generator(generator, directory):
    """Writes `generator` as a SavedModel whose `serving_default` signature maps `z`, float32
    (None, latent_dim), to {"composite", "background", "foreground": float32 (None, R, R, 3) in
    [-1, 1], "mask": float32 (None, R, R, 1) in [0, 1]}, always in inference mode (BatchNorm
    moving statistics). Returns `directory` as a Path.
    """
    archive = _archive(generator, (None, generator.latent_dim))

    def generate(z):
        layers = generator(z, training=False)
        return {
            "composite": composite(layers["background"], layers["foreground"], layers["mask"]),
            "background": layers["background"],
            "foreground": layers["foreground"],
            "mask": layers["mask"],
        }

    spec = tf.TensorSpec([None, generator.latent_dim], tf.float32, name="z")
    archive.add_endpoint("serving_default", generate, input_signature=[spec])
    archive.write_out(str(directory), verbose=False)
    return Path(directory)


ONNX_FILES = {"float32": "segmenter.onnx", "uint8": "segmenter_uint8.onnx"}
ONNX_OPSET = 17  # 16+: ScatterElements adds duplicates (reduction="add")


def _with_float32_policies(config):
    if isinstance(config, dict):
        if config.get("class_name") == "DTypePolicy":
            return {**config, "config": {**config["config"], "name": "float32"}}
        return {key: _with_float32_policies(value) for key, value in config.items()}
    if isinstance(config, list):
        return [_with_float32_policies(value) for value in config]
    return config


def _segment_sum_as_scatter_add(ctx, node, name, args):
    """tf2onnx handler: UnsortedSegmentSum(data, ids, n) of 1-D data as one ScatterElements adding
    into n zeros (opset 16+). tf2onnx's own conversion builds an (n, largest segment) matrix: for
    LargestComponent's areas, 530 MB and 4x the SavedModel's time at 64 images of 32 px."""
    from onnx import TensorProto, numpy_helper
    from tf2onnx.graph_builder import GraphBuilder
    from tf2onnx.utils import map_onnx_to_numpy_type

    data, ids, num_segments = node.input
    if ctx.get_rank(data) != 1:
        raise ValueError(f"ONNX export: segment sums of 1-D data only, {node.name} sums rank {ctx.get_rank(data)}")
    ids, num_segments = (ctx.make_node("Cast", [t], attr={"to": TensorProto.INT64}).output[0]
                         if ctx.get_dtype(t) != TensorProto.INT64 else t for t in (ids, num_segments))
    shape = GraphBuilder(ctx).make_unsqueeze({"data": num_segments, "axes": [0]})
    zero = numpy_helper.from_array(np.zeros([1], map_onnx_to_numpy_type(ctx.get_dtype(data))))
    zeros = ctx.make_node("ConstantOfShape", [shape], attr={"value": zero}).output[0]
    node.type = "ScatterElements"
    ctx.replace_inputs(node, [zeros, ids, data])
    node.set_attr("axis", 0)
    node.set_attr("reduction", "add")
    return node


def in_float32(segmenter):
    """`segmenter` itself if it computes in float32, else a copy with its weights that does: a
    model built under mixed precision (bfloat16 / float16 layers) rebuilt under float32 policies."""
    config = keras.saving.serialize_keras_object(segmenter)
    float32 = _with_float32_policies(config)
    if float32 == config:
        return segmenter
    previous = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy("float32")  # for the layers built without a dtype
    try:
        copy = keras.saving.deserialize_keras_object(float32)
    finally:
        keras.mixed_precision.set_dtype_policy(previous)
    copy.set_weights(segmenter.get_weights())
    return copy


def export_onnx(segmenter, directory, dtypes=("float32", "uint8")):
    """Writes `segmenter` as ONNX models (tf2onnx), one per input dtype in `dtypes`, like the
    SavedModel's two signatures: directory/segmenter.onnx takes `images` float32 (None, R, R, 3)
    as `serving_default` does, directory/segmenter_uint8.onnx uint8 ones as `serving_uint8`; both
    output `mask` float32 (None, R, R, 1), `LargestComponent` included. A segmenter computing in
    bfloat16 or float16 (mixed precision) is converted in float32 (`in_float32`): onnxruntime's CPU
    kernels have no such convolutions. Each file is checked after conversion: onnxruntime's masks
    on random images must equal those of the (float32) segmenter within 1e-4.

    Raises ImportError naming the `onnx` extra if tf2onnx or onnxruntime is missing, and
    ValueError for an encoder path that refines latents (gradient steps inside the graph, which
    tf2onnx cannot convert). Returns {dtype: path}.
    """
    try:
        import onnxruntime
        import tf2onnx
    except ImportError as err:
        raise ImportError(f"ONNX export needs tf2onnx and onnxruntime ({err}): pip install -e \".[onnx]\"") from err
    refine_steps = getattr(segmenter.network, "refine_steps", 0)
    if refine_steps:
        raise ValueError(
            f"ONNX export: this segmenter refines each image's latent with {refine_steps} gradient steps "
            f"(segment.refine_steps), ops that tf2onnx cannot convert. Export the distilled U-Net "
            f"(`python cli.py export --method distilled --onnx`) or serve this one as a SavedModel.")
    float32 = in_float32(segmenter)
    if float32 is not segmenter:
        log.info("ONNX export: the segmenter computes in %s; its ONNX models compute in float32",
                 segmenter.dtype_policy.name)
    segmenter = float32
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    r = segmenter.resolution
    probe = np.random.default_rng(0).uniform(0, 255, (2, r, r, 3))
    paths = {}
    for dtype in dtypes:
        segment, spec = _segment_function(segmenter, tf.as_dtype(dtype))
        proto, _ = tf2onnx.convert.from_function(
            tf.function(segment), input_signature=[spec], opset=ONNX_OPSET,
            custom_op_handlers={"UnsortedSegmentSum": (_segment_sum_as_scatter_add, [])})
        images = probe.astype(dtype) if dtype == "uint8" else (probe / 255).astype(dtype)
        try:
            session = onnxruntime.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
            masks = session.run(["mask"], {"images": images})[0]
        except Exception as err:  # onnxruntime's errors share no public base class
            raise RuntimeError(f"ONNX export: onnxruntime cannot run the converted segmenter ({err}); "
                               f"serve the SavedModel instead") from err
        difference = np.abs(masks - keras.ops.convert_to_numpy(segmenter(images))).max()
        if difference > 1e-4:
            raise RuntimeError(f"ONNX export: the converted {dtype} segmenter's masks differ from the Keras "
                               f"model's by up to {difference:.2g}; serve the SavedModel instead")
        paths[dtype] = directory / ONNX_FILES[dtype]
        paths[dtype].write_bytes(proto.SerializeToString())
    return paths


def export_run(segmenter, generator, out_dir, onnx=False):
    """Writes out_dir/{segmenter, generator}/ (SavedModels, see above) and
    out_dir/{segmenter, generator}.keras; returns their paths under the keys "segmenter",
    "generator", "segmenter_keras" and "generator_keras". With `onnx`, also the segmenter's ONNX
    files (`export_onnx`) under "segmenter_onnx" and "segmenter_uint8_onnx".
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # ONNX first: what it refuses, it refuses before anything is written.
    onnx_paths = export_onnx(segmenter, out_dir) if onnx else {}
    paths = {
        "segmenter": export_segmenter(segmenter, out_dir / "segmenter"),
        "generator": export_generator(generator, out_dir / "generator"),
        "segmenter_keras": out_dir / "segmenter.keras",
        "generator_keras": out_dir / "generator.keras",
    }
    segmenter.save(paths["segmenter_keras"])
    generator.save(paths["generator_keras"])
    if onnx:
        paths.update(segmenter_onnx=onnx_paths["float32"], segmenter_uint8_onnx=onnx_paths["uint8"])
    return paths


def _tensor_line(key, info):
    shape = "unknown rank" if info.tensor_shape.unknown_rank else tuple(
        None if d.size == -1 else d.size for d in info.tensor_shape.dim
    )
    return f"    {key}: {tf.dtypes.as_dtype(info.dtype).name} {shape}"


def describe_signatures(saved_model_dir):
    """The serving signatures of a SavedModel, one block each listing its inputs and outputs with
    dtype and shape (None = any size), as TF Serving sees them (like `saved_model_cli show --all`).
    Reads only saved_model.pb; no variables are restored.
    """
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(str(Path(saved_model_dir) / "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    signatures = proto.meta_graphs[0].signature_def
    lines = []
    for name in sorted(n for n in signatures if not n.startswith("__")):  # skips the init op
        lines.append(f"signature '{name}':")
        for part in ("inputs", "outputs"):
            lines.append(f"  {part}:")
            tensors = getattr(signatures[name], part)
            lines += [_tensor_line(key, tensors[key]) for key in sorted(tensors)]
    return "\n".join(lines)
