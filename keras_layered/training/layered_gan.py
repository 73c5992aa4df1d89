"""The perturbed layered GAN and its adversarial `train_step` (TensorFlow: tapes, tf.distribute)."""

import contextlib
import functools

import keras
import tensorflow as tf
from keras import ops

from keras_layered import distribute, losses
from keras_layered.config import LossConfig, PerturbConfig, TrainConfig
from keras_layered.layers import BackgroundContrastJitter, BackgroundMixing, RandomShift, composite
from keras_layered.training.ema import fixed_latents, recompute_batch_norm_statistics

_LOSS_PAIRS = {
    # name: (discriminator loss, generator loss, penalty, penalty evaluated at interpolates?)
    "nonsaturating": (losses.d_nonsaturating_loss, losses.g_nonsaturating_loss, losses.r1_penalty, False),
    "wgan_gp": (losses.d_wasserstein_loss, losses.g_wasserstein_loss, losses.gradient_penalty, True),
}


class LayeredGAN(keras.Model):
    """Trains a layered generator against a discriminator on randomly shifted composites.

    One `train_step` = `d_steps` discriminator steps on the same real batch (the last one on the
    generator step's own samples), one generator step, one update of the generator's exponential
    moving average (EMA). The EMA generator is what
    `call`, samples and export use, after `refresh_ema_statistics`.

    Args:
        generator: a model z -> {"background", "foreground", "mask"} with a `latent_dim`.
        discriminator: a model images -> (B, 1) logits.
        adversarial_loss: "nonsaturating" (logistic + R1) or "wgan_gp" (Wasserstein + drift + GP).
        r1_gamma, gp_weight, drift: weights of the penalties of the chosen loss.
        penalty_every: apply R1 / GP every this many discriminator steps (lazy regularisation).
        min_mask_coverage, mask_coverage_weight: hinge keeping the mean mask above a floor.
        binarization_weight: weight of mean(min(mask, 1 - mask)).
        max_mask_coverage, max_coverage_weight: optional hinge keeping the mask below a ceiling.
        max_shift: random shift range of foreground + mask, fraction of the image size.
        bg_contrast_jitter: background contrast jitter strength (0 = off).
        background_mixing: fraction of the fakes composited over the background of another,
            independent latent (`BackgroundMixing`; 0 = off, the paper's shared z).
        ema_decay: decay of the EMA generator (ramped up over the first steps).
        ema_bn_batches, ema_bn_batch_size: `refresh_ema_statistics` recomputes the EMA generator's
            BatchNorm statistics over this many batches of this size (0 batches: keeps the
            generator's).
        d_steps: discriminator steps per generator step.
        seed: seed of z sampling and of the perturbation layers.
    """

    def __init__(
        self,
        generator,
        discriminator,
        adversarial_loss=LossConfig.adversarial,
        r1_gamma=LossConfig.r1_gamma,
        gp_weight=LossConfig.gp_weight,
        drift=LossConfig.drift,
        penalty_every=LossConfig.penalty_every,
        min_mask_coverage=LossConfig.min_mask_coverage,
        mask_coverage_weight=LossConfig.mask_coverage_weight,
        binarization_weight=LossConfig.binarization_weight,
        max_mask_coverage=LossConfig.max_mask_coverage,
        max_coverage_weight=LossConfig.max_coverage_weight,
        max_shift=PerturbConfig.max_shift,
        bg_contrast_jitter=PerturbConfig.bg_contrast_jitter,
        background_mixing=PerturbConfig.background_mixing,
        ema_decay=TrainConfig.ema_decay,
        ema_bn_batches=TrainConfig.ema_bn_batches,
        ema_bn_batch_size=TrainConfig.batch_size,
        d_steps=TrainConfig.d_steps,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if adversarial_loss not in _LOSS_PAIRS:
            raise ValueError(
                f"LayeredGAN: adversarial_loss must be one of {sorted(_LOSS_PAIRS)}, got {adversarial_loss!r}."
            )
        self.generator = generator
        self.discriminator = discriminator
        self.latent_dim = generator.latent_dim
        d_loss, g_loss, penalty, at_interpolates = _LOSS_PAIRS[adversarial_loss]
        self._d_adversarial = functools.partial(d_loss, drift=drift) if at_interpolates else d_loss
        self._g_adversarial = g_loss
        self._penalty = functools.partial(penalty, weight=gp_weight) if at_interpolates else (
            functools.partial(penalty, gamma=r1_gamma)
        )
        self._penalty_at_interpolates = at_interpolates
        self.penalty_every = penalty_every
        self.min_mask_coverage = min_mask_coverage
        self.mask_coverage_weight = mask_coverage_weight
        self.binarization_weight = binarization_weight
        self.max_mask_coverage = max_mask_coverage
        self.max_coverage_weight = max_coverage_weight
        self.ema_decay = ema_decay
        self.ema_bn_batches = ema_bn_batches
        self.ema_bn_batch_size = ema_bn_batch_size
        self.d_steps = d_steps
        self.seed_generator = keras.random.SeedGenerator(seed)
        # The run's clock: checkpoint numbers, the data offset on resume, the penalty schedule, the
        # EMA ramp. Not the optimizers' `iterations`: a float16 loss-scale optimizer skipping a
        # non-finite step does not count it.
        self.step = keras.Variable(0, dtype="int64", trainable=False, aggregation="only_first_replica", name="step")
        seeds = (None, None, None) if seed is None else (seed + 1, seed + 2, seed + 3)
        self.shift = RandomShift(max_shift, seed=seeds[0], name="random_shift")
        self.jitter = BackgroundContrastJitter(bg_contrast_jitter, seed=seeds[1], name="bg_jitter")
        self.mixing = BackgroundMixing(background_mixing, seed=seeds[2], name="bg_mixing")

        z = ops.zeros((1, self.latent_dim))
        generator(z)
        discriminator(ops.zeros((1, generator.resolution, generator.resolution, 3)))
        self.generator_ema = generator.__class__.from_config(generator.get_config())
        self.generator_ema(z)
        self.generator_ema.set_weights(generator.get_weights())
        self.built = True

        names = ["d_loss", "d_adversarial", "d_penalty", "real_logit", "fake_logit", "g_loss",
                 "g_adversarial", "min_coverage_loss", "binarization_loss", "max_coverage_loss",
                 "mask_mean"]
        self.trackers = {name: keras.metrics.Mean(name=name) for name in names}

    def compile(self, g_optimizer, d_optimizer, **kwargs):
        # Under mixed_float16 both are loss-scaled (before Keras' compile, which would wrap only one).
        g_optimizer = distribute.with_loss_scale(g_optimizer, self.dtype_policy)
        d_optimizer = distribute.with_loss_scale(d_optimizer, self.dtype_policy)
        super().compile(optimizer=g_optimizer, **kwargs)
        self.g_optimizer = g_optimizer
        self.d_optimizer = d_optimizer
        # Built here, inside the strategy scope, not lazily in the step: under MirroredStrategy a
        # lazy build in a replica context fails ("You must feed a value for placeholder tensor").
        g_optimizer.build(self.generator.trainable_variables)
        d_optimizer.build(self.discriminator.trainable_variables)

    @property
    def metrics(self):
        return list(self.trackers.values())

    def call(self, z, training=False):
        """EMA generator layers for latents z (B, latent_dim)."""
        return self.generator_ema(z, training=training)

    def refresh_ema_statistics(self):
        """Recomputes the EMA generator's BatchNorm statistics for its own weights, on fixed
        latents (`training.ema`); the generator and every random state stay as they are. Call it
        before the EMA generator is used in inference mode or saved."""
        if self.ema_bn_batches:
            latents = fixed_latents(self.ema_bn_batches, self.ema_bn_batch_size, self.latent_dim)
            recompute_batch_norm_statistics(self.generator_ema, latents)

    @contextlib.contextmanager
    def refreshed_ema_statistics(self):
        """`refresh_ema_statistics` while active (samples during training); on leaving, the EMA
        generator's statistics are the training state's again, whatever a checkpoint saves after."""
        stand_ins = [ops.convert_to_numpy(w) for w in self.generator_ema.non_trainable_weights]
        self.refresh_ema_statistics()
        try:
            yield self
        finally:
            for weight, value in zip(self.generator_ema.non_trainable_weights, stand_ins):
                weight.assign(value)

    def sample_latents(self, batch_size):
        return distribute.normal((batch_size, self.latent_dim), self.seed_generator)

    def perturb_and_composite(self, layers):
        """Shifts foreground + mask, mixes and jitters the backgrounds, composites: what D sees as fake."""
        foreground, mask = self.shift([layers["foreground"], layers["mask"]], training=True)
        background = self.jitter(self.mixing(layers["background"], training=True), training=True)
        return composite(background, foreground, mask)

    def train_step(self, data):
        real = data["image"] if isinstance(data, dict) else keras.utils.unpack_x_y_sample_weight(data)[0]
        d_step = self.step * self.d_steps  # discriminator steps before this one
        for i in range(self.d_steps - 1):
            self._d_step(real, self.fakes(tf.shape(real)[0]), d_step + i)
        d_terms, g_terms = self._d_and_g_step(real, d_step + self.d_steps - 1)
        self.step.assign_add(1)
        self._update_ema()
        for name, value in {**d_terms, **g_terms}.items():
            self.trackers[name].update_state(value)
        return {name: tracker.result() for name, tracker in self.trackers.items()}

    def fakes(self, batch_size):
        """Perturbed composites of fresh latents, as the discriminator sees them."""
        return self.perturb_and_composite(self.generator(self.sample_latents(batch_size), training=True))

    def _d_and_g_step(self, real, d_step):
        """One generator forward pass serves both players: its perturbed composites train D (as
        constants), then, through the updated D, the generator. `d_step`: see `_d_step`."""
        z = self.sample_latents(tf.shape(real)[0])
        with tf.GradientTape() as tape:
            layers = self.generator(z, training=True)
            fake = self.perturb_and_composite(layers)
            with tape.stop_recording():
                d_terms = self._d_step(real, tf.stop_gradient(fake), d_step)
            g_terms = self._g_terms(layers, fake)
            scaled_loss = self.g_optimizer.scale_loss(g_terms["g_loss"] * distribute.replica_scale())
        variables = self.generator.trainable_variables
        self.g_optimizer.apply_gradients(zip(tape.gradient(scaled_loss, variables), variables))
        return d_terms, g_terms

    def _d_step(self, real, fake, d_step):
        """One discriminator step, number `d_step` (from 0) of the run: the lazy penalty is due on
        every `penalty_every`-th."""
        variables = self.discriminator.trainable_variables
        penalty_due = tf.equal(d_step % self.penalty_every, 0)
        with tf.GradientTape() as tape:
            real_logits = self.discriminator(real, training=True)
            fake_logits = self.discriminator(fake, training=True)
            adversarial = self._d_adversarial(real_logits, fake_logits)
            penalty, overflow = tf.cond(penalty_due, lambda: self._lazy_penalty(real, fake),
                                        lambda: (tf.constant(0.0), tf.constant(False)))
            loss = adversarial + penalty
            scaled_loss = self.d_optimizer.scale_loss(loss * distribute.replica_scale())
            # NaN gradients: the loss-scale optimizer skips the step and lowers its scale.
            scaled_loss *= tf.where(overflow, float("nan"), 1.0)
        grads = tape.gradient(scaled_loss, variables)
        self.d_optimizer.apply_gradients(zip(grads, variables))
        return {
            "d_loss": loss,
            "d_adversarial": adversarial,
            "d_penalty": penalty,
            "real_logit": ops.mean(real_logits),
            "fake_logit": ops.mean(fake_logits),
        }

    def _lazy_penalty(self, real, fake):
        """R1 at real images or GP at interpolates, weighted by `penalty_every`: lazy
        regularisation (Karras et al. 2020) pays for the double backward pass only every few steps.

        Under float16 the inner gradient is loss-scaled like the loss (D's output times the loss
        scale, the gradient divided by it), else small gradients underflow to 0 in float16.
        Returns (penalty, overflow): where the scaled gradient overflowed, 0 and True (the step
        is then skipped, as any overflowed float16 step).
        """
        if self._penalty_at_interpolates:
            eps = distribute.uniform((tf.shape(real)[0], 1, 1, 1), self.seed_generator)
            inputs = eps * real + (1.0 - eps) * fake
        else:
            inputs = real
        scale = self.d_optimizer.scale_loss(tf.constant(1.0))  # 1 unless loss-scaled
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            scaled_sum = tf.reduce_sum(self.discriminator(inputs, training=True)) * scale
        gradients = tape.gradient(scaled_sum, inputs) / scale
        penalty = self._penalty(gradients) * float(self.penalty_every)
        # Only a loss-scaled step can be skipped; unscaled, a non-finite penalty is logged as such.
        loss_scaled = isinstance(self.d_optimizer, keras.optimizers.LossScaleOptimizer)
        overflow = tf.logical_and(loss_scaled, tf.logical_not(tf.math.is_finite(penalty)))
        return tf.where(overflow, 0.0, penalty), overflow

    def _g_terms(self, layers, fake):
        """The generator's loss terms: fool D on the perturbed composites, keep the mask alive and binary."""
        adversarial = self._g_adversarial(self.discriminator(fake, training=True))
        mask = layers["mask"]  # (B, H, W, 1), before the shift
        min_cov = losses.min_coverage_loss(mask, self.min_mask_coverage)
        binary = losses.binarization_loss(mask)
        max_cov = losses.max_coverage_loss(mask, self.max_mask_coverage)
        loss = (
            adversarial
            + self.mask_coverage_weight * min_cov
            + self.binarization_weight * binary
            + self.max_coverage_weight * max_cov
        )
        return {
            "g_loss": loss,
            "g_adversarial": adversarial,
            "min_coverage_loss": min_cov,
            "binarization_loss": binary,
            "max_coverage_loss": max_cov,
            "mask_mean": ops.mean(mask),
        }

    def _update_ema(self):
        # Ramp-up as tf.train.ExponentialMovingAverage(num_updates): early samples are not
        # dominated by the random initial weights.
        step = ops.cast(self.step, "float32")
        decay = ops.minimum(self.ema_decay, (1.0 + step) / (10.0 + step))
        for ema_weight, weight in zip(self.generator_ema.trainable_weights, self.generator.trainable_weights):
            ema_weight.assign(decay * ema_weight + (1.0 - decay) * weight)
        # BatchNorm statistics belong to the weights that produced them: the generator's stand in
        # (the same in a resumed run) until `refresh_ema_statistics` computes the EMA weights' own.
        for ema_weight, weight in zip(self.generator_ema.non_trainable_weights, self.generator.non_trainable_weights):
            ema_weight.assign(weight)
