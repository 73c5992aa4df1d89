"""Speed: images/s of a full training iteration and of segmentation inference, per resolution.

    python bench/speed.py                                     # 32, 64, 128 px; table + bench/results/speed.json
    python bench/speed.py --resolutions 32 --set distribute.mixed_precision=none   # float32
    python bench/speed.py --resolutions 32 --set train.jit_compile=true --out /tmp/xla.json

Training: one iteration = `LayeredGAN.train_step` (discriminator step, generator step, EMA update)
on a batch of `train.batch_size` real images held in memory (the scene generator is not timed),
run by `fit` after a warm-up that traces it, timed from its first step's start to its last step's end
(`fit`'s own start and teardown, once per call, left out). FLOPs of one iteration are TensorFlow's own per-op
counts (those of its profiler: convolutions and their gradients, matmuls, elementwise arithmetic;
ops it has no count for, such as the shift's einsum, are left out) over the ops of the traced step
that run; branches taken conditionally (the lazy R1 / GP penalty) count 1 / `loss.penalty_every`
of their FLOPs.

Segmentation stage: one `SegmentationTrainer.train_step` (the networks `segment.*` enables,
against the GAN's generator, untrained: the cost does not depend on the weights) on one batch of
`segment.batch_size` real images held in memory, timed as the training iteration;
`segment.unet_fraction` and the U-Net's settings change it.

Inference: the served segmenter (`segment.serve`, built untrained at that resolution) on a batch of
float images in [0, 1]: the in-memory Keras model (`predict_on_batch`), the same model exported
as a SavedModel and loaded back (its `serving_default` signature, as TF Serving runs it) and, with
the onnx extra installed, its ONNX export run by onnxruntime, called in turns. Every rate is also given per second of this process' CPU time (`*_per_cpu_s`), which
other work on the machine disturbs much less than wall-clock rates.

Peak: on CPU, cores x clock (/proc/cpuinfo) x FP32 FLOPs per cycle per core of the vector ISA
oneDNN runs (ONEDNN_MAX_CPU_ISA caps it; printed with oneDNN's state and the threads): 32 for
AVX2's two 256-bit FMA pipes (2 x 8 lanes x 2), also AMD Zen 4's AVX-512 on them; 64 for Intel's
two 512-bit units; doubled for bfloat16 with AVX512_BF16. An estimate, since the clock is the
nominal one and turbo, SMT siblings and the host's other tenants are unknown. On an NVIDIA
GPU, the datasheet's dense FP32 peak (or tensor-core peak under mixed precision) of known models;
`--peak-gflops` overrides either.
"""

import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import click

from keras_layered.config import load_config
from keras_layered.errors import ConfigError
from keras_layered.recipes import resolve_config

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bench" / "results" / "speed.json"

# NVIDIA datasheets, dense GFLOP/s: (FP32, FP16/BF16 tensor cores).
GPU_PEAKS = {"H200": (67_000, 989_000), "H100": (67_000, 989_000), "A100": (19_500, 312_000),
             "L4": (30_300, 121_000), "A10": (31_200, 125_000), "V100": (15_700, 125_000), "T4": (8_100, 65_000)}


def cpu_peak(precision="none", isa=None, cpuinfo="/proc/cpuinfo"):
    """(GFLOP/s, how it was estimated) of this machine's CPU cores at FP32 with the vector ISA that
    oneDNN uses (`kernels.vector_isa`: ONEDNN_MAX_CPU_ISA caps it), or at bfloat16 under
    mixed_bfloat16 where AVX512_BF16 is in use (its dot product does twice an FMA's FLOPs; AMX
    tiles do far more, which this estimate leaves out: give --peak-gflops on such CPUs)."""
    from keras_layered import kernels

    info = Path(cpuinfo).read_text() if Path(cpuinfo).is_file() else ""
    lines = [line.split(":", 1) for line in info.splitlines() if ":" in line]
    field = {k.strip(): v.strip() for k, v in reversed(lines)}  # the first processor's values
    cores = os.cpu_count() or 1
    mhz = float(field.get("cpu MHz", 0.0))
    flags = field.get("flags", "").split()
    isa = isa or kernels.vector_isa(flags)
    # Two FMA pipes: 256 bits wide (AVX2: 2 x 8 lanes x 2 FLOPs; AMD Zen 4 also runs AVX-512 on
    # them), or 512 bits on Intel cores running AVX-512 (some have one such unit: then it is half,
    # give --peak-gflops).
    if isa == "SSE":
        per_cycle, why = 8, "SSE, no FMA"
    elif isa in ("AVX-512", "AMX") and field.get("vendor_id") == "GenuineIntel":
        per_cycle, why = 64, "AVX-512: two 512-bit FMA units"
    else:
        per_cycle, why = 32, f"{'AVX2' if isa == 'AVX2' else 'AVX-512'}: two 256-bit FMA pipes"
    kind = "FP32"
    if precision == "mixed_bfloat16" and "avx512_bf16" in flags and isa in ("AVX-512", "AMX"):
        per_cycle, why, kind = 2 * per_cycle, why + ", doubled by AVX512_BF16 dot products", "BF16"
    if not mhz:
        return None, "unknown: no clock in /proc/cpuinfo"
    how = (f"{cores} cores x {mhz / 1000:.2f} GHz (/proc/cpuinfo) x {per_cycle} {kind} FLOPs/cycle ({why}); "
           f"{field.get('model name', platform.processor())}")
    return cores * mhz / 1000 * per_cycle, how


