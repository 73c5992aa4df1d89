"""Models, optimizers and data built from a `Config`: the one place config keys meet classes."""

from pathlib import Path

import keras

from keras_layered import distribute
from keras_layered.data import sources
from keras_layered.errors import ConfigError
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
        upsampling=m.upsampling,
    )


def build_discriminator(cfg):
    m = cfg.model
    return Discriminator(
        resolution=cfg.data.resolution,
        base_width=m.d_base_width,
        min_width=m.d_min_width,
        spectral_norm=m.spectral_norm,
        equalized_lr=m.d_equalized_lr,
    )


def build_layered_gan(cfg):
    """A compiled `LayeredGAN`; call it inside the distribution strategy's scope
    (`distribute.make_strategy(cfg.distribute.strategy).scope()`)."""
    keras.utils.set_random_seed(cfg.train.seed)
    distribute.set_precision(cfg.distribute.mixed_precision)  # for every layer built from here on
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
        background_mixing=perturb.background_mixing,
        ema_decay=train.ema_decay,
        ema_bn_batches=train.ema_bn_batches,
        ema_bn_batch_size=train.batch_size,
        d_steps=train.d_steps,
        seed=train.seed,
    )
    gan.compile(
        g_optimizer=keras.optimizers.Adam(train.g_lr, beta_1=train.beta_1, beta_2=train.beta_2),
        d_optimizer=keras.optimizers.Adam(train.d_lr, beta_1=train.beta_1, beta_2=train.beta_2),
        jit_compile=train.jit_compile,
    )
    return distribute.fit_across_workers(gan)


def build_dataset(cfg, batch_size=None, start=0):
    """The training images of `cfg.data.source` as a batched, infinite `tf.data.Dataset` of
    (B, H, W, 3) in [-1, 1], from image number `start` (a resumed run's steps x batch size)."""
    return sources.training_dataset(cfg.data, batch_size or cfg.train.batch_size, start=start)


def build_eval_dataset(cfg, batch_size=128):
    """{"image", "mask"} batches of the source's images with ground truth (`sources.evaluation_split`
    says which: held-out built-in scenes, a dataset's test split, a folder's masked images), or None
    when the source has no masks."""
    return sources.evaluation_dataset(cfg.data, batch_size)


def build_segmentation_trainer(cfg, generator):
    """A compiled `SegmentationTrainer` of the networks `cfg.segment` enables, on `generator`."""
    from keras_layered.models.encoder import Encoder
    from keras_layered.models.perceptual import vgg16_features
    from keras_layered.models.unet import UNet
    from keras_layered.training.segmentation import SegmentationTrainer

    keras.utils.set_random_seed(cfg.train.seed)
    distribute.set_precision(cfg.distribute.mixed_precision)  # for every layer built from here on
    s, res = cfg.segment, cfg.data.resolution
    encoder = unet = features = None
    if s.encoder:
        encoder = Encoder(res, generator.latent_dim, base_width=s.encoder_base_width, min_width=s.encoder_min_width,
                          name="encoder")
    if s.distilled:
        unet = UNet(res, width=s.unet_width, depth=s.unet_depth, max_width=s.unet_max_width,
                    low_res_upconv=s.unet_low_res_upconv, name="unet")
    if s.encoder and s.perceptual_weight:
        if not Path(s.perceptual_weights).expanduser().is_file():
            raise ConfigError(
                f"segment.perceptual_weights: no file at {s.perceptual_weights!r}; give a local VGG16 notop "
                f"weights file (.h5) or set segment.perceptual_weight=0"
            )
        features = vgg16_features(str(Path(s.perceptual_weights).expanduser()), res)
    trainer = SegmentationTrainer(
        generator,
        encoder,
        unet,
        latent_weight=s.latent_weight,
        mask_weight=s.mask_weight,
        reconstruction_weight=s.reconstruction_weight,
        feature_extractor=features,
        perceptual_weight=s.perceptual_weight,
        max_shift=cfg.perturb.max_shift,
        visible_threshold=s.visible_threshold,
        layer_jitter=s.layer_jitter,
        shifted_fraction=s.shifted_fraction,
        unet_fraction=s.unet_fraction,
        seed=cfg.train.seed,
    )

    def adam():
        # Linear decay: the last iterates average out the noise of single steps.
        lr = keras.optimizers.schedules.PolynomialDecay(s.lr, s.steps, end_learning_rate=0.0) if s.lr_decay else s.lr
        return keras.optimizers.Adam(lr, beta_1=0.9, beta_2=0.99)

    trainer.compile(encoder_optimizer=adam() if encoder else None, unet_optimizer=adam() if unet else None,
                    jit_compile=cfg.train.jit_compile)
    return distribute.fit_across_workers(trainer)


def build_segmenters(cfg, trainer):
    """{"encoder": Segmenter, "distilled": Segmenter} of the trainer's networks (those it has), and
    "ensemble" of both when `segment.serve` is ensemble."""
    from keras_layered.models.generator_inversion import GeneratorInversion
    from keras_layered.models.mask_ensemble import ensemble_segmenter
    from keras_layered.models.segmenter import Segmenter

    s = cfg.segment
    res = trainer.generator.resolution
    segmenters = {}
    # What every saved segmenter of the run serves with, whichever network it holds.
    served = dict(largest_component=s.largest_component, threshold=s.mask_threshold, shift_average=s.shift_average)
    if trainer.encoder is not None:
        inversion = GeneratorInversion(trainer.encoder, trainer.generator, refine_steps=s.refine_steps,
                                       refine_learning_rate=s.refine_lr)
        segmenters["encoder"] = Segmenter(inversion, res, flip_average=s.encoder_flip_average, **served)
    if trainer.unet is not None:
        segmenters["distilled"] = Segmenter(trainer.unet, res, flip_average=s.unet_flip_average, **served)
    if s.serve == "ensemble":
        segmenters["ensemble"] = ensemble_segmenter(trainer.unet, inversion, s.ensemble_encoder_share, res,
                                                    s.unet_flip_average, s.encoder_flip_average, **served)
    for segmenter in segmenters.values():
        segmenter.build((None, res, res, 3))
    return segmenters
