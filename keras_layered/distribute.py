"""Random draws that differ per replica under `tf.distribute` (TensorFlow-specific).

A Keras `SeedGenerator` is a variable, and under MirroredStrategy it is mirrored: every replica
would draw the same shifts and latents. Folding the replica id into the drawn seed keeps each
replica's draws independent while staying reproducible. Outside a multi-replica context, and on
other backends, these are plain `keras.random` draws.
"""

import keras


def _replica_seed(seed_generator):
    """A stateless (2,) seed for this replica, or None when there is a single replica."""
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return None
    seed = keras.ops.cast(seed_generator.next(), "int32")
    return tf.random.experimental.stateless_fold_in(seed, context.replica_id_in_sync_group)


def replica_scale():
    """1 / replicas in sync: optimizers sum gradients over replicas, so each replica's mean loss
    is scaled by this to give the global mean (1 outside tf.distribute and on other backends)."""
    if keras.backend.backend() != "tensorflow":
        return 1.0
    import tensorflow as tf

    return 1.0 / tf.distribute.get_strategy().num_replicas_in_sync


def uniform(shape, seed_generator, minval=0.0, maxval=1.0):
    seed = _replica_seed(seed_generator)
    if seed is None:
        return keras.random.uniform(shape, minval, maxval, seed=seed_generator)
    import tensorflow as tf

    return tf.random.stateless_uniform(shape, seed, minval, maxval)


def normal(shape, seed_generator):
    seed = _replica_seed(seed_generator)
    if seed is None:
        return keras.random.normal(shape, seed=seed_generator)
    import tensorflow as tf

    return tf.random.stateless_normal(shape, seed)
