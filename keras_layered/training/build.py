"""Models, optimizers and data built from a `Config`: the one place config keys meet classes."""

import keras

from keras_layered.data.synthetic import synthetic_scenes
from keras_layered.models.discriminator import Discriminator
from keras_layered.models.layered_generator import LayeredGenerator
from keras_layered.training.layered_gan import LayeredGAN


def build_generator(cfg):
    m = cfg.model
    if m.generator == "style":
        from keras_layered.models.style_generator import StyleLayeredGenerator

        return StyleLayeredGenerator(
            resolution=cfg.data.resolution,
            latent_dim=m.latent_dim,
            mapping_layers=m.mapping_layers,
            base_width=m.base_width,
            min_width=m.min_width,
            style_mixing_prob=m.style_mixing_prob,
            seed=cfg.train.seed,
        )
    return LayeredGenerator(
        resolution=cfg.data.resolution,
        latent_dim=m.latent_dim,
        base_width=m.base_width,
        min_width=m.min_width,
        norm=m.norm,
    )


def build_discriminator(cfg):
    m = cfg.model
    return Discriminator(
        resolution=cfg.data.resolution,
        base_width=m.d_base_width,
        min_width=m.d_min_width,
        spectral_norm=m.spectral_norm,
    )


def build_layered_gan(cfg):
    """A compiled `LayeredGAN`; call it inside the distribution strategy's scope."""
    keras.utils.set_random_seed(cfg.train.seed)
    loss, perturb, train = cfg.loss, cfg.perturb, cfg.train
    gan = LayeredGAN(
        build_generator(cfg),
        build_discriminator(cfg),
        adversarial_loss=loss.adversarial,
        r1_gamma=loss.r1_gamma,
        gp_weight=loss.gp_weight,
        drift=loss.drift,
        penalty_every=loss.penalty_every,
        min_mask_coverage=loss.min_mask_coverage,
        mask_coverage_weight=loss.mask_coverage_weight,
        binarization_weight=loss.binarization_weight,
        max_mask_coverage=loss.max_mask_coverage,
        max_coverage_weight=loss.max_coverage_weight,
        max_shift=perturb.max_shift,
        bg_contrast_jitter=perturb.bg_contrast_jitter,
        ema_decay=train.ema_decay,
        d_steps=train.d_steps,
        seed=train.seed,
    )
    gan.compile(
        g_optimizer=keras.optimizers.Adam(train.g_lr, beta_1=train.beta_1, beta_2=train.beta_2),
        d_optimizer=keras.optimizers.Adam(train.d_lr, beta_1=train.beta_1, beta_2=train.beta_2),
        jit_compile=train.jit_compile,
    )
    return gan


def build_dataset(cfg):
    """The training images as a batched, infinite `tf.data.Dataset` of (B, H, W, 3) in [-1, 1]."""
    return synthetic_scenes(
        cfg.data.resolution,
        cfg.train.batch_size,
        seed=cfg.data.seed,
        difficulty=cfg.data.difficulty,
    )
