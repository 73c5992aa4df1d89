"""A training run: a directory holding the config, checkpoints, logs, samples and models.

Two stages, each resumable: the layered GAN, then the segmentation networks trained against its
frozen EMA generator.
"""

import dataclasses
import json
import logging
from pathlib import Path

import keras

from keras_layered import distribute, kernels
from keras_layered.data.sources import evaluation_split
from keras_layered.errors import ConfigError
from keras_layered.evaluation import evaluate_segmenter
from keras_layered.training.build import (
    build_dataset,
    build_eval_dataset,
    build_layered_gan,
    build_segmentation_trainer,
    build_segmenters,
)
from keras_layered.training.callbacks import Checkpoint, SampleGrid
from keras_layered.training.checks import check_train, epoch_plan, generator_path, stage_name

log = logging.getLogger("keras_layered")


def fit_steps(model, dataset_from, done, steps, steps_per_epoch, checkpoint, callbacks, verbose="auto"):
    """Trains `model` from its restored step `done` to exactly `steps`, in epochs of
    `steps_per_epoch` steps; SIGTERM / Ctrl-C save the current step and raise `TrainingInterrupted`.

    `dataset_from(step)` gives the data from that step on, so a resumed run sees the batches an
    uninterrupted one would. A run resumed mid-epoch (after a signal, or with checkpoint_every not
    a multiple of steps_per_epoch) first finishes that epoch, so epochs keep their boundaries.
    """
    with checkpoint.saving_on_signals(model):
        into = done % steps_per_epoch
        if into and done < steps:
            epoch = done // steps_per_epoch
            model.fit(dataset_from(done), epochs=epoch + 1, initial_epoch=epoch,
                      steps_per_epoch=steps_per_epoch - into, callbacks=callbacks, verbose=verbose)
            done += steps_per_epoch - into
        if done < steps and checkpoint.signum is None:
            model.fit(dataset_from(done), epochs=steps // steps_per_epoch, initial_epoch=done // steps_per_epoch,
                      steps_per_epoch=steps_per_epoch, callbacks=callbacks, verbose=verbose)


def with_progress(batches, label, verbose=1):
    """Yields the batches of the tf.data.Dataset `batches`, after printing `label`, with a progress
    bar of the batches done (of all, when the dataset knows its length); none with verbose 0."""
    if not verbose:
        yield from batches
        return
    cardinality = int(batches.cardinality())
    print(label, flush=True)
    bar = keras.utils.Progbar(cardinality if cardinality > 0 else None, unit_name="batch")
    done = 0
    for batch in batches:
        yield batch  # scored before the bar moves on
        done += 1
        bar.update(done)
    if cardinality <= 0:
        bar.update(done, finalize=True)


def train(cfg, run_dir, stage="all", verbose="auto"):
    """Runs the `stage`s of `cfg` in `run_dir` ("gan", "segmenter" = the segmentation stage, or
    "all"; "encoder" is the segmentation stage's old name); returns the evaluation of the
    segmentation stage, or None after the GAN stage alone."""
    run_dir = Path(run_dir)
    stage = stage_name(stage)
    # Every check that can fail before anything is written: a bad command must not rewrite the
    # config of a run it cannot continue.
    cfg = check_train(cfg, run_dir, stage)
    # First of all TensorFlow: MultiWorkerMirroredStrategy must exist before any other op.
    strategy = distribute.make_strategy(cfg.distribute.strategy)
    with strategy.scope():
        generator = _check_generator(cfg, run_dir) if stage == "segmenter" else None
    run_dir.mkdir(parents=True, exist_ok=True)
    # The run's config names the precision it trains in: a resume on other hardware keeps it
    # (float16 adds loss-scaling state to the checkpoint).
    precision = distribute.resolve_precision(cfg.distribute.mixed_precision)
    # The kernels are recorded too: oneDNN as it ran, the ISA and threads in a comment.
    state = kernels.check_onednn(cfg.distribute.onednn)
    onednn = {"on": True, "off": False}.get(state["onednn"], cfg.distribute.onednn)
    cfg = dataclasses.replace(cfg, distribute=dataclasses.replace(cfg.distribute, mixed_precision=precision,
                                                                  onednn=onednn))
    cfg.save(run_dir / "config.yaml", comment=f"trained with: {kernels.describe(state)}")
    if stage in ("gan", "all"):
        train_gan(cfg, run_dir, verbose)
    if stage in ("segmenter", "all"):
        return train_segmentation(cfg, run_dir, verbose, generator)
    return None


def train_gan(cfg, run_dir, verbose="auto"):
    """Trains (or resumes) the layered GAN of `cfg` in `run_dir`; returns the `LayeredGAN`.

    Writes `checkpoints/`, `tensorboard/`, `samples/step_*.png` and, at the end,
    `generator.keras` (the EMA generator) and `discriminator.keras`.
    """
    run_dir = Path(run_dir)
    _, steps_per_epoch = epoch_plan(cfg.train.steps, cfg.train.steps_per_epoch)
    with distribute.make_strategy(cfg.distribute.strategy).scope():  # fit distributes over it
        gan = build_layered_gan(cfg)
    checkpoint = Checkpoint(
        run_dir / "checkpoints",
        cfg.train.checkpoint_every,
        lambda m: {"gan": m, "g_optimizer": m.g_optimizer, "d_optimizer": m.d_optimizer},
    )
    done = checkpoint.restore(gan)
    if done:
        log.info("resuming the GAN stage of %s from step %d", run_dir, done)
        _configured_learning_rates([(gan.g_optimizer, cfg.train.g_lr), (gan.d_optimizer, cfg.train.d_lr)])
    callbacks = [
        checkpoint,  # first: a non-finite step stops training before the others see it
        keras.callbacks.TensorBoard(run_dir / "tensorboard", update_freq=50),
        SampleGrid(run_dir, cfg.train.sample_every, final_step=cfg.train.steps),
    ]
    batch_size = cfg.train.batch_size
    fit_steps(gan, lambda step: build_dataset(cfg, start=step * batch_size), done, cfg.train.steps,
              steps_per_epoch, checkpoint, callbacks, verbose)
    gan.refresh_ema_statistics()
    gan.generator_ema.save(run_dir / "generator.keras")
    gan.discriminator.save(run_dir / "discriminator.keras")
    return gan