def machine(precision, peak_override):
    import tensorflow as tf

    from keras_layered import kernels

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        names = [tf.config.experimental.get_device_details(g).get("device_name", "GPU") for g in gpus]
        known = next((v for k, v in GPU_PEAKS.items() if k in names[0]), None)
        peak = None if known is None else len(gpus) * known[precision != "none"]
        how = (f"{len(gpus)} x {names[0]}, NVIDIA datasheet dense {'FP32' if precision == 'none' else 'tensor-core'} "
               f"peak" if known else f"{len(gpus)} x {names[0]}: no peak known, give --peak-gflops")
        device = ", ".join(names)
    else:
        peak, how = cpu_peak(precision)
        device = f"CPU, {os.cpu_count()} cores"
    if peak_override:
        peak, how = peak_override, "given with --peak-gflops"
    return {"device": device, "peak_gflops": peak, "peak_estimate": how, "tensorflow": tf.__version__,
            "kernels": kernels.kernel_state()}


def graph_flops(graph):
    """(FLOPs always run, FLOPs of conditional branches) of a traced function's graph.

    Per op, TensorFlow's registered FLOP counts (those of its v1 profiler). Only ops that run are
    counted: those the outputs or a stateful op (variable updates) depend on; gradients nobody
    uses, such as the discriminator's weight gradients in the generator's step, are traced but
    pruned before running. A conditional counts its costlier branch, nested ones included.
    """
    from tensorflow.python.framework import ops

    sinks = [t.op for t in graph.outputs] + [op for op in graph.get_operations() if op._is_stateful]
    live, stack = set(), list(sinks)
    while stack:
        op = stack.pop()
        if op.name not in live:
            live.add(op.name)
            stack += [t.op for t in op.inputs] + list(op.control_inputs)
    always = conditional = 0
    for op in graph.get_operations():
        if op.name not in live:
            continue
        if op.type in ("If", "StatelessIf"):
            branches = [graph._get_function(op.get_attr(b).name).graph for b in ("then_branch", "else_branch")]
            conditional += max(sum(graph_flops(g)) for g in branches)
        else:
            always += ops.get_stats_for_node_def(graph, op.node_def, "flops").value or 0
    return always, conditional


