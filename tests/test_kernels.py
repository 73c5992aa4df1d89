"""CPU kernels: the oneDNN decision from the CPU's flags, the environment and distribute.onednn,
made before TensorFlow loads, and what a run records of it."""

import os
import subprocess
import sys
import textwrap

import pytest

from keras_layered import kernels
from keras_layered.config import ConfigError, choices, load_config

AVX2 = frozenset({"sse4_2", "avx", "avx2", "fma"})
ZEN4 = AVX2 | {"avx512f", "avx512_bf16"}
SAPPHIRE_RAPIDS = ZEN4 | {"amx_tile", "amx_bf16"}
OLD = frozenset({"sse4_2", "avx"})  # no AVX2 / FMA


def test_every_configured_onednn_setting_is_decided():
    # kernels.ONEDNN_SETTINGS is the config's list: every option it allows gives a decision and its reason.
    for setting in choices("distribute.onednn"):
        on, why = kernels.decide_onednn(setting, {}, AVX2)
        assert on in (True, False) and f"distribute.onednn={setting}" in why
    assert load_config().distribute.onednn == "auto"


def test_config_rejects_an_unknown_onednn_setting():
    assert load_config(overrides=["distribute.onednn=off"]).distribute.onednn is False  # YAML's off
    assert load_config(overrides=["distribute.onednn=on"]).distribute.onednn is True
    with pytest.raises(ConfigError, match=r"distribute.onednn must be one of auto, True, False; got 'fast'"):
        load_config(overrides=["distribute.onednn=fast"])
    with pytest.raises(ConfigError, match=r"distribute.onednn must be of type bool | str, got 1"):
        load_config(overrides=["distribute.onednn=1"])


def test_cpu_flags_from_a_cpuinfo_file(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse4_2 avx2 fma\n\n"
                       "processor\t: 1\nflags\t\t: fpu sse4_2 avx2 fma\n")
    assert kernels.cpu_flags(cpuinfo) == {"fpu", "sse4_2", "avx2", "fma"}
    assert kernels.cpu_model(cpuinfo) == "AMD EPYC 7B13"
    assert kernels.cpu_flags(tmp_path / "missing") == frozenset()


@pytest.mark.parametrize("flags, expected", [(AVX2, True), (ZEN4, True), (SAPPHIRE_RAPIDS, True), (OLD, None),
                                             (frozenset(), None)])
def test_auto_turns_onednn_on_with_avx2_and_fma(flags, expected):
    assert kernels.decide_onednn("auto", {}, flags)[0] is expected


def test_explicit_settings_and_the_users_variable(monkeypatch):
    monkeypatch.setattr(kernels, "_set_here", None)
    assert kernels.decide_onednn(False, {}, AVX2) == (False, "distribute.onednn=False")
    assert kernels.decide_onednn(True, {}, OLD) == (True, "distribute.onednn=True")
    # The user's TF_ENABLE_ONEDNN_OPTS wins over the config and the CPU.
    assert kernels.decide_onednn(True, {"TF_ENABLE_ONEDNN_OPTS": "0"}, AVX2)[0] is False
    assert kernels.decide_onednn("auto", {"TF_ENABLE_ONEDNN_OPTS": "1"}, OLD)[0] is True
    with pytest.raises(ValueError, match="distribute.onednn must be one of auto, True, False, got 'yes'"):
        kernels.decide_onednn("yes", {}, AVX2)


