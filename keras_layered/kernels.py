"""TensorFlow's CPU kernels: oneDNN on or off, decided before TensorFlow loads (no TensorFlow import).

TensorFlow reads TF_ENABLE_ONEDNN_OPTS once, when it is imported, and by default turns oneDNN on
only on CPUs with AVX512_VNNI, AVX512_BF16 or AMX. Its convolutions are also much faster than
the default (Eigen) ones on AVX2 + FMA CPUs (a training iteration of configs/synthetic.yaml about
2x, README "Performance"), so `distribute.onednn: auto` turns it on there as well.

- `decide_onednn(setting, environ, flags)`: (on?, why) for a setting "auto" / True / False.
- `configure_onednn(setting)`: sets TF_ENABLE_ONEDNN_OPTS accordingly, if TensorFlow is not loaded
  yet and the user did not set it; `import keras_layered` calls it with "auto", `train` on the
  command line again with the config's distribute.onednn.
- `kernel_state()`: what this process runs with: oneDNN on / off, the vector ISA, thread counts;
  `check_onednn(setting)` the same, warning when a setting asked for came too late to apply.
"""

import logging
import os
import platform
import sys

from keras_layered.config import DistributeConfig, choices

ONEDNN_SETTINGS = choices("distribute.onednn")
ENV = "TF_ENABLE_ONEDNN_OPTS"
ISA_ENV = "ONEDNN_MAX_CPU_ISA"

_set_here = None  # the value this module put into TF_ENABLE_ONEDNN_OPTS, if it did


def cpu_flags(cpuinfo="/proc/cpuinfo"):
    """The CPU's feature flags (Linux /proc/cpuinfo; empty where there is none)."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def onednn_faster(flags):
    """Whether oneDNN's kernels beat TensorFlow's default ones on a CPU with these flags: x86 with
    AVX2 and FMA at least (oneDNN's JIT kernels need them to beat Eigen's)."""
    return {"avx2", "fma"} <= set(flags)


def user_set(environ=None):
    """Whether TF_ENABLE_ONEDNN_OPTS was set by the user (not by `configure_onednn`)."""
    environ = os.environ if environ is None else environ
    return ENV in environ and environ[ENV] != _set_here


def decide_onednn(setting, environ, flags):
    """(True / False / None, why): whether TensorFlow should run oneDNN; None leaves it to
    TensorFlow's own default. A TF_ENABLE_ONEDNN_OPTS set by the user always wins."""
    if setting not in ONEDNN_SETTINGS:
        raise ValueError(f"distribute.onednn must be one of {', '.join(map(str, ONEDNN_SETTINGS))}, got {setting!r}")
    if user_set(environ):
        value = environ[ENV].strip().lower()
        return value in ("1", "true", "on", "yes"), f"{ENV}={environ[ENV]} in the environment"
    if setting != "auto":
        return setting, f"distribute.onednn={setting}"
    if onednn_faster(flags):
        return True, "distribute.onednn=auto: the CPU has AVX2 and FMA"
    return None, "distribute.onednn=auto: no AVX2 + FMA, TensorFlow's default"


def configure_onednn(setting=DistributeConfig.onednn, environ=None, cpuinfo="/proc/cpuinfo"):
    """Sets TF_ENABLE_ONEDNN_OPTS from `decide_onednn` before TensorFlow loads; returns the
    decision (True / False / None). Once TensorFlow is imported the variable has no effect and is
    left alone (None is returned)."""
    global _set_here
    environ = os.environ if environ is None else environ
    if "tensorflow" in sys.modules:
        return None
    on, _ = decide_onednn(setting, environ, cpu_flags(cpuinfo))
    if on is not None and not user_set(environ):
        _set_here = environ[ENV] = "1" if on else "0"
    return on


def vector_isa(flags, environ=None):
    """The widest vector ISA oneDNN may use here: "AMX", "AVX-512", "AVX2", "SSE" (or the
    ONEDNN_MAX_CPU_ISA cap, when it is lower)."""
    environ = os.environ if environ is None else environ
    isa = ("AMX" if "amx_tile" in flags else "AVX-512" if "avx512f" in flags else
           "AVX2" if {"avx2", "fma"} <= set(flags) else "SSE")
    cap = environ.get(ISA_ENV, "").upper()
    if cap.startswith("AVX2") or cap.startswith("SSE"):
        isa = "AVX2" if cap.startswith("AVX2") else "SSE"
    elif cap.startswith("AVX512") and isa == "AMX":
        isa = "AVX-512"
    return isa


def kernel_state():
    """{"onednn": "on" / "off", "isa", "max_cpu_isa" (ONEDNN_MAX_CPU_ISA or ""), "intra_op_threads",
    "inter_op_threads", "cpu"} of this process (imports TensorFlow)."""
    import tensorflow as tf

    try:
        # Internal: TensorFlow has no public query of whether oneDNN is on (`tf.sysconfig.get_build_info`
        # does not say, and TF_ENABLE_ONEDNN_OPTS only says what was asked); "unknown" where it moved.
        from tensorflow.python.util import _pywrap_util_port

        onednn = "on" if _pywrap_util_port.IsMklEnabled() else "off"
    except (ImportError, AttributeError):
        onednn = "unknown"
    flags = cpu_flags()
    return {
        "onednn": onednn,
        "isa": vector_isa(flags),
        "max_cpu_isa": os.environ.get(ISA_ENV, ""),
        # 0 = TensorFlow's choice: as many threads as cores.
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count(),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads() or os.cpu_count(),
        "cpu": cpu_model(),
    }


def check_onednn(setting):
    """`kernel_state()`, after warning if `setting` (True / False) asks for other kernels than
    those TensorFlow loaded with (it reads TF_ENABLE_ONEDNN_OPTS only when imported)."""
    state = kernel_state()
    wanted, _ = decide_onednn(setting, os.environ, cpu_flags())
    if setting != "auto" and not user_set() and wanted != (state["onednn"] == "on"):
        logging.getLogger("keras_layered").warning(
            "distribute.onednn=%s, but TensorFlow was loaded with oneDNN %s before the setting was read, so it "
            "cannot take effect in this process (TensorFlow reads it once, when imported); set %s=%d in the "
            "environment to choose before TensorFlow loads", setting, state["onednn"], ENV, wanted)
    return state


def describe(state):
    """One line of `kernel_state()`, e.g. "oneDNN on, AVX2 (ONEDNN_MAX_CPU_ISA=AVX2), 2 intra-op /
    2 inter-op threads, Intel(R) Xeon(R) Processor"."""
    cap = f" ({ISA_ENV}={state['max_cpu_isa']})" if state["max_cpu_isa"] else ""
    return (f"oneDNN {state['onednn']}, {state['isa']}{cap}, {state['intra_op_threads']} intra-op / "
            f"{state['inter_op_threads']} inter-op threads, {state['cpu']}")


def cpu_model(cpuinfo="/proc/cpuinfo"):
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
