"""Tests of `composite` and the loss functions, against values computed by hand."""

import math

import numpy as np
import pytest
import tensorflow as tf

from keras_layered import losses
from keras_layered.layers import composite


def softplus(v):
    return math.log(1.0 + math.exp(v))


def value(t):
    return float(np.asarray(t))


# ---------------------------------------------------------------------------------------------
# composite


def test_composite_hand_values():
    bg = np.full((1, 1, 3, 3), 0.2, np.float32)
    bg[..., 1] = 0.4
    fg = np.full((1, 1, 3, 3), 1.0, np.float32)
    fg[..., 2] = -1.0
    mask = np.array([0.0, 1.0, 0.25], np.float32).reshape(1, 1, 3, 1)
    out = np.asarray(composite(bg, fg, mask))
    assert out.shape == (1, 1, 3, 3)
    np.testing.assert_allclose(out[0, 0, 0], [0.2, 0.4, 0.2])  # mask 0: background only
    np.testing.assert_allclose(out[0, 0, 1], [1.0, 1.0, -1.0])  # mask 1: foreground only
    # mask 0.25: 0.75 * bg + 0.25 * fg
    np.testing.assert_allclose(
        out[0, 0, 2], [0.75 * 0.2 + 0.25, 0.75 * 0.4 + 0.25, 0.75 * 0.2 - 0.25], rtol=1e-6
    )


