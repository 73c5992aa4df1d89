"""MultiWorkerMirroredStrategy: two workers on 127.0.0.1, started like two machines would be
(`TF_CONFIG` + `python cli.py train --strategy multi_worker`), each with its own run directory."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

import keras_layered  # noqa: F401  (registers the model classes for load_model)

CLI = Path(__file__).resolve().parents[1] / "cli.py"
TINY = [
    "data.resolution=8", "model.latent_dim=8", "model.base_width=16", "model.min_width=8",
    "model.d_base_width=16", "model.d_min_width=8", "train.batch_size=8", "train.steps=2",
    "train.steps_per_epoch=2", "train.sample_every=2", "train.checkpoint_every=2", "loss.penalty_every=2",
]


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def trainable_weights(path):
    return [keras.ops.convert_to_numpy(w) for w in keras.saving.load_model(path).trainable_weights]


@pytest.mark.slow
def test_two_workers_train_together_and_agree_on_the_weights(tmp_path):
    workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
    overrides = [arg for key in TINY for arg in ("--set", key)]
    procs = []
    for index in range(2):
        # One thread pool thread each: two workers share this machine's cores instead of
        # oversubscribing them (a starved worker misses the coordination service's heartbeats).
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1",
               "TF_CONFIG": json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})}
        command = [sys.executable, str(CLI), "train", "--strategy", "multi_worker", "--stage", "gan",
                   "--out", str(tmp_path / f"worker{index}"), *overrides]
        procs.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=240))
    finally:
        for proc in procs:
            if proc.poll() is None:  # a worker waiting forever for its peer
                proc.kill()
    for index, (proc, (stdout, stderr)) in enumerate(zip(procs, outputs)):
        assert proc.returncode == 0, f"worker {index}:\n{stderr[-3000:]}\nother worker:\n{outputs[1 - index][1][-3000:]}"
        assert "done:" in stdout
    runs = [tmp_path / "worker0", tmp_path / "worker1"]
    for run in runs:
        assert (run / "checkpoints" / "ckpt-2.index").is_file()
    # Gradients are all-reduced over both workers, so both hold the same networks. (BatchNorm's
    # moving statistics are each worker's own: they average the batches that worker saw.)
    for name in ("generator.keras", "discriminator.keras"):
        first, second = trainable_weights(runs[0] / name), trainable_weights(runs[1] / name)
        assert len(first) == len(second) > 0
        for a, b in zip(first, second):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7, err_msg=name)


def test_workers_allow_a_minute_without_heartbeats():
    # The coordination service's default (10 s) aborted runs of two workers on shared busy cores.
    code = (
        "import json, os\n"
        "os.environ['TF_CONFIG'] = json.dumps({'cluster': {'worker': ['127.0.0.1:%d']}, "
        "'task': {'type': 'worker', 'index': 0}})\n"
        "from tensorflow.python.eager import context\n"
        "from keras_layered import distribute\n"
        "distribute.make_strategy('multi_worker')\n"
        "print('HEARTBEAT', context.context().coordination_service.heartbeat_timeout_in_ms)\n"
    ) % free_ports(1)[0]
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "HEARTBEAT 60000" in proc.stdout
