"""The segmentation stage: an encoder (and optionally a distilled U-Net) trained against the
frozen generator (TensorFlow: tapes, tf.distribute)."""

import keras
import tensorflow as tf
from keras import ops

from keras_layered import distribute, losses
from keras_layered.config import PerturbConfig, SegmentConfig
from keras_layered.layers import ColorJitter, RandomShift, composite
from keras_layered.models.generator_inversion import GeneratorInversion


def distillation_target(mask, foreground, background, visible_threshold=SegmentConfig.visible_threshold):
    """The U-Net's target on a generated composite: 1 where the mask is above 0.5 and, with a
    `visible_threshold` > 0, the foreground differs from the background it covers by more than
    that (largest channel difference, images in [-1, 1]), else 0.

    Why the second condition: the generator's masks reach a pixel or so beyond the object it
    draws, with a foreground there painted like the surrounding background (a shift barely shows
    it on a smooth background). Taught that halo, the U-Net draws it around real objects too; a
    pixel where the foreground looks like the background is not visibly part of the object.
    """
    target = ops.cast(mask > 0.5, "float32")
    if not visible_threshold:
        return target
    difference = ops.max(ops.abs(foreground - background), axis=-1, keepdims=True)
    return target * ops.cast(difference > visible_threshold, "float32")


