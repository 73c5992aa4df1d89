"""Losses of the layered GAN as pure functions of logits, gradients and masks.

Each returns a scalar averaged over the (per-replica) batch. Gradients needed by penalties are
computed by the training step (backend-specific) and passed in, so these stay backend-agnostic.
Logits are (B, 1) or (B,); masks are (B, H, W, 1).
"""

from keras import ops

from keras_layered.config import LossConfig


def d_nonsaturating_loss(real_logits, fake_logits):
    """Logistic discriminator loss: softplus(-D(x)) + softplus(D(G(z))) (Goodfellow et al. 2014)."""
    return ops.mean(ops.softplus(-real_logits)) + ops.mean(ops.softplus(fake_logits))


def g_nonsaturating_loss(fake_logits):
    """Non-saturating generator loss: softplus(-D(G(z)))."""
    return ops.mean(ops.softplus(-fake_logits))


def r1_penalty(real_gradients, gamma):
    """R1 (Mescheder et al. 2018): gamma / 2 * E ||grad_x D(x)||^2 at real images x."""
    squared_norm = ops.sum(ops.square(real_gradients), axis=(1, 2, 3))
    return 0.5 * gamma * ops.mean(squared_norm)


def d_wasserstein_loss(real_logits, fake_logits, drift=LossConfig.drift):
    """WGAN critic loss with ProGAN's drift term: -D(x) + D(G(z)) + drift * D(x)^2."""
    return ops.mean(fake_logits - real_logits + drift * ops.square(real_logits))


def g_wasserstein_loss(fake_logits):
    """WGAN generator loss: -D(G(z))."""
    return -ops.mean(fake_logits)


def gradient_penalty(interpolate_gradients, weight=LossConfig.gp_weight):
    """WGAN-GP (Gulrajani et al. 2017): weight * E (||grad D(x_hat)|| - 1)^2."""
    norm = ops.sqrt(ops.sum(ops.square(interpolate_gradients), axis=(1, 2, 3)) + 1e-12)
    return weight * ops.mean(ops.square(norm - 1.0))


def mask_coverage(mask):
    """(B,) fraction of each image covered by its mask."""
    return ops.mean(mask, axis=(1, 2, 3))


def min_coverage_loss(mask, min_coverage):
    """Hinge that keeps each mask from vanishing: mean relu(min_coverage - coverage)."""
    return ops.mean(ops.relu(min_coverage - mask_coverage(mask)))


def max_coverage_loss(mask, max_coverage):
    """Hinge that keeps each mask from covering everything: mean relu(coverage - max_coverage)."""
    return ops.mean(ops.relu(mask_coverage(mask) - max_coverage))


def binarization_loss(mask):
    """Pushes mask values to 0 or 1: mean min(mask, 1 - mask)."""
    return ops.mean(ops.minimum(mask, 1.0 - mask))


# Segmentation stage: the encoder against the frozen generator, the distilled network.


def latent_regression_loss(predicted_latents, latents):
    """Mean squared error between the encoder's latents and the known z of generated images."""
    return ops.mean(ops.square(predicted_latents - latents))


def reconstruction_loss(reconstructions, images):
    """Mean absolute (L1) difference between reconstructed and input images."""
    return ops.mean(ops.abs(reconstructions - images))


def mask_cross_entropy_from_logits(mask_logits, target_masks):
    """Binary cross-entropy of masks sigmoid(x) against target masks t in [0, 1], from the logits x:
    log(1 + exp(x)) - t x, computed stably; exact where sigmoid(x) rounds to 0 or 1, where the
    clipped probabilities of `mask_cross_entropy` have no gradient."""
    return ops.mean(ops.binary_crossentropy(target_masks, mask_logits, from_logits=True))


def mask_cross_entropy(predicted_masks, target_masks, epsilon=1e-6):
    """Binary cross-entropy -t log p - (1 - t) log(1 - p) of predicted masks p in [0, 1] against
    target masks t in [0, 1], with p clipped to [epsilon, 1 - epsilon], for masks known only as
    probabilities (the generator's); `mask_cross_entropy_from_logits` where the logits are at hand."""
    p = ops.clip(predicted_masks, epsilon, 1.0 - epsilon)
    return ops.mean(-target_masks * ops.log(p) - (1.0 - target_masks) * ops.log(1.0 - p))
