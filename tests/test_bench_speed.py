"""bench/speed.py: its FLOP count on hand-computed graphs, and one tiny run end to end."""

import importlib.util
import json
import sys

import pytest
import tensorflow as tf
from click.testing import CliRunner

from helpers import load_script

TINY = ["model.base_width=16", "model.min_width=8", "model.d_base_width=16", "model.d_min_width=8",
        "train.batch_size=8", "segment.batch_size=4", "segment.unet_width=4", "segment.unet_depth=2", "loss.penalty_every=4"]


def test_graph_flops_of_a_matmul_a_conditional_one_and_an_unused_one():
    speed = load_script("bench/speed.py")

    @tf.function
    def step(a, b, due):
        x = tf.matmul(a, b)  # (2, 3) @ (3, 4): 2 * 2 * 3 * 4 = 48 FLOPs
        tf.matmul(b, b, transpose_b=True)  # unused: pruned before running, not counted
        # (2, 4) @ (4, 2): 2 * 2 * 4 * 2 = 32 FLOPs, or a slice (none).
        return tf.cond(due, lambda: tf.matmul(x, tf.transpose(x)), lambda: x[:, :2])

    specs = [tf.TensorSpec((2, 3)), tf.TensorSpec((3, 4)), tf.TensorSpec((), tf.bool)]
    assert speed.graph_flops(step.get_concrete_function(*specs).graph) == (48, 32)


XEON = "vendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R)\ncpu MHz\t\t: 2100.000\nflags\t\t: avx2 fma avx512f avx512_bf16 amx_tile\n"


@pytest.mark.parametrize("isa, precision, gflops, why", [
    ("AVX2", "none", 2 * 2.1 * 32, "32 FP32 FLOPs/cycle (AVX2: two 256-bit FMA pipes)"),
    ("AVX2", "mixed_bfloat16", 2 * 2.1 * 32, "32 FP32"),  # no bfloat16 instructions under AVX2
    ("AVX-512", "none", 2 * 2.1 * 64, "64 FP32 FLOPs/cycle (AVX-512: two 512-bit FMA units)"),
    ("AVX-512", "mixed_bfloat16", 2 * 2.1 * 128, "128 BF16 FLOPs/cycle"),
])
def test_cpu_peak_of_the_isa_in_use(isa, precision, gflops, why, tmp_path, monkeypatch):
    speed = load_script("bench/speed.py")
    (tmp_path / "cpuinfo").write_text(XEON)
    monkeypatch.setattr(speed.os, "cpu_count", lambda: 2)
    peak, how = speed.cpu_peak(precision, isa, tmp_path / "cpuinfo")
    assert peak == pytest.approx(gflops) and why in how and how.startswith("2 cores x 2.10 GHz")


def test_cpu_peak_follows_the_onednn_isa_cap(tmp_path, monkeypatch):
    speed = load_script("bench/speed.py")
    (tmp_path / "cpuinfo").write_text(XEON)
    monkeypatch.setattr(speed.os, "cpu_count", lambda: 2)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert speed.cpu_peak("none", cpuinfo=tmp_path / "cpuinfo")[0] == pytest.approx(2 * 2.1 * 32)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    assert speed.cpu_peak("none", cpuinfo=tmp_path / "cpuinfo")[0] == pytest.approx(2 * 2.1 * 64)


@pytest.mark.slow
def test_tiny_run_writes_the_table_and_json(tmp_path):
    speed = load_script("bench/speed.py")
    out = tmp_path / "speed.json"
    args = ["--resolutions", "8", "--seconds", "0.2", "--infer-batch", "4", "--out", str(out)]
    result = CliRunner().invoke(speed.main, args + [a for o in TINY for a in ("--set", o)])
    assert result.exit_code == 0, result.output
    assert "train img/s" in result.output and "infer SavedModel img/s" in result.output
    assert "segment ms/step" in result.output
    report = json.loads(out.read_text())
    assert report["peak_gflops"] is None or report["peak_gflops"] > 0
    kernels = report["kernels"]
    assert kernels["onednn"] in ("on", "off") and kernels["isa"] in ("AMX", "AVX-512", "AVX2", "SSE")
    assert f"oneDNN {kernels['onednn']}, {kernels['isa']}" in result.output
    (row,) = report["results"]
    train, inference = row["train"], row["inference"]
    assert row["resolution"] == 8 and train["batch_size"] == 8 and train["timed_steps"] >= 3
    # The lazy penalty's branch counts a quarter (penalty_every=4) of its FLOPs.
    assert 0 < train["gflop_per_iteration_penalty_branch"] / 4 < train["gflop_per_iteration"]
    assert train["gflop_per_s"] == pytest.approx(train["gflop_per_iteration"] * 1000 / train["ms_per_iteration"])
    assert train["images_per_s"] > 0 and inference["keras_images_per_s"] > 0
    segmentation = row["segmentation"]
    assert segmentation["batch_size"] == 4 and segmentation["timed_steps"] >= 3 and segmentation["ms_per_step"] > 0
    assert segmentation["images_per_s"] == pytest.approx(4 * 1000 / segmentation["ms_per_step"])
    assert inference["saved_model_images_per_s"] > 0 and inference["method"] == "distilled"


def test_onnx_calls_run_the_segmenters_onnx_export_or_nothing_without_the_extra(tmp_path, monkeypatch):
    import keras
    import numpy as np

    from keras_layered.models import Segmenter, UNet

    speed = load_script("bench/speed.py")
    keras.utils.set_random_seed(0)
    segmenter = Segmenter(UNet(8, width=4, depth=1), 8, largest_component=True)
    images = tf.constant(np.random.default_rng(0).uniform(0, 1, (3, 8, 8, 3)).astype("float32"))
    if importlib.util.find_spec("tf2onnx") and importlib.util.find_spec("onnxruntime"):
        (call,) = speed.onnx_calls(segmenter, tmp_path / "a").values()
        np.testing.assert_allclose(call(images), segmenter.predict_on_batch(images), atol=1e-4)
    monkeypatch.setitem(sys.modules, "tf2onnx", None)  # import tf2onnx now raises ImportError
    assert speed.onnx_calls(segmenter, tmp_path / "b") == {}


def test_timed_fit_times_the_steps_not_fits_start_and_teardown():
    speed = load_script("bench/speed.py")

    class Model:  # what timed_fit needs of a Keras model: fit calling its callbacks per step
        def fit(self, data, epochs, steps_per_epoch, verbose, callbacks):
            import time
            time.sleep(0.3)  # fit's start
            for step in range(steps_per_epoch):
                callbacks[0].on_train_batch_begin(step)
                time.sleep(0.02)
                callbacks[0].on_train_batch_end(step)
            time.sleep(0.3)  # fit's teardown

    wall, cpu = speed.timed_fit(Model(), None, 5)
    assert 0.1 <= wall < 0.3  # the 5 steps' 0.1 s, not the 0.6 s around them
    assert 0 <= cpu < wall
