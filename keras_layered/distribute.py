"""Training on several devices or machines, in mixed precision (TensorFlow-specific).

- `make_strategy(name)`: the `tf.distribute` strategy of `distribute.strategy`.
- `set_precision(name)`, `resolve_precision(name)`, `with_loss_scale(optimizer, policy)`: Keras'
  dtype policy of `distribute.mixed_precision` ("auto": the fastest this machine computes well),
  and the loss scaling float16 needs.
- `normal`, `uniform`, `randint`: random draws that give every replica its own numbers, and the
  same global batch of numbers whatever the number of replicas.
- `replica_scale()`: turns a replica's mean loss into its share of the global mean.

Outside a multi-replica context, and on other backends, the draws are plain `keras.random` draws.
"""

import functools
import json
import logging
import os

import keras

from keras_layered.config import DistributeConfig, choices

STRATEGIES = choices("distribute.strategy")
PRECISIONS = choices("distribute.mixed_precision")

_strategies = {}


def make_strategy(name=DistributeConfig.strategy):
    """The `tf.distribute.Strategy` called `name`, created once per process.

    - "auto": MirroredStrategy when more than one GPU is visible, else "default".
    - "default": TensorFlow's default strategy (one device, no distribution).
    - "mirrored": MirroredStrategy over the visible GPUs; without GPUs, over the logical CPU
      devices (one, unless `tf.config.set_logical_device_configuration` made more: the tests).
    - "multi_worker": MultiWorkerMirroredStrategy over the cluster described by the TF_CONFIG
      environment variable (README, "Distributed training"). It must be created before any other
      TensorFlow op of the process, so `run.train` creates it first.

    Call it outside any strategy scope: "default" is then the default strategy.
    """
    if name not in STRATEGIES:
        raise ValueError(f"distribute.strategy must be one of {', '.join(STRATEGIES)}, got {name!r}")
    if name not in _strategies:
        _strategies[name] = _create(name)
    return _strategies[name]


