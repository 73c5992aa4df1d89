"""Export for serving: TensorFlow SavedModels (for TF Serving) and `.keras` files of a trained run.

TensorFlow only: a SavedModel is a TensorFlow graph, whatever Keras backend trained the weights.
"""

from pathlib import Path

import keras
import tensorflow as tf

from keras_layered.layers import composite

__all__ = ["describe_signatures", "export_generator", "export_run", "export_segmenter"]


def _archive(model, input_shape):
    if not model.built:
        model.build(input_shape)
    archive = keras.export.ExportArchive()
    archive.track(model)
    return archive


def export_segmenter(segmenter, directory):
    """Writes `segmenter` as a SavedModel with two signatures, both returning {"mask": float32
    (None, R, R, 1) in [0, 1]} for R = `segmenter.resolution`:

    - `serving_default`: `images`, float32 (None, R, R, 3), in [0, 1] or in [0, 255] (an image
      whose maximum exceeds 2 is read as [0, 255], per image; see
      `keras_layered.models.segmenter.to_model_range`). TF Serving's JSON API lands here. A numpy
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

    def segment(images):
        return {"mask": segmenter(images)}

    for name, dtype in (("serving_default", tf.float32), ("serving_uint8", tf.uint8)):
        archive.add_endpoint(name, segment, input_signature=[tf.TensorSpec([None, r, r, 3], dtype, name="images")])
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


def export_run(segmenter, generator, out_dir):
    """Writes out_dir/{segmenter, generator}/ (SavedModels, see above) and
    out_dir/{segmenter, generator}.keras; returns their paths under the keys "segmenter",
    "generator", "segmenter_keras" and "generator_keras".
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "segmenter": export_segmenter(segmenter, out_dir / "segmenter"),
        "generator": export_generator(generator, out_dir / "generator"),
        "segmenter_keras": out_dir / "segmenter.keras",
        "generator_keras": out_dir / "generator.keras",
    }
    segmenter.save(paths["segmenter_keras"])
    generator.save(paths["generator_keras"])
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