def train_segmentation(cfg, run_dir, verbose="auto", generator=None):
    """Trains (or resumes) the segmentation stage against `run_dir/generator.keras` (`generator`,
    if the caller loaded it already), frozen.

    Writes `checkpoints/segmentation/`, `tensorboard/segmentation/`, `segmenter_<method>.keras` per
    trained method, `segmenter.keras` (the `segment.serve` one) and `evaluation.json` (scores on
    the source's images with ground-truth masks, `sources.evaluation_split`). Returns the
    evaluation: {method: scores}, empty when the source has no masks.
    """
    run_dir = Path(run_dir)
    s = cfg.segment
    _, steps_per_epoch = epoch_plan(s.steps, s.steps_per_epoch, "segment")
    with distribute.make_strategy(cfg.distribute.strategy).scope():
        generator = generator or _check_generator(cfg, run_dir)
        trainer = build_segmentation_trainer(cfg, generator)
    trained_against = [w.copy() for w in generator.get_weights()]
    checkpoint = Checkpoint(
        run_dir / "checkpoints" / "segmentation",
        s.checkpoint_every,
        lambda t: {"trainer": t, **{f"{n.name}_optimizer": o for n, o in _networks(t)}},
    )
    done = checkpoint.restore(trainer)
    if done:
        log.info("resuming the segmentation stage of %s from step %d", run_dir, done)
        # The checkpoint holds the generator the stage trained against; generator.keras rules.
        if any((a != b).any() for a, b in zip(generator.get_weights(), trained_against)):
            log.warning("generator.keras changed after the segmentation stage trained against it; delete "
                        "%s to retrain the stage on the new generator", run_dir / "checkpoints" / "segmentation")
        generator.set_weights(trained_against)
        if not s.lr_decay:  # a schedule is rebuilt from the config, not restored
            _configured_learning_rates([(o, s.lr) for _, o in _networks(trainer)])
    callbacks = [checkpoint, keras.callbacks.TensorBoard(run_dir / "tensorboard" / "segmentation", update_freq=50)]
    fit_steps(trainer, lambda step: build_dataset(cfg, s.batch_size, start=step * s.batch_size), done, s.steps,
              steps_per_epoch, checkpoint, callbacks, verbose)
    segmenters = build_segmenters(cfg, trainer)
    for method, segmenter in segmenters.items():
        segmenter.save(run_dir / f"segmenter_{method}.keras")
    segmenters[s.serve].save(run_dir / "segmenter.keras")
    evaluated_on = evaluation_split(cfg.data)
    if evaluated_on is None:
        log.info("%s has no ground-truth masks: the segmenters are not scored (no evaluation.json); score them "
                 "with python cli.py evaluate --model %s --data SOURCE_WITH_MASKS", cfg.data.source, run_dir)
        return {}
    eval_data = build_eval_dataset(cfg)
    results = {method: evaluate_segmenter(seg, with_progress(eval_data, f"scoring {method} on {evaluated_on}",
                                                             verbose))
               for method, seg in segmenters.items()}
    evaluation = {"data": cfg.data.source, "evaluated_on": evaluated_on, "served": s.serve, "results": results}
    if cfg.data.source == "synthetic":
        evaluation["eval_seed"] = cfg.data.eval_seed
    (run_dir / "evaluation.json").write_text(json.dumps(evaluation, indent=2) + "\n")
    for method, scores in results.items():
        log.info("%s: mean IoU %.3f (inverted mask %.3f), Dice %.3f on %d images of %s: %s", method,
                 scores["mean_iou"], scores["mean_inverted_iou"], scores["mean_dice"], scores["num_images"],
                 cfg.data.source, evaluated_on)
    return results


def _check_generator(cfg, run_dir):
    """The run's trained generator, checked against `cfg`; ConfigError naming what to do otherwise."""
    path = generator_path(run_dir)
    generator = keras.saving.load_model(path)
    for key, value, configured in (("data.resolution", generator.resolution, cfg.data.resolution),
                                   ("model.latent_dim", generator.latent_dim, cfg.model.latent_dim)):
        if value != configured:
            raise ConfigError(
                f"{path} was trained with {key}={value}, the config says otherwise; use the run's own "
                f"config (python cli.py train --out {run_dir} reads {run_dir}/config.yaml) or --set {key}={value}"
            )
    return generator


def _configured_learning_rates(optimizers_and_rates):
    """A checkpoint restores the optimizers' learning rates too: a resumed stage trains with the
    configured ones (e.g. lower ones after a non-finite loss)."""
    for optimizer, rate in optimizers_and_rates:
        optimizer.learning_rate = rate


def _networks(trainer):
    return [(n, o) for n, o in ((trainer.encoder, trainer.encoder_optimizer), (trainer.unet, trainer.unet_optimizer))
            if n is not None]