def test_configure_sets_the_variable_only_before_tensorflow_loads(monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("flags\t\t: sse4_2 avx2 fma\n")
    monkeypatch.setattr(kernels, "_set_here", None)
    environ = {}
    assert "tensorflow" in sys.modules  # here it is loaded: nothing changes
    assert kernels.configure_onednn("auto", environ, cpuinfo) is None and environ == {}
    monkeypatch.delitem(sys.modules, "tensorflow")
    assert kernels.configure_onednn("auto", environ, cpuinfo) is True
    assert environ == {"TF_ENABLE_ONEDNN_OPTS": "1"} and not kernels.user_set(environ)
    assert kernels.configure_onednn(False, environ, cpuinfo) is False  # its own value is not the user's
    assert environ == {"TF_ENABLE_ONEDNN_OPTS": "0"}
    users = {"TF_ENABLE_ONEDNN_OPTS": "1"}
    assert kernels.configure_onednn(False, users, cpuinfo) is True and users == {"TF_ENABLE_ONEDNN_OPTS": "1"}


@pytest.mark.parametrize("flags, cap, isa", [(SAPPHIRE_RAPIDS, "", "AMX"), (SAPPHIRE_RAPIDS, "AVX2", "AVX2"),
                                             (SAPPHIRE_RAPIDS, "AVX512_CORE", "AVX-512"), (ZEN4, "", "AVX-512"),
                                             (AVX2, "", "AVX2"), (OLD, "", "SSE")])
def test_vector_isa_with_the_onednn_cap(flags, cap, isa):
    assert kernels.vector_isa(flags, {"ONEDNN_MAX_CPU_ISA": cap} if cap else {}) == isa


def _import_in_subprocess(env_value):
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    if env_value is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = env_value
    code = textwrap.dedent("""
        import os, keras_layered
        from tensorflow.python.util import _pywrap_util_port
        print(os.environ.get("TF_ENABLE_ONEDNN_OPTS"), _pywrap_util_port.IsMklEnabled())
    """)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return done.stdout.split()


@pytest.mark.skipif(not kernels.onednn_faster(kernels.cpu_flags()), reason="needs an AVX2 + FMA CPU")
def test_import_turns_onednn_on_before_tensorflow_loads_unless_the_user_chose():
    assert _import_in_subprocess(None) == ["1", "True"]
    assert _import_in_subprocess("0") == ["0", "False"]


def test_a_run_records_its_kernels(tmp_path):
    from test_distribute import SHORT_RUN, tiny_config

    from keras_layered.training import run

    run.train(tiny_config(train=SHORT_RUN), tmp_path, stage="gan", verbose=0)
    text = (tmp_path / "config.yaml").read_text()
    state = kernels.kernel_state()
    assert load_config(tmp_path / "config.yaml").distribute.onednn is (state["onednn"] == "on")
    assert text.startswith(f"# trained with: oneDNN {state['onednn']}, {state['isa']}")
    assert f"{state['intra_op_threads']} intra-op / {state['inter_op_threads']} inter-op threads" in text.splitlines()[0]


def test_a_setting_that_came_too_late_is_warned_about(monkeypatch, caplog):
    monkeypatch.setattr(kernels, "kernel_state", lambda: {"onednn": "on"})
    monkeypatch.setattr(kernels, "_set_here", "1")
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "1")  # as `import keras_layered` set it
    assert kernels.check_onednn(True) == {"onednn": "on"} and not caplog.records
    kernels.check_onednn(False)
    assert "distribute.onednn=False, but TensorFlow was loaded with oneDNN on" in caplog.text
    assert "set TF_ENABLE_ONEDNN_OPTS=0 in the environment" in caplog.text


def _train_with_onednn(setting, tmp_path):
    """(TF_ENABLE_ONEDNN_OPTS, IsMklEnabled) seen by `train` of a config with distribute.onednn
    `setting`, in a fresh interpreter; the training run is replaced by a probe that imports TensorFlow."""
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    code = textwrap.dedent("""
        import os, sys, types
        run = types.ModuleType("keras_layered.training.run")

        def train(cfg, run_dir, stage):
            from tensorflow.python.util import _pywrap_util_port
            print(os.environ.get("TF_ENABLE_ONEDNN_OPTS"), _pywrap_util_port.IsMklEnabled())

        run.train = train
        callbacks = types.ModuleType("keras_layered.training.callbacks")
        callbacks.NonFiniteLossError = callbacks.TrainingInterrupted = type("Never", (Exception,), {})
        sys.modules.update({run.__name__: run, callbacks.__name__: callbacks})
        import keras_layered.training
        keras_layered.training.run = run
        from keras_layered.cli import main
        main(["train", "--set", f"distribute.onednn={sys.argv[1]}", "--out", sys.argv[2]], standalone_mode=False)
    """)
    done = subprocess.run([sys.executable, "-c", code, setting, str(tmp_path / "run")], env=env, capture_output=True,
                          text=True, check=True)
    return done.stdout.split()[:2]


@pytest.mark.slow
def test_train_applies_the_configs_onednn_setting_before_tensorflow_loads(tmp_path):
    assert _train_with_onednn("false", tmp_path) == ["0", "False"]
    assert _train_with_onednn("true", tmp_path) == ["1", "True"]