class SegmentationTrainer(keras.Model):
    """Trains segmentation networks from a frozen layered generator; `fit` on real images.

    One `train_step`: sample z, generate layers with the frozen generator (inference mode), then
    - encoder E (the paper's path): latent regression ||E(G(z)) - z||^2 and mask consistency
      BCE(mask(G(E(G(z)))), mask(G(z))) on generated images, whose latent and exact mask are
      known, plus L1 reconstruction |composite(G(E(x))) - x| of the real batch (not computed
      when its weight and the perceptual weight are 0). With
      `shifted_fraction` > 0, that fraction of the generated images is randomly shifted first and
      keeps only the mask term: real images look like the shifted composites the discriminator
      judged, whose objects can sit where the unshifted generator rarely puts them;
    - distilled U-Net (beyond the paper): BCE on the randomly shifted generated composites against
      their shifted masks (`distillation_target`), the images the discriminator judged realistic;
      with `layer_jitter` > 0, foreground and background each get their own random colour
      jitter first (`ColorJitter`).

    The generator is frozen explicitly (`trainable = False`) and never in an optimizer.

    Args:
        generator: a trained layered generator (e.g. the EMA generator of a `LayeredGAN`).
        encoder: an `Encoder` with the generator's latent_dim, or None to train only the U-Net.
        unet: a `UNet`, or None to train only the encoder.
        latent_weight, mask_weight, reconstruction_weight: weights of the encoder's loss terms.
        feature_extractor, perceptual_weight: optional frozen image -> features model (e.g.
            `vgg16_features`) and the weight of the L1 between features of G(E(x)) and x.
        max_shift: random shift of the U-Net's training composites and of the encoder's shifted
            ones (fraction of the size).
        shifted_fraction: fraction of the encoder's generated images that are shifted, in [0, 1).
        visible_threshold: see `distillation_target` (0 = the mask alone).
        layer_jitter: strength of the U-Net composites' per-layer colour jitter (0 = off).
        unet_fraction: fraction of the generated batch the U-Net trains on (its first rows), in
            (0, 1]: below 1 its step is that much cheaper, with the same number of updates.
        seed: seed of z sampling and the shift.
    """

    def __init__(self, generator, encoder=None, unet=None, latent_weight=SegmentConfig.latent_weight,
                 mask_weight=SegmentConfig.mask_weight, reconstruction_weight=SegmentConfig.reconstruction_weight,
                 feature_extractor=None, perceptual_weight=SegmentConfig.perceptual_weight,
                 max_shift=PerturbConfig.max_shift, visible_threshold=SegmentConfig.visible_threshold,
                 shifted_fraction=SegmentConfig.shifted_fraction, layer_jitter=SegmentConfig.layer_jitter,
                 unet_fraction=SegmentConfig.unet_fraction, seed=None, **kwargs):
        super().__init__(**kwargs)
        if encoder is None and unet is None:
            raise ValueError("SegmentationTrainer: give an encoder, a unet or both.")
        if not 0.0 <= shifted_fraction < 1.0:
            raise ValueError(f"SegmentationTrainer: shifted_fraction must be in [0, 1) (the rest trains the latent "
                             f"regression), got {shifted_fraction!r}.")
        if not 0.0 < unet_fraction <= 1.0:
            raise ValueError(f"SegmentationTrainer: unet_fraction must be in (0, 1] (the share of each generated "
                             f"batch the U-Net trains on), got {unet_fraction!r}.")
        self.generator = generator
        self.generator.trainable = False
        self.encoder = encoder
        # Trains the encoder's own latent: refinement is for serving.
        self.inversion = GeneratorInversion(encoder, generator, refine_steps=0) if encoder is not None else None
        self.unet = unet
        self.latent_dim = generator.latent_dim
        self.latent_weight = latent_weight
        self.mask_weight = mask_weight
        self.reconstruction_weight = reconstruction_weight
        self.feature_extractor = feature_extractor
        self.perceptual_weight = perceptual_weight if feature_extractor is not None else 0.0
        # With both weights 0 the real batch teaches the encoder nothing: its pass through encoder
        # and generator (forward and backward, about half the encoder's step) is skipped. With the
        # dcgan generator the weights come out the same, the skipped term's gradients being exact
        # zeros; the style generator also skips that pass's noise draws.
        self.reconstructs = bool(reconstruction_weight) or bool(self.perceptual_weight)
        self.visible_threshold = visible_threshold
        self.shifted_fraction = shifted_fraction
        self.unet_fraction = unet_fraction
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.random_shift = RandomShift(max_shift, seed=None if seed is None else seed + 1, name="random_shift")
        self.layer_jitter = ColorJitter(layer_jitter, seed=None if seed is None else seed + 2, name="layer_jitter")
        # The stage's clock (checkpoints, data offset), which counts float16 steps a loss-scale
        # optimizer skipped too (see LayeredGAN).
        self.step = keras.Variable(0, dtype="int64", trainable=False, aggregation="only_first_replica", name="step")
        shape = (None, generator.resolution, generator.resolution, 3)
        for network in (encoder, unet):
            if network is not None and not network.built:
                network.build(shape)
        self.built = True
        names = []
        if encoder is not None:
            names += ["latent_loss", "mask_loss"]
            names += ["reconstruction_loss"] if self.reconstructs else []
            names += ["perceptual_loss"] if self.perceptual_weight else []
            names += ["encoder_loss"]
        if unet is not None:
            names += ["unet_loss"]
        self.trackers = {name: keras.metrics.Mean(name=name) for name in names}

    def compile(self, encoder_optimizer=None, unet_optimizer=None, **kwargs):
        # Under mixed_float16 both are loss-scaled (before Keras' compile, which would wrap only one).
        encoder_optimizer = distribute.with_loss_scale(encoder_optimizer, self.dtype_policy)
        unet_optimizer = distribute.with_loss_scale(unet_optimizer, self.dtype_policy)
        super().compile(optimizer=encoder_optimizer or unet_optimizer, **kwargs)
        self.encoder_optimizer = encoder_optimizer
        self.unet_optimizer = unet_optimizer
        # Built here, inside the strategy scope (see LayeredGAN.compile).
        for optimizer, network in ((encoder_optimizer, self.encoder), (unet_optimizer, self.unet)):
            if network is not None:
                if optimizer is None:
                    raise ValueError(f"SegmentationTrainer.compile: give an optimizer for the {network.name}.")
                optimizer.build(network.trainable_variables)

    @property
    def metrics(self):
        return list(self.trackers.values())

    def call(self, images, training=False):
        """Masks of the U-Net if there is one, else of the encoder path; images in [-1, 1]."""
        if self.unet is not None:
            return self.unet(images, training=training)
        return self.inversion(images, training=training)["mask"]

    def train_step(self, data):
        real = data["image"] if isinstance(data, dict) else keras.utils.unpack_x_y_sample_weight(data)[0]
        batch_size = tf.shape(real)[0]
        z = distribute.normal((batch_size, self.latent_dim), self.seed_generator)
        layers = self.generator(z, training=False)
        terms = {}
        if self.encoder is not None:
            terms.update(self._encoder_step(real, z, layers))
        if self.unet is not None:
            if self.unet_fraction < 1.0:
                # ceil (at least one row), in float64 less a hair so that an exact product such as
                # 0.3 x 50 is not rounded up. Under tf.distribute, the first of each replica's rows.
                share = self.unet_fraction * tf.cast(batch_size, "float64") - 1e-9
                rows = tf.cast(tf.math.ceil(share), "int32")
                layers = {name: value[:rows] for name, value in layers.items()}
            # The perturbation of the GAN stage: the composites the discriminator judged realistic.
            foreground, mask = self.random_shift([layers["foreground"], layers["mask"]], training=True)
            target = distillation_target(mask, foreground, layers["background"], self.visible_threshold)
            # Each layer's colours apart (a no-op at layer_jitter 0): the target stays the mask's.
            background = self.layer_jitter(layers["background"], training=True)
            foreground = self.layer_jitter(foreground, training=True)
            terms.update(self._unet_step(composite(background, foreground, mask), target))
        self.step.assign_add(1)
        for name, value in terms.items():
            self.trackers[name].update_state(value)
        return {name: tracker.result() for name, tracker in self.trackers.items()}

    def _encoder_step(self, real, z, layers):
        n = tf.shape(z)[0]
        # floor: at least one image stays unshifted (fraction < 1), so the latent term is never empty.
        unshifted = n - tf.cast(tf.floor(self.shifted_fraction * tf.cast(n, "float32")), "int32")
        foreground, mask = layers["foreground"], layers["mask"]
        if self.shifted_fraction:
            # The last images: shifted, so only their mask is known (the shift is not in z). Under
            # tf.distribute, the last of each replica's rows: as random a choice, not the same rows.
            moved = self.random_shift([foreground[unshifted:], mask[unshifted:]], training=True)
            foreground = ops.concatenate([foreground[:unshifted], moved[0]], axis=0)
            mask = ops.concatenate([mask[:unshifted], moved[1]], axis=0)
        generated = composite(layers["background"], foreground, mask)
        variables = self.encoder.trainable_variables
        with tf.GradientTape() as tape:
            # One pass per half, not one on both: the style generator draws noise per row of its
            # batch, and a replica's rows of a draw are one device's only for its share of one batch.
            decoded = self.inversion(generated, training=True)
            latent_loss = losses.latent_regression_loss(decoded["latent"][:unshifted], z[:unshifted])
            mask_loss = losses.mask_cross_entropy(decoded["mask"], mask)
            terms = {"latent_loss": latent_loss, "mask_loss": mask_loss}
            loss = self.latent_weight * latent_loss + self.mask_weight * mask_loss
            if self.reconstructs:
                reconstruction = self.inversion(real, training=True)["composite"]
                terms["reconstruction_loss"] = losses.reconstruction_loss(reconstruction, real)
                loss += self.reconstruction_weight * terms["reconstruction_loss"]
            if self.perceptual_weight:
                features = self.feature_extractor(ops.concatenate([reconstruction, real], axis=0))
                terms["perceptual_loss"] = losses.reconstruction_loss(features[:n], features[n:])
                loss += self.perceptual_weight * terms["perceptual_loss"]
            scaled_loss = self.encoder_optimizer.scale_loss(loss * distribute.replica_scale())
        grads = tape.gradient(scaled_loss, variables)
        self.encoder_optimizer.apply_gradients(zip(grads, variables))
        return {**terms, "encoder_loss": loss}

    def _unet_step(self, images, target):
        variables = self.unet.trainable_variables
        with tf.GradientTape() as tape:
            loss = losses.mask_cross_entropy_from_logits(self.unet.mask_logits(images, training=True), target)
            scaled_loss = self.unet_optimizer.scale_loss(loss * distribute.replica_scale())
        grads = tape.gradient(scaled_loss, variables)
        self.unet_optimizer.apply_gradients(zip(grads, variables))
        return {"unet_loss": loss}
