"""Per-image refinement of an encoder's latents by gradient descent through the frozen generator
(TensorFlow: it differentiates inside the model's own call)."""

import keras

from keras_layered.layers import composite


def refine_latents(generator, latents, images, steps, learning_rate):
    """`steps` Adam steps on each image's latent z, minimising the L1 reconstruction error
    mean |composite(G(z)) - x| of that image (the generator's weights are only read).

    An encoder is one forward pass; it lands near the latent that reconstructs an image, and a
    few steps of direct optimisation close the gap, which moves the mask onto the object. Each
    image's loss is its own mean, so the result does not depend on the batch it arrived in (for
    generators without per-call randomness: the style generator draws fresh noise on every call,
    so its refined latents, and masks, vary from call to call).

    Args:
        generator: latents (B, latent_dim) -> {"background", "foreground", "mask"}.
        latents: (B, latent_dim) starting points (the encoder's output).
        images: (B, H, W, 3) in [-1, 1].
        steps: number of Adam steps (beta_1 0.9, beta_2 0.999).
        learning_rate: Adam's step size in latent units.

    Returns: the refined latents (B, latent_dim), with no gradient to `latents`.
    """
    if keras.backend.backend() != "tensorflow":
        raise NotImplementedError("refine_latents needs the TensorFlow backend (it uses tf.GradientTape).")
    import tensorflow as tf

    beta_1, beta_2, epsilon = 0.9, 0.999, 1e-8
    latents = tf.stop_gradient(tf.cast(latents, tf.float32))
    images = tf.cast(images, tf.float32)

    def step(i, z, m, v):
        with tf.GradientTape() as tape:
            tape.watch(z)
            layers = generator(z, training=False)
            reconstruction = composite(layers["background"], layers["foreground"], layers["mask"])
            loss = tf.reduce_sum(tf.reduce_mean(tf.abs(reconstruction - images), axis=[1, 2, 3]))
        grad = tape.gradient(loss, z)
        m = beta_1 * m + (1.0 - beta_1) * grad
        v = beta_2 * v + (1.0 - beta_2) * tf.square(grad)
        t = tf.cast(i + 1, tf.float32)
        update = (m / (1.0 - beta_1**t)) / (tf.sqrt(v / (1.0 - beta_2**t)) + epsilon)
        return i + 1, z - learning_rate * update, m, v

    zeros = tf.zeros_like(latents)
    _, refined, _, _ = tf.while_loop(lambda i, *_: i < steps, step, (tf.constant(0), latents, zeros, zeros))
    return tf.stop_gradient(refined)
