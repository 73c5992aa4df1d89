"""The base of the seeded, training-only perturbation layers."""

import keras


class Perturbation(keras.layers.Layer):
    """A stateless random layer that acts in training only and draws from its own seed.

    Works in its input's dtype (float32 stays float32 under a mixed policy) and is built at once:
    it has no state apart from the seed, and under tf.distribute `fit` builds a model with an
    unbuilt layer by calling it on a data batch, which a trainer cannot take. Subclasses keep
    their own settings and add them to `get_config`.

    Args:
        seed: seed of the layer's own random generator.
    """

    def __init__(self, seed=None, **kwargs):
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.built = True

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(seed=self.seed)
        return config