def timed_fit(model, data, steps):
    """(wall seconds, CPU seconds of this process) of `steps` training steps of one `fit` call,
    from the first step's start to the last step's end: what each step of a long training costs.
    `fit`'s own start and teardown (1-2 s on a CPU, once per call of a training) are left out."""
    import keras

    class Clock(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if batch == 0:
                self.start = time.perf_counter(), time.process_time()

        def on_train_batch_end(self, batch, logs=None):
            self.end = time.perf_counter(), time.process_time()

    clock = Clock()
    model.fit(data, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[clock])
    return clock.end[0] - clock.start[0], clock.end[1] - clock.start[1]


def timed_steps(model, data, seconds):
    """(steps, wall seconds, CPU seconds) of about `seconds` of `model`'s training steps (3 to
    500), after a call that traces the train function and a 3-step probe of the step's cost."""
    timed_fit(model, data, 2)
    probe = timed_fit(model, data, 3)[0] / 3
    steps = int(min(max(seconds / probe, 3), 500))
    return (steps, *timed_fit(model, data, steps))


def bench_training(cfg, seconds):
    import tensorflow as tf

    from keras_layered import distribute
    from keras_layered.training.build import build_dataset, build_layered_gan

    with distribute.make_strategy(cfg.distribute.strategy).scope():
        gan = build_layered_gan(cfg)
    data = build_dataset(cfg).take(1).cache().repeat()  # one batch in memory: the iteration, not the data
    batch = next(iter(data))
    always, conditional = graph_flops(
        tf.function(gan.train_step).get_concrete_function(tf.TensorSpec(batch.shape, batch.dtype)).graph)
    flops = always + conditional / cfg.loss.penalty_every
    steps, elapsed, cpu = timed_steps(gan, data, seconds)
    per_step = elapsed / steps
    return gan, {
        "batch_size": int(batch.shape[0]),
        "timed_steps": steps,
        "ms_per_iteration": 1000 * per_step,
        "images_per_s": batch.shape[0] / per_step,
        # Per second of CPU time used by this process: what the cores it got achieved, a check
        # on wall-clock rates taken beside other work (an idle N-core machine reaches at most N x).
        "images_per_cpu_s": steps * batch.shape[0] / cpu,
        "gflop_per_iteration": flops / 1e9,
        "gflop_per_iteration_penalty_branch": conditional / 1e9,
        "gflop_per_s": flops / 1e9 / per_step,
    }


def bench_segmentation(cfg, generator, seconds):
    from keras_layered import distribute
    from keras_layered.training.build import build_dataset, build_segmentation_trainer

    with distribute.make_strategy(cfg.distribute.strategy).scope():
        trainer = build_segmentation_trainer(cfg, generator)
    batch = cfg.segment.batch_size
    data = build_dataset(cfg, batch).take(1).cache().repeat()
    steps, elapsed, cpu = timed_steps(trainer, data, seconds)
    return {"batch_size": batch, "timed_steps": steps, "ms_per_step": 1000 * elapsed / steps,
            "images_per_s": batch * steps / elapsed, "images_per_cpu_s": batch * steps / cpu}


def rates(calls, images, seconds):
    """{name: (images/s, images per CPU second)} of each `calls[name](images)`, after two warm-up
    calls each, taking turns call by call (so that other work on the machine slows all alike),
    over at least `seconds` (3 rounds minimum)."""
    for call in calls.values():
        call(images)
        call(images)
    wall, cpu = dict.fromkeys(calls, 0.0), dict.fromkeys(calls, 0.0)
    rounds, start = 0, time.perf_counter()
    while rounds < 3 or time.perf_counter() - start < seconds:
        for name, call in calls.items():
            t, c = time.perf_counter(), time.process_time()
            call(images)
            wall[name] += time.perf_counter() - t
            cpu[name] += time.process_time() - c
        rounds += 1
    n = rounds * int(images.shape[0])
    return {name: (n / wall[name], n / cpu[name]) for name in calls}


def onnx_calls(segmenter, directory):
    """{"onnxruntime": images -> masks} of the segmenter's float32 ONNX export (`export_onnx`,
    written under `directory`), run by onnxruntime on CPU; {} where the onnx extra is missing or
    the segmenter does not convert (latent refinement)."""
    import numpy as np

    from keras_layered.export import export_onnx

    try:
        import onnxruntime

        path = export_onnx(segmenter, Path(directory) / "onnx", dtypes=("float32",))["float32"]
    except (ImportError, ValueError) as err:
        print(f"no onnxruntime timing: {err}", flush=True)
        return {}
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return {"onnxruntime": lambda x: session.run(["mask"], {"images": np.asarray(x)})[0]}


def bench_inference(cfg, generator, batch_size, seconds):
    import numpy as np
    import tensorflow as tf

    from keras_layered.export import export_segmenter
    from keras_layered.training.build import build_segmentation_trainer, build_segmenters

    segmenter = build_segmenters(cfg, build_segmentation_trainer(cfg, generator))[cfg.segment.serve]
    res = cfg.data.resolution
    images = tf.constant(np.random.default_rng(0).uniform(0, 1, (batch_size, res, res, 3)).astype("float32"))
    with tempfile.TemporaryDirectory() as directory:
        export_segmenter(segmenter, directory)
        serve = tf.saved_model.load(directory).signatures["serving_default"]
        measured = rates({"keras": segmenter.predict_on_batch,
                          "saved_model": lambda x: serve(images=x)["mask"].numpy(),
                          **onnx_calls(segmenter, directory)}, images, seconds)
    result = {"method": cfg.segment.serve, "batch_size": batch_size}
    for name, (per_s, per_cpu_s) in measured.items():
        result.update({f"{name}_images_per_s": per_s, f"{name}_images_per_cpu_s": per_cpu_s})
    return result


def table(results, peak):
    """The results as rows; "(n)" after a rate is the same rate per CPU second of the process."""
    head = (f"{'px':>4}{'batch':>6}{'train img/s':>17}{'ms/iter':>9}{'GFLOP/iter':>11}{'GFLOP/s':>9}{'% peak':>7}"
            f"{'segment ms/step':>16}{'infer Keras img/s':>19}{'infer SavedModel img/s':>24}{'infer ONNX img/s':>18}")
    lines = [head]
    for r in results:
        t, i, g = r["train"], r["inference"], r["segmentation"]
        share = f"{100 * t['gflop_per_s'] / peak:.0f}" if peak else "-"
        train = f"{t['images_per_s']:.0f} ({t['images_per_cpu_s']:.0f})"
        keras_rate = f"{i['keras_images_per_s']:.0f} ({i['keras_images_per_cpu_s']:.0f})"
        saved_rate = f"{i['saved_model_images_per_s']:.0f} ({i['saved_model_images_per_cpu_s']:.0f})"
        onnx_rate = (f"{i['onnxruntime_images_per_s']:.0f} ({i['onnxruntime_images_per_cpu_s']:.0f})"
                     if "onnxruntime_images_per_s" in i else "-")
        lines.append(f"{r['resolution']:>4}{t['batch_size']:>6}{train:>17}{t['ms_per_iteration']:>9.0f}"
                     f"{t['gflop_per_iteration']:>11.2f}{t['gflop_per_s']:>9.1f}{share:>7}{g['ms_per_step']:>16.0f}"
                     f"{keras_rate:>19}{saved_rate:>24}"
                     f"{onnx_rate:>18}")
    return "\n".join(lines)


@click.command()
@click.option("--config", "config_path", default="synthetic", show_default=True,
              help="A shipped recipe's name or a YAML config file.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Config override (repeatable).")
@click.option("--resolutions", default="32,64,128", show_default=True)
@click.option("--seconds", default=10.0, show_default=True, help="Timed seconds per measurement (about).")
@click.option("--infer-batch", default=64, show_default=True, help="Batch of the inference measurements.")
@click.option("--peak-gflops", type=float, help="The machine's peak GFLOP/s, instead of the estimate.")
@click.option("--out", "out_path", default=str(DEFAULT_OUT), show_default=True, help="JSON results.")
def main(config_path, overrides, resolutions, seconds, infer_batch, peak_gflops, out_path):
    """Images/s of training and of segmentation inference, FLOPs and share of the machine's peak."""
    try:
        config_path = resolve_config(config_path)
    except ConfigError as err:
        raise click.BadParameter(str(err), param_hint="--config") from err
    import logging
    import warnings

    import keras

    from keras_layered import distribute, kernels

    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # the v1 profiler's deprecation notes
    warnings.filterwarnings("ignore", message="`shuffle=True` was passed")
    base = load_config(config_path, overrides)
    distribute.make_strategy(base.distribute.strategy)  # first TensorFlow op (multi_worker needs it)
    precision = distribute.resolve_precision(base.distribute.mixed_precision)
    info = machine(precision, peak_gflops)
    load_before = os.getloadavg()
    results = []
    for res in [int(r) for r in resolutions.split(",")]:
        cfg = load_config(config_path, [*overrides, f"data.resolution={res}"])
        gan, train = bench_training(cfg, seconds)
        segmentation = bench_segmentation(cfg, gan.generator_ema, seconds)
        inference = bench_inference(cfg, gan.generator_ema, infer_batch, seconds / 2)
        results.append({"resolution": res, "train": train, "segmentation": segmentation, "inference": inference})
        print(f"{res} px: {train['images_per_s']:.0f} training images/s, segmentation stage "
              f"{segmentation['ms_per_step']:.0f} ms/step, inference {inference['keras_images_per_s']:.0f} "
              f"(Keras) / {inference['saved_model_images_per_s']:.0f} (SavedModel) images/s", flush=True)
        keras.backend.clear_session()
    report = {
        **info,
        "config": str(config_path), "overrides": list(overrides),
        "mixed_precision": precision, "jit_compile": base.train.jit_compile,
        "strategy": base.distribute.strategy,
        "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "results": results,
    }
    peak = f"{info['peak_gflops']:.0f}" if info["peak_gflops"] else "?"
    print(f"\n{info['device']}; {kernels.describe(info['kernels'])}; peak {peak} GFLOP/s "
          f"({info['peak_estimate']}); mixed_precision={precision}, jit_compile={base.train.jit_compile}; "
          f"load average {report['load_average_before_after'][0]} -> {report['load_average_before_after'][1]}")
    print(table(results, info["peak_gflops"]))
    print("(n): images per second of this process' CPU time")
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    Path(out_path).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