def test_composite_gradients_split_by_mask():
    bg = tf.constant(np.full((1, 1, 2, 3), 0.3, np.float32))
    fg = tf.constant(np.full((1, 1, 2, 3), 0.9, np.float32))
    mask = tf.constant(np.array([0.25, 1.0], np.float32).reshape(1, 1, 2, 1))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([bg, fg, mask])
        total = tf.reduce_sum(composite(bg, fg, mask))
    np.testing.assert_allclose(tape.gradient(total, bg).numpy()[0, 0, :, 0], [0.75, 0.0])
    np.testing.assert_allclose(tape.gradient(total, fg).numpy()[0, 0, :, 0], [0.25, 1.0])
    # d/dmask of sum_c (fg - bg) * mask = 3 * (0.9 - 0.3)
    np.testing.assert_allclose(tape.gradient(total, mask).numpy().ravel(), [1.8, 1.8], rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# adversarial losses

REAL = np.array([[1.0], [-2.0]], np.float32)
FAKE = np.array([[0.5], [3.0]], np.float32)


def test_d_nonsaturating_loss():
    expected = (softplus(-1.0) + softplus(2.0)) / 2 + (softplus(0.5) + softplus(3.0)) / 2
    assert value(losses.d_nonsaturating_loss(REAL, FAKE)) == pytest.approx(expected, rel=1e-6)
    # (B,) logits give the same value.
    assert value(losses.d_nonsaturating_loss(REAL[:, 0], FAKE[:, 0])) == pytest.approx(expected, rel=1e-6)


def test_d_nonsaturating_loss_zero_logits_is_2_log_2():
    zeros = np.zeros((4, 1), np.float32)
    assert value(losses.d_nonsaturating_loss(zeros, zeros)) == pytest.approx(2 * math.log(2), rel=1e-6)


def test_g_nonsaturating_loss():
    expected = (softplus(-0.5) + softplus(-3.0)) / 2
    assert value(losses.g_nonsaturating_loss(FAKE)) == pytest.approx(expected, rel=1e-6)


def test_nonsaturating_losses_are_stable_for_large_logits():
    big = np.array([[100.0], [-100.0]], np.float32)
    # softplus(-100) ~ 0, softplus(100) = 100.
    assert value(losses.g_nonsaturating_loss(big)) == pytest.approx(50.0, rel=1e-5)
    assert value(losses.d_nonsaturating_loss(big, big)) == pytest.approx(100.0, rel=1e-5)


def test_d_wasserstein_loss():
    drift = 0.001
    expected = ((0.5 - 1.0 + drift * 1.0) + (3.0 + 2.0 + drift * 4.0)) / 2
    assert value(losses.d_wasserstein_loss(REAL, FAKE)) == pytest.approx(expected, rel=1e-6)
    expected = ((0.5 - 1.0 + 0.1 * 1.0) + (3.0 + 2.0 + 0.1 * 4.0)) / 2
    assert value(losses.d_wasserstein_loss(REAL, FAKE, drift=0.1)) == pytest.approx(expected, rel=1e-6)


def test_g_wasserstein_loss():
    assert value(losses.g_wasserstein_loss(FAKE)) == pytest.approx(-1.75, rel=1e-6)


# ---------------------------------------------------------------------------------------------
# gradient penalties


def test_r1_penalty_hand_values():
    grads = np.full((1, 2, 2, 1), 0.5, np.float32)  # ||g||^2 = 4 * 0.25 = 1
    assert value(losses.r1_penalty(grads, gamma=10.0)) == pytest.approx(5.0, rel=1e-6)
    # Two samples with squared norms 1 and 4 * 9 = 36: 0.5 * 2 * mean(1, 36) = 18.5.
    grads = np.stack([np.full((2, 2, 1), 0.5), np.full((2, 2, 1), -3.0)]).astype(np.float32)
    assert value(losses.r1_penalty(grads, gamma=2.0)) == pytest.approx(18.5, rel=1e-6)


def test_gradient_penalty_unit_norm_is_zero():
    grads = np.full((1, 2, 2, 1), 0.5, np.float32)  # norm exactly 1
    assert value(losses.gradient_penalty(grads)) == pytest.approx(0.0, abs=1e-6)


def test_gradient_penalty_hand_values():
    # Norms 2 (all 1.0 on 4 pixels) and 0 (all zero): 10 * mean((2 - 1)^2, (0 - 1)^2) = 10.
    grads = np.stack([np.ones((2, 2, 1)), np.zeros((2, 2, 1))]).astype(np.float32)
    assert value(losses.gradient_penalty(grads)) == pytest.approx(10.0, rel=1e-5)
    assert value(losses.gradient_penalty(grads, weight=3.0)) == pytest.approx(3.0, rel=1e-5)
    # Zero gradients everywhere still have a finite gradient of their own (the epsilon).
    zeros = tf.zeros((2, 2, 2, 1))
    with tf.GradientTape() as tape:
        tape.watch(zeros)
        gp = losses.gradient_penalty(zeros)
    assert np.all(np.isfinite(tape.gradient(gp, zeros).numpy()))


def test_penalties_of_a_linear_discriminator():
    # D(x) = sum(w * x) has input gradient w at every x, so with ||w|| = sqrt(30):
    # GP = weight * (sqrt(30) - 1)^2 and R1 = gamma / 2 * 30.
    w = tf.constant(np.array([1.0, -2.0, 3.0, 4.0], np.float32).reshape(1, 2, 2, 1))
    x = tf.constant(np.random.default_rng(0).normal(size=(3, 2, 2, 1)).astype(np.float32))
    with tf.GradientTape() as tape:
        tape.watch(x)
        logits = tf.reduce_sum(w * x, axis=(1, 2, 3))
    grads = tape.gradient(logits, x)
    np.testing.assert_allclose(grads.numpy(), np.broadcast_to(w.numpy(), (3, 2, 2, 1)))
    norm = math.sqrt(1 + 4 + 9 + 16)
    assert value(losses.gradient_penalty(grads, weight=10.0)) == pytest.approx(
        10.0 * (norm - 1.0) ** 2, rel=1e-5
    )
    assert value(losses.r1_penalty(grads, gamma=5.0)) == pytest.approx(2.5 * 30.0, rel=1e-6)


# ---------------------------------------------------------------------------------------------
# mask losses


def masks_with_coverage(*fractions, size=4):
    """(B, size, size, 1) binary masks whose first round(f * size^2) pixels are 1."""
    masks = np.zeros((len(fractions), size * size), np.float32)
    for i, f in enumerate(fractions):
        masks[i, : round(f * size * size)] = 1.0
    return masks.reshape(len(fractions), size, size, 1)


def test_mask_coverage():
    masks = masks_with_coverage(0.0, 0.25, 1.0)
    np.testing.assert_allclose(np.asarray(losses.mask_coverage(masks)), [0.0, 0.25, 1.0])
    soft = np.full((1, 2, 2, 1), 0.3, np.float32)
    np.testing.assert_allclose(np.asarray(losses.mask_coverage(soft)), [0.3], rtol=1e-6)


def test_min_coverage_loss():
    masks = masks_with_coverage(0.0, 0.125, 0.5)
    # relu(0.25 - [0, 0.125, 0.5]) = [0.25, 0.125, 0] -> mean 0.125
    assert value(losses.min_coverage_loss(masks, 0.25)) == pytest.approx(0.125, rel=1e-6)
    assert value(losses.min_coverage_loss(masks, 0.0)) == pytest.approx(0.0, abs=1e-7)


def test_max_coverage_loss():
    masks = masks_with_coverage(1.0, 0.75, 0.25)
    # relu([1, 0.75, 0.25] - 0.5) = [0.5, 0.25, 0] -> mean 0.25
    assert value(losses.max_coverage_loss(masks, 0.5)) == pytest.approx(0.25, rel=1e-6)
    assert value(losses.max_coverage_loss(masks, 1.0)) == pytest.approx(0.0, abs=1e-7)


def test_binarization_loss():
    assert value(losses.binarization_loss(masks_with_coverage(0.0, 0.5, 1.0))) == pytest.approx(0.0, abs=1e-7)
    # min(m, 1 - m) for [0.1, 0.5, 0.8, 1.0] = [0.1, 0.5, 0.2, 0] -> mean 0.2
    mask = np.array([0.1, 0.5, 0.8, 1.0], np.float32).reshape(1, 2, 2, 1)
    assert value(losses.binarization_loss(mask)) == pytest.approx(0.2, rel=1e-6)


# ---------------------------------------------------------------------------------------------
# segmentation stage


def test_latent_regression_loss():
    predicted = np.array([[1.0, 2.0], [0.0, -1.0]], np.float32)
    target = np.array([[0.0, 2.0], [2.0, 1.0]], np.float32)
    # squared errors [1, 0, 4, 4] -> mean 2.25
    assert value(losses.latent_regression_loss(predicted, target)) == pytest.approx(2.25, rel=1e-6)


def test_reconstruction_loss():
    a = np.array([0.5, -1.0, 1.0, 0.0], np.float32).reshape(1, 2, 2, 1)
    b = np.array([0.0, 1.0, 1.0, -0.5], np.float32).reshape(1, 2, 2, 1)
    # |diff| = [0.5, 2, 0, 0.5] -> mean 0.75
    assert value(losses.reconstruction_loss(a, b)) == pytest.approx(0.75, rel=1e-6)


def test_mask_cross_entropy_hand_values():
    p = np.array([0.9, 0.2, 0.5, 0.7], np.float32).reshape(1, 2, 2, 1)
    t = np.array([1.0, 0.0, 1.0, 0.25], np.float32).reshape(1, 2, 2, 1)
    expected = np.mean([
        -math.log(0.9),
        -math.log(0.8),
        -math.log(0.5),
        -(0.25 * math.log(0.7) + 0.75 * math.log(0.3)),
    ])
    assert value(losses.mask_cross_entropy(p, t)) == pytest.approx(expected, rel=1e-5)


def test_mask_cross_entropy_from_logits_hand_values_and_gradient():
    # BCE(x, t) = log(1 + e^x) - t x per pixel.
    x = np.array([-30.0, 0.0, 2.0, 30.0, -1.0], np.float32).reshape(1, 1, 5, 1)
    t = np.array([1.0, 0.5, 0.0, 0.0, 1.0], np.float32).reshape(1, 1, 5, 1)
    expected = np.mean([30.0, math.log(2.0), math.log(1.0 + math.e**2), 30.0, math.log(1.0 + math.e)])
    logits = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(logits)
        loss = losses.mask_cross_entropy_from_logits(logits, t)
    assert value(loss) == pytest.approx(expected, rel=1e-6)  # 30, where clipped probabilities give 13.8
    # d/dx = (sigmoid(x) - t) / pixels: -1/5 at the saturated wrong pixel, not 0.
    np.testing.assert_allclose(tape.gradient(loss, logits).numpy() * 5, 1.0 / (1.0 + np.exp(-x)) - t, atol=1e-6)
    # The probability form where nothing is clipped.
    middle = x[..., 1:3, :]
    assert value(losses.mask_cross_entropy_from_logits(middle, t[..., 1:3, :])) == pytest.approx(
        value(losses.mask_cross_entropy(1.0 / (1.0 + np.exp(-middle)), t[..., 1:3, :])), rel=1e-5)


def test_mask_cross_entropy_is_finite_for_saturated_masks():
    p = np.array([0.0, 1.0], np.float32).reshape(1, 1, 2, 1)
    t = np.array([1.0, 0.0], np.float32).reshape(1, 1, 2, 1)
    # clipped at 1e-6: -log(1e-6) per pixel
    assert value(losses.mask_cross_entropy(p, t)) == pytest.approx(-math.log(1e-6), rel=1e-3)
    assert value(losses.mask_cross_entropy(t, t)) == pytest.approx(0.0, abs=1e-5)