def _create(name):
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if name == "auto":
        name = "mirrored" if len(gpus) > 1 else "default"
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        devices = None if gpus else [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    if "TF_CONFIG" not in os.environ:
        raise ValueError(
            "distribute.strategy=multi_worker reads the cluster from the TF_CONFIG environment variable; "
            "set it on every worker (README, 'Distributed training')"
        )
    cluster = json.loads(os.environ["TF_CONFIG"]).get("cluster", {})
    if not cluster.get("worker"):
        raise ValueError(f"TF_CONFIG must list the workers under cluster.worker, got {os.environ['TF_CONFIG']}")
    _configure_coordination(tf.distribute.cluster_resolver.TFConfigClusterResolver().cluster_spec())
    return tf.distribute.MultiWorkerMirroredStrategy()


HEARTBEAT_TIMEOUT_S = 60


def _configure_coordination(cluster_spec):
    """TensorFlow's coordination service as MultiWorkerMirroredStrategy sets it up (which it then
    keeps), with a heartbeat timeout of `HEARTBEAT_TIMEOUT_S` instead of 10 s: on a busy CPU
    machine a worker that is alive but starved misses 10 s of heartbeats and the whole run aborts
    ("heartbeat timeout", seen with two workers on 2 shared cores). A worker that really died is
    still noticed, a minute later.

    TensorFlow has no public API for the coordination service (no `tf.config` or strategy option
    sets its heartbeat), so this makes the calls MultiWorkerMirroredStrategy makes, through the
    same internal modules, the leader included (`coordination_leader`, so every worker agrees with
    TensorFlow's choice). Where they moved, the timeout stays TensorFlow's, with a warning."""
    try:
        # Internal on purpose, see above: the only way in.
        from tensorflow.python.distribute import multi_worker_util
        from tensorflow.python.eager import context

        coordination_config_pb2 = context.coordination_config_pb2  # where TensorFlow itself takes it from
    except (ImportError, AttributeError):
        logging.getLogger("keras_layered").warning(
            "TensorFlow's internal coordination-service API moved: the heartbeat timeout stays at its default")
        return
    if context.context().coordination_service is not None:
        return
    jobs = [coordination_config_pb2.CoordinatedJob(name=job, num_tasks=cluster_spec.num_tasks(job))
            for job in ("chief", "worker") if job in cluster_spec.jobs]
    context.context().configure_coordination_service(
        service_type="standalone",
        service_leader=multi_worker_util.coordination_leader(cluster_spec),
        coordinated_jobs=jobs,
        heartbeat_timeout_in_ms=HEARTBEAT_TIMEOUT_S * 1000,
    )


def set_precision(name):
    """Sets Keras' global dtype policy for `distribute.mixed_precision` (see `resolve_precision`).

    Layers built afterwards compute in float16 / bfloat16 and keep float32 variables; the models'
    output layers are float32, so masks, composites, logits and losses stay float32.
    """
    name = resolve_precision(name)
    keras.mixed_precision.set_dtype_policy("float32" if name == "none" else name)


def resolve_precision(name):
    """`name`, with "auto" replaced by the fastest precision this machine computes correctly:
    - GPUs: "mixed_bfloat16" from compute capability 8.0 (Ampere) on, "mixed_float16" on 7.x
      (tensor cores, loss-scaled), else "none";
    - CPUs: "mixed_bfloat16" where the CPU has bfloat16 instructions (AVX512_BF16 or AMX), which
      oneDNN uses (training 1.7x faster at 32 px in bench/speed.py on such a CPU) unless
      ONEDNN_MAX_CPU_ISA caps it below them, else "none": emulated bfloat16 is slower than float32.
    """
    if name not in PRECISIONS:
        raise ValueError(f"distribute.mixed_precision must be one of {', '.join(PRECISIONS)}, got {name!r}")
    if name != "auto":
        return name
    return _fastest_precision()


@functools.cache
def _fastest_precision():
    capability = _gpu_capability()
    if capability is not None:
        name = "mixed_bfloat16" if capability >= (8, 0) else "mixed_float16" if capability >= (7, 0) else "none"
    else:
        name = "mixed_bfloat16" if cpu_has_bfloat16() else "none"
    logging.getLogger("keras_layered").info("distribute.mixed_precision=auto: %s on this machine", name)
    return name


def _gpu_capability():
    """The first GPU's CUDA compute capability (major, minor); (0, 0) for a GPU that reports none
    (not NVIDIA); None without a GPU or off TensorFlow."""
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return None
    return tuple(tf.config.experimental.get_device_details(gpus[0]).get("compute_capability") or (0, 0))


# ONEDNN_MAX_CPU_ISA caps below which oneDNN has no bfloat16 kernels (it would emulate them).
_ISA_CAPS_WITHOUT_BF16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI")


def cpu_has_bfloat16(cpuinfo="/proc/cpuinfo", environ=None):
    """Whether the CPU lists bfloat16 instructions (Linux; False where there is no /proc/cpuinfo)
    and oneDNN may use them: an ONEDNN_MAX_CPU_ISA cap below AVX512_CORE_BF16 (e.g. AVX2, to
    run as an AVX2-only CPU would) leaves it to emulate bfloat16, slower than float32."""
    environ = os.environ if environ is None else environ
    if environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper() in _ISA_CAPS_WITHOUT_BF16:
        return False
    try:
        with open(cpuinfo) as f:
            flags = set(f.read().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def with_loss_scale(optimizer, dtype_policy):
    """`optimizer`, wrapped in a `LossScaleOptimizer` when `dtype_policy` computes in float16 (as
    `keras.Model.compile` does for its own optimizer): small gradients would underflow to zero.
    bfloat16 has float32's exponent range and needs no scaling."""
    if optimizer is None or getattr(dtype_policy, "name", dtype_policy) != "mixed_float16":
        return optimizer
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return optimizer
    return keras.optimizers.LossScaleOptimizer(optimizer)


def fit_across_workers(model):
    """Makes `model.fit` work under MultiWorkerMirroredStrategy (a no-op otherwise).

    Keras 3 reduces each step's logs over the workers with a mean along axis 0, which fails for
    scalar logs ("Invalid reduction dimension 0 for input with 0 dimensions", tensorflow/tensorflow
    #72388). The trainers' logs are handed over as (1,) tensors, which that mean turns back into
    scalars: the mean over replicas of each replica's running mean.
    """
    if keras.backend.backend() != "tensorflow":
        return model
    import tensorflow as tf

    if isinstance(model.distribute_strategy, tf.distribute.MultiWorkerMirroredStrategy):
        train_step = model.train_step

        def train_step_with_vector_logs(data):
            return {name: tf.reshape(value, [1]) for name, value in train_step(data).items()}

        model.train_step = train_step_with_vector_logs
    return model


def _replica():
    """(replicas in sync, this replica's id): (1, 0) outside tf.distribute and on other backends."""
    if keras.backend.backend() != "tensorflow":
        return 1, 0
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return 1, 0
    return context.num_replicas_in_sync, context.replica_id_in_sync_group


def replica_scale():
    """1 / replicas in sync: optimizers sum gradients over replicas, so each replica's mean loss
    is scaled by this to give the global mean (1 outside tf.distribute and on other backends)."""
    if keras.backend.backend() != "tensorflow":
        return 1.0
    import tensorflow as tf

    return 1.0 / tf.distribute.get_strategy().num_replicas_in_sync


def _global_draw(draw, shape):
    """This replica's rows of `draw` over the global batch.

    A Keras `SeedGenerator` is a mirrored variable under tf.distribute, so every replica gets the
    same seed. Each draws the numbers of the whole global batch (replicas x its own rows) from it
    and keeps its own slice: replicas get different numbers, and N replicas together draw exactly
    what one device draws for the same global batch (so their losses can be compared).
    """
    replicas, replica_id = _replica()
    if replicas == 1:
        return draw(shape)
    rows = shape[0]
    values = draw((rows * replicas, *shape[1:]))
    return values[replica_id * rows:(replica_id + 1) * rows]


def uniform(shape, seed_generator, minval=0.0, maxval=1.0, dtype=None):
    return _global_draw(lambda s: keras.random.uniform(s, minval, maxval, dtype=dtype, seed=seed_generator), shape)


def normal(shape, seed_generator, dtype=None):
    return _global_draw(lambda s: keras.random.normal(s, dtype=dtype, seed=seed_generator), shape)


def randint(shape, seed_generator, minval, maxval):
    """Integers in [minval, maxval), int32."""
    return _global_draw(lambda s: keras.random.randint(s, minval, maxval, seed=seed_generator), shape)
