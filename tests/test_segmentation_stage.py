"""The segmentation stage: SegmentationTrainer, the `segmenter` stage of a run, and the CLI commands
that use its result (evaluate, export, segment)."""

import copy
import json
import shutil
import types

import keras
import numpy as np
import pytest
import yaml
import tensorflow as tf
from click.testing import CliRunner
from PIL import Image


from keras_layered.config import ConfigError, config_from_dict, load_config
from keras_layered.models.encoder import Encoder
from keras_layered.models.layered_generator import LayeredGenerator
from keras_layered.models.mask_ensemble import MaskEnsemble
from keras_layered.models.unet import UNet
from keras_layered.training import run as run_module
from keras_layered.training.build import build_segmentation_trainer, build_segmenters
from keras_layered.training.segmentation import SegmentationTrainer

RES, LATENT, BATCH = 8, 8, 4

TINY = {
    "data": {"resolution": RES, "eval_scenes": 16},
    "model": {"latent_dim": LATENT, "base_width": 16, "min_width": 8, "d_base_width": 16, "d_min_width": 8},
    "train": {"steps": 2, "steps_per_epoch": 2, "batch_size": BATCH, "seed": 0, "checkpoint_every": 2,
              "sample_every": 2},
    "segment": {"steps": 2, "steps_per_epoch": 2, "checkpoint_every": 2, "batch_size": BATCH,
                "encoder_base_width": 16, "encoder_min_width": 8, "unet_width": 4, "unet_depth": 2},
}


def tiny_config(**segment):
    values = copy.deepcopy(TINY)
    values["segment"].update(segment)
    return config_from_dict(values)


def weights(model):
    return [keras.ops.convert_to_numpy(w).copy() for w in model.weights]


def generator():
    keras.utils.set_random_seed(0)
    g = LayeredGenerator(RES, LATENT, base_width=16, min_width=8)
    g(np.zeros((1, LATENT), np.float32))
    return g


def real_images():
    return tf.data.Dataset.from_tensors(
        np.random.default_rng(0).uniform(-1, 1, (BATCH, RES, RES, 3)).astype("float32")
    ).repeat()


def trainer(g, encoder=True, unet=True, **kwargs):
    t = SegmentationTrainer(
        g,
        Encoder(RES, LATENT, base_width=16, min_width=8, hidden_dim=16) if encoder else None,
        UNet(RES, width=4, depth=2) if unet else None,
        seed=0,
        **kwargs,
    )
    t.compile(keras.optimizers.Adam(1e-3) if encoder else None, keras.optimizers.Adam(1e-3) if unet else None)
    return t


# --- SegmentationTrainer ---------------------------------------------------------------------------


def test_generator_is_frozen_bit_for_bit_while_the_networks_learn():
    g = generator()
    t = trainer(g)
    before_g, before_e, before_u = weights(g), weights(t.encoder), weights(t.unet)
    history = t.fit(real_images(), steps_per_epoch=3, epochs=1, verbose=0).history
    # Every generator variable, BatchNorm moving statistics included, is unchanged.
    for now, then in zip(weights(g), before_g):
        np.testing.assert_array_equal(now, then)
    assert not g.trainable
    assert all(not np.array_equal(a, b) for a, b in zip(weights(t.encoder), before_e))
    assert all(not np.array_equal(a, b) for a, b in zip(weights(t.unet), before_u))
    assert set(history) == {"latent_loss", "mask_loss", "reconstruction_loss", "encoder_loss", "unet_loss"}
    assert all(np.isfinite(v[-1]) for v in history.values())


def test_encoder_loss_is_the_weighted_sum_of_its_terms():
    t = trainer(generator(), unet=False, latent_weight=0.5, mask_weight=2.0, reconstruction_weight=3.0)
    logs = t.fit(real_images(), steps_per_epoch=1, epochs=1, verbose=0).history
    expected = 0.5 * logs["latent_loss"][0] + 2.0 * logs["mask_loss"][0] + 3.0 * logs["reconstruction_loss"][0]
    assert logs["encoder_loss"][0] == pytest.approx(expected, rel=1e-5)
    assert "unet_loss" not in logs


def test_zero_reconstruction_weight_skips_the_real_pass_and_trains_the_same_weights(monkeypatch):
    """At reconstruction_weight 0 the real batch never reaches the encoder, and the encoder's weights
    after 3 steps equal, bit for bit, those of the same trainer made to compute the term times 0."""
    from keras_layered.models.generator_inversion import GeneratorInversion

    keras.utils.set_random_seed(1)
    skipped = trainer(generator(), unet=False, reconstruction_weight=0.0)
    keras.utils.set_random_seed(1)
    computed = trainer(generator(), unet=False, reconstruction_weight=0.0)
    computed.reconstructs = True
    computed.trackers["reconstruction_loss"] = keras.metrics.Mean(name="reconstruction_loss")
    assert weights(skipped.encoder)[0].tobytes() == weights(computed.encoder)[0].tobytes()
    batches = []
    call = GeneratorInversion.call

    def spy(self, images, training=False):
        batches.append(images)
        return call(self, images, training=training)

    monkeypatch.setattr(GeneratorInversion, "call", spy)
    logs = skipped.fit(real_images(), steps_per_epoch=3, epochs=1, verbose=0).history
    assert len(batches) == 1  # traced once: the generated composites only
    assert set(logs) == {"latent_loss", "mask_loss", "encoder_loss"}
    batches.clear()
    full = computed.fit(real_images(), steps_per_epoch=3, epochs=1, verbose=0).history
    assert len(batches) == 2 and full["reconstruction_loss"][0] > 0
    for a, b in zip(weights(skipped.encoder), weights(computed.encoder)):
        np.testing.assert_array_equal(a, b)
    assert logs["encoder_loss"][0] == pytest.approx(full["encoder_loss"][0], rel=1e-6)


def test_shifted_fraction_shifts_the_last_generated_images_and_drops_their_latent_term(monkeypatch):
    """With shifted_fraction 0.5 and a batch of 4: the last 2 generated images go through the random
    shift (here a stub that moves the object out of view) and count in the mask term only."""
    from keras_layered.layers import composite
    from keras_layered.training import segmentation

    seen = {}

    def loss_spy(key):
        def loss(*args):
            seen.setdefault(key, args)  # the first step's arguments
            return 0.0
        return loss

    monkeypatch.setattr(segmentation.losses, "latent_regression_loss", loss_spy("latent"))
    monkeypatch.setattr(segmentation.losses, "mask_cross_entropy", loss_spy("mask"))
    g = generator()
    t = trainer(g, unet=False, shifted_fraction=0.5)
    shifted = []

    def out_of_view(tensors, training):
        shifted.append(tensors)
        return [x * 0.0 for x in tensors]

    def inversion_spy(images, training):
        seen.setdefault("images", []).append(images)
        return inversion(images, training=training)

    inversion = t.inversion
    t.random_shift, t.inversion = out_of_view, inversion_spy
    t.compile(t.encoder_optimizer, run_eagerly=True)
    t.fit(real_images(), steps_per_epoch=1, epochs=1, verbose=0)

    latent, z = (keras.ops.convert_to_numpy(x) for x in seen["latent"])
    assert latent.shape == z.shape == (2, LATENT)  # the unshifted half only
    assert [tuple(x.shape) for x in shifted[0]] == [(2, RES, RES, 3), (2, RES, RES, 1)]
    layers = {k: keras.ops.convert_to_numpy(v) for k, v in g(keras.ops.convert_to_tensor(z)).items()}
    predicted, target = (keras.ops.convert_to_numpy(x) for x in seen["mask"])
    assert predicted.shape == target.shape == (BATCH, RES, RES, 1)
    np.testing.assert_allclose(target[:2], layers["mask"], atol=1e-6)  # the unshifted generator masks
    assert target[:2].max() > 0 and not target[2:].any()  # the shifted ones: the stub's
    assert len(seen["images"]) == 2  # one pass on the generated images, one on the real ones
    images = np.concatenate([keras.ops.convert_to_numpy(x) for x in seen["images"]])  # generated, then real
    assert images.shape == (2 * BATCH, RES, RES, 3)
    expected = keras.ops.convert_to_numpy(composite(layers["background"], layers["foreground"], layers["mask"]))
    np.testing.assert_allclose(images[:2], expected, atol=1e-6)
    assert not np.allclose(images[2:4], images[:2])  # other latents, and composited without the object
    np.testing.assert_allclose(images[BATCH:], next(iter(real_images())), atol=1e-6)


def test_shifted_fraction_keeps_an_unshifted_image_in_graph_mode():
    """0.9 of a batch of 4 shifts 3 images (floor): the latent term still has one image, so it is finite."""
    t = trainer(generator(), unet=False, shifted_fraction=0.9)
    logs = t.fit(real_images(), steps_per_epoch=2, epochs=1, verbose=0).history
    assert all(np.isfinite(v[-1]) for v in logs.values())
    with pytest.raises(ValueError, match=r"shifted_fraction must be in \[0, 1\)"):
        trainer(generator(), unet=False, shifted_fraction=1.0)
    assert build_segmentation_trainer(tiny_config(shifted_fraction=0.25), generator()).shifted_fraction == 0.25


def test_unet_fraction_trains_the_unet_on_the_first_rows_of_the_generated_batch(monkeypatch):
    """unet_fraction 0.5 of a batch of 4: the U-Net's loss sees the composites and targets of the
    first 2 latents only (ceil, so 0.3 still gives 2 rows); the shift is an identity here, so that
    the rows compare across fractions."""
    from keras_layered.training import segmentation

    seen = []

    def loss_spy(logits, target):
        seen.append((keras.ops.convert_to_numpy(logits), keras.ops.convert_to_numpy(target)))
        return keras.ops.mean(logits) * 0.0

    monkeypatch.setattr(segmentation.losses, "mask_cross_entropy_from_logits", loss_spy)
    g = generator()
    runs = {}
    for fraction in (1.0, 0.5, 0.3):
        keras.utils.set_random_seed(0)  # the same U-Net weights in each
        t = trainer(g, encoder=False, unet_fraction=fraction)
        t.random_shift = lambda tensors, training: tensors  # no shift: targets comparable across runs
        t.compile(None, t.unet_optimizer, run_eagerly=True)
        t.fit(real_images(), steps_per_epoch=1, epochs=1, verbose=0)
        runs[fraction] = seen.pop()
    full_logits, full_target = runs[1.0]
    assert full_logits.shape == full_target.shape == (BATCH, RES, RES, 1)
    for fraction in (0.5, 0.3):
        logits, target = runs[fraction]
        assert logits.shape == target.shape == (2, RES, RES, 1)
        np.testing.assert_allclose(target, full_target[:2])  # the same latents' first rows
        np.testing.assert_allclose(logits, full_logits[:2], atol=1e-5)
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match=r"unet_fraction must be in \(0, 1\]"):
            trainer(g, encoder=False, unet_fraction=bad)
    assert build_segmentation_trainer(tiny_config(unet_fraction=0.5), generator()).unet_fraction == 0.5
    with pytest.raises(ConfigError, match="unet_fraction"):
        tiny_config(unet_fraction=0.0)


def test_unet_fraction_leaves_the_encoder_bit_identical_and_trains_in_graph_mode(monkeypatch):
    """The encoder's half of the step, and its random draws, do not depend on the U-Net's rows; a
    compiled fit at 0.3 trains the U-Net to a finite loss. A batch of 50 at 0.3 gives 15 rows, not
    the 16 a float32 ceil of 0.3 x 50 gives."""
    from keras_layered.training import segmentation

    g = generator()
    encoders, unets = {}, {}
    for fraction in (1.0, 0.5):
        keras.utils.set_random_seed(0)
        t = trainer(g, unet_fraction=fraction)
        t.fit(real_images(), steps_per_epoch=2, epochs=1, verbose=0)
        encoders[fraction], unets[fraction] = weights(t.encoder), weights(t.unet)
    for a, b in zip(encoders[1.0], encoders[0.5]):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(unets[1.0], unets[0.5]))
    t = trainer(g, encoder=False, unet_fraction=0.3)
    logs = t.fit(real_images(), steps_per_epoch=2, epochs=1, verbose=0).history
    assert np.isfinite(logs["unet_loss"][-1]) and logs["unet_loss"][-1] > 0

    rows = []

    def loss_spy(logits, target):
        rows.append(int(logits.shape[0]))
        return keras.ops.mean(logits) * 0.0

    monkeypatch.setattr(segmentation.losses, "mask_cross_entropy_from_logits", loss_spy)
    t.compile(None, t.unet_optimizer, run_eagerly=True)
    batch = np.random.default_rng(1).uniform(-1, 1, (50, RES, RES, 3)).astype("float32")
    t.fit(tf.data.Dataset.from_tensors(batch).repeat(), steps_per_epoch=1, epochs=1, verbose=0)
    assert rows == [15]


def test_encoder_learns_to_invert_the_generator():
    """Latent regression on generated images alone drives ||E(G(z)) - z|| down."""
    from keras_layered.layers import composite

    g = generator()
    t = trainer(g, unet=False, mask_weight=0.0, reconstruction_weight=0.0)
    t.encoder_optimizer.learning_rate.assign(3e-3)
    z = np.random.default_rng(3).standard_normal((64, LATENT)).astype("float32")
    layers = g(z)
    images = composite(layers["background"], layers["foreground"], layers["mask"])

    def latent_error():
        return float(np.mean((keras.ops.convert_to_numpy(t.encoder(images)) - z) ** 2))

    before = latent_error()
    t.fit(real_images(), steps_per_epoch=100, epochs=1, verbose=0)
    assert latent_error() < 0.5 * before


def test_unet_only_trainer_and_its_call():
    t = trainer(generator(), encoder=False)
    logs = t.fit(real_images(), steps_per_epoch=2, epochs=1, verbose=0).history
    assert set(logs) == {"unet_loss"}
    masks = keras.ops.convert_to_numpy(t(np.zeros((2, RES, RES, 3), np.float32)))
    assert masks.shape == (2, RES, RES, 1) and np.all((masks >= 0) & (masks <= 1))


def test_distillation_target_hand_values():
    from keras_layered.training.segmentation import distillation_target

    mask = np.array([0.9, 0.9, 0.9, 0.4], np.float32).reshape(1, 2, 2, 1)
    foreground = np.array([[0.5, 0.0, 0.0], [0.1, 0.1, -0.05], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]], np.float32)
    background = np.zeros((1, 2, 2, 3), np.float32)
    foreground = foreground.reshape(1, 2, 2, 3)
    # mask > 0.5: [1, 1, 1, 0]; largest channel difference: [0.5, 0.1, 0.0, 1.0]
    off = keras.ops.convert_to_numpy(distillation_target(mask, foreground, background))
    np.testing.assert_array_equal(off.ravel(), [1, 1, 1, 0])
    on = keras.ops.convert_to_numpy(distillation_target(mask, foreground, background, visible_threshold=0.2))
    np.testing.assert_array_equal(on.ravel(), [1, 0, 0, 0])  # the 2nd and 3rd look like the background


def test_trainer_passes_visible_threshold_to_the_unet_target(monkeypatch):
    from keras_layered.training import segmentation

    seen = []
    original = segmentation.distillation_target
    monkeypatch.setattr(segmentation, "distillation_target",
                        lambda *args: seen.append(args[3]) or original(*args))
    t = trainer(generator(), encoder=False, visible_threshold=0.3)
    t.fit(real_images(), steps_per_epoch=1, epochs=1, verbose=0)
    assert seen and all(v == 0.3 for v in seen)

    assert build_segmentation_trainer(tiny_config(visible_threshold=0.25), generator()).visible_threshold == 0.25


def test_layer_jitter_recolours_each_layer_of_the_unet_composites_and_keeps_the_target(monkeypatch):
    """The same seed with and without layer_jitter: the same z, shift and target; the composite
    differs, and where the mask is ~0 it is the background under a per-channel gain and offset."""
    from keras_layered.training import segmentation

    seen = {}
    original_composite = segmentation.composite

    def spy_composite(background, foreground, mask):
        seen["layers"] = [keras.ops.convert_to_numpy(v) for v in (background, foreground, mask)]
        return original_composite(background, foreground, mask)

    def spy_unet_step(self, images, target):
        seen["images"], seen["target"] = keras.ops.convert_to_numpy(images), keras.ops.convert_to_numpy(target)
        return {"unet_loss": keras.ops.convert_to_numpy(0.0)}

    monkeypatch.setattr(segmentation, "composite", spy_composite)
    monkeypatch.setattr(SegmentationTrainer, "_unet_step", spy_unet_step)
    runs = {}
    for strength in (0.0, 0.5):
        t = trainer(generator(), encoder=False, layer_jitter=strength)
        assert t.layer_jitter.strength == strength
        t.train_step(np.zeros((BATCH, RES, RES, 3), np.float32))  # eager: the spies see values
        runs[strength] = dict(seen)
    plain, jittered = runs[0.0], runs[0.5]
    np.testing.assert_array_equal(plain["target"], jittered["target"])
    np.testing.assert_array_equal(plain["layers"][2], jittered["layers"][2])  # the same shifted mask
    assert np.abs(plain["images"] - jittered["images"]).max() > 0.05
    for jittered_layer, plain_layer in zip(jittered["layers"][:2], plain["layers"][:2]):
        # Each layer: clip(x * g + o, -1, 1) with g, o per sample and channel, read back by a
        # least-squares fit on the unclipped pixels.
        for b in range(BATCH):
            for c in range(3):
                x, y = plain_layer[b, ..., c].ravel(), jittered_layer[b, ..., c].ravel()
                keep = np.abs(y) < 0.999
                g, o = np.polyfit(x[keep], y[keep], 1)
                assert 0.5 - 1e-3 <= g <= 1.5 + 1e-3 and -0.5 - 1e-3 <= o <= 0.5 + 1e-3
                np.testing.assert_allclose(np.clip(x * g + o, -1, 1), y, atol=1e-4)
    # Foreground and background got different colours (independent draws).
    fg_gain = np.polyfit(plain["layers"][1][0, ..., 0].ravel(), jittered["layers"][1][0, ..., 0].ravel(), 1)[0]
    bg_gain = np.polyfit(plain["layers"][0][0, ..., 0].ravel(), jittered["layers"][0][0, ..., 0].ravel(), 1)[0]
    assert abs(fg_gain - bg_gain) > 1e-3

    assert build_segmentation_trainer(tiny_config(layer_jitter=0.3), generator()).layer_jitter.strength == 0.3
    with pytest.raises(ConfigError, match="layer_jitter"):
        tiny_config(layer_jitter=1.5)


def test_lr_decay_is_linear_and_zero_after_the_last_segmentation_step():
    t = build_segmentation_trainer(tiny_config(steps=4, lr=1e-3, lr_decay=True), generator())
    t.fit(real_images(), steps_per_epoch=3, epochs=1, verbose=0)
    for optimizer in (t.encoder_optimizer, t.unet_optimizer):
        assert float(optimizer.learning_rate) == pytest.approx(1e-3 * (1 - 3 / 4), rel=1e-5)
    t.fit(real_images(), steps_per_epoch=1, epochs=1, verbose=0)
    assert float(t.unet_optimizer.learning_rate) == 0.0
    constant = build_segmentation_trainer(tiny_config(steps=4, lr=1e-3), generator())
    constant.fit(real_images(), steps_per_epoch=3, epochs=1, verbose=0)
    assert float(constant.unet_optimizer.learning_rate) == pytest.approx(1e-3)


def test_trainer_needs_a_network_and_its_optimizer():
    with pytest.raises(ValueError, match="encoder, a unet or both"):
        SegmentationTrainer(generator())
    t = SegmentationTrainer(generator(), Encoder(RES, LATENT, base_width=16, min_width=8))
    with pytest.raises(ValueError, match="optimizer for the encoder"):
        t.compile(None, keras.optimizers.Adam())


def test_perceptual_term_with_a_local_weights_file(tmp_path):
    from keras_layered.models.perceptual import vgg16_features

    keras.utils.set_random_seed(0)
    path = tmp_path / "vgg16_notop.weights.h5"
    keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(path)
    features = vgg16_features(str(path), RES)
    assert features(np.zeros((1, RES, RES, 3), np.float32)).shape == (1, 8, 8, 256)
    t = trainer(generator(), unet=False, feature_extractor=features, perceptual_weight=0.5)
    logs = t.fit(real_images(), steps_per_epoch=1, epochs=1, verbose=0).history
    expected = (logs["latent_loss"][0] + logs["mask_loss"][0] + logs["reconstruction_loss"][0]
                + 0.5 * logs["perceptual_loss"][0])
    assert logs["encoder_loss"][0] == pytest.approx(expected, rel=1e-5)
    assert logs["perceptual_loss"][0] > 0


def test_perceptual_weight_needs_an_existing_file(tmp_path):
    with pytest.raises(ConfigError, match="segment.perceptual_weights"):
        tiny_config(perceptual_weight=1.0)
    cfg = tiny_config(perceptual_weight=1.0, perceptual_weights=str(tmp_path / "missing.h5"))

    with pytest.raises(ConfigError, match="no file at"):
        build_segmentation_trainer(cfg, generator())


@pytest.mark.parametrize("largest", [False, True])
def test_segmenters_keep_the_largest_region_as_configured(largest):
    cfg = tiny_config(largest_component=largest)
    segmenters = build_segmenters(cfg, build_segmentation_trainer(cfg, generator()))
    assert set(segmenters) == {"encoder", "distilled"}
    for segmenter in segmenters.values():
        assert segmenter.largest_component is largest
        assert (segmenter.keep_largest is not None) is largest


def test_encoder_flip_average_and_the_ensemble_are_built_as_configured():
    cfg = tiny_config(encoder_flip_average=True, serve="ensemble", ensemble_encoder_share=0.25)
    trainer_ = build_segmentation_trainer(cfg, generator())
    segmenters = build_segmenters(cfg, trainer_)
    assert set(segmenters) == {"encoder", "distilled", "ensemble"}
    assert segmenters["encoder"].flip_average is True and segmenters["distilled"].flip_average is False
    ensemble = segmenters["ensemble"].network
    assert ensemble.shares == [0.75, 0.25] and ensemble.flip_average == [False, True]
    assert ensemble.networks[0] is trainer_.unet and ensemble.networks[1].encoder is trainer_.encoder
    assert segmenters["ensemble"].flip_average is False  # the members average their own mirror images
    assert set(build_segmenters(tiny_config(), trainer_)) == {"encoder", "distilled"}  # only when served
    assert {seg.threshold for seg in segmenters.values()} == {0.5}
    calibrated = build_segmenters(tiny_config(serve="ensemble", mask_threshold=0.4), trainer_)
    assert {name: seg.threshold for name, seg in calibrated.items()} == {"encoder": 0.4, "distilled": 0.4,
                                                                           "ensemble": 0.4}
    assert {seg.shift_average for seg in segmenters.values()} == {0}
    shifted = build_segmenters(tiny_config(serve="ensemble", shift_average=1), trainer_)
    assert {name: seg.shift_average for name, seg in shifted.items()} == {"encoder": 1, "distilled": 1, "ensemble": 1}


def test_served_network_must_be_trained():
    with pytest.raises(ConfigError, match="segment.serve"):
        tiny_config(distilled=False)  # serve defaults to distilled
    assert tiny_config(distilled=False, serve="encoder").segment.serve == "encoder"
    for missing in ("encoder", "distilled"):
        with pytest.raises(ConfigError, match="ensemble needs both"):
            tiny_config(serve="ensemble", **{missing: False})
    with pytest.raises(ConfigError, match="segment.ensemble_encoder_share"):
        tiny_config(serve="ensemble", ensemble_encoder_share=1.5)
    with pytest.raises(ConfigError, match="segment.encoder"):
        tiny_config(encoder=False, distilled=False)


# --- the run's stages ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    cfg = tiny_config()
    results = run_module.train(cfg, run_dir, stage="all", verbose=0)
    return types.SimpleNamespace(dir=run_dir, cfg=cfg, results=results)


def test_stage_all_writes_both_stages_outputs(run):
    d = run.dir
    from keras_layered import kernels

    saved, configured = load_config(d / "config.yaml").to_dict(), run.cfg.to_dict()
    # distribute.onednn "auto" is recorded as the kernels the run had.
    assert saved["distribute"].pop("onednn") is (kernels.kernel_state()["onednn"] == "on")
    configured["distribute"].pop("onednn")
    assert saved == configured
    for name in ("generator.keras", "discriminator.keras", "segmenter.keras", "segmenter_encoder.keras",
                 "segmenter_distilled.keras", "evaluation.json"):
        assert (d / name).is_file(), name
    assert (d / "checkpoints" / "segmentation" / "ckpt-2.index").is_file()
    evaluation = json.loads((d / "evaluation.json").read_text())
    assert evaluation["served"] == "distilled" and evaluation["eval_seed"] == run.cfg.data.eval_seed
    assert evaluation["results"] == run.results
    for scores in run.results.values():
        assert scores["num_images"] == 16
        assert 0.0 <= scores["mean_iou"] <= 1.0 and 0.0 <= scores["dataset_iou"] <= 1.0


def test_served_segmenter_is_the_configured_one(run):
    images = np.random.default_rng(1).integers(0, 256, (3, RES, RES, 3)).astype("uint8")
    served = keras.saving.load_model(run.dir / "segmenter.keras").predict(images, verbose=0)
    distilled = keras.saving.load_model(run.dir / "segmenter_distilled.keras").predict(images, verbose=0)
    np.testing.assert_array_equal(served, distilled)


def test_encoder_segmenter_decodes_with_the_frozen_gan_generator(run):
    segmenter = keras.saving.load_model(run.dir / "segmenter_encoder.keras")
    generator_ = keras.saving.load_model(run.dir / "generator.keras")
    for a, b in zip(weights(segmenter.network.generator), weights(generator_)):
        np.testing.assert_array_equal(a, b)


def test_segmenter_stage_resumes_from_its_checkpoint(run, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    shutil.copytree(run.dir, run_dir)
    restored = {}
    original_restore = run_module.Checkpoint.restore

    def recording_restore(self, model):
        restored[self.directory.name] = original_restore(self, model)
        restored["unet"], restored["encoder"] = weights(model.unet), weights(model.encoder)
        return restored[self.directory.name]

    monkeypatch.setattr(run_module.Checkpoint, "restore", recording_restore)
    cfg = tiny_config(steps=4)
    run_module.train(cfg, run_dir, stage="segmenter", verbose=0)
    assert restored["segmentation"] == 2 and "checkpoints" not in restored  # the GAN stage was not run again
    # The networks come back as the first run left them.
    first = keras.saving.load_model(run.dir / "segmenter_distilled.keras").network
    for now, then in zip(restored["unet"], weights(first)):
        np.testing.assert_array_equal(now, then)
    first = keras.saving.load_model(run.dir / "segmenter_encoder.keras").network.encoder
    for now, then in zip(restored["encoder"], weights(first)):
        np.testing.assert_array_equal(now, then)
    assert (run_dir / "checkpoints" / "segmentation" / "ckpt-4.index").is_file()
    assert load_config(run_dir / "config.yaml").segment.steps == 4


def test_an_ensemble_served_stage_saves_scores_and_serves_the_ensemble(run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(run.dir, run_dir)
    shutil.rmtree(run_dir / "checkpoints" / "segmentation")
    results = run_module.train(tiny_config(serve="ensemble", encoder_flip_average=True), run_dir,
                               stage="segmenter", verbose=0)
    assert set(results) == {"encoder", "distilled", "ensemble"}
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    assert evaluation["served"] == "ensemble" and evaluation["results"] == results
    images = np.random.default_rng(2).integers(0, 256, (3, RES, RES, 3)).astype("uint8")
    load = lambda name: keras.saving.load_model(run_dir / name)  # noqa: E731
    served, encoder, distilled = load("segmenter.keras"), load("segmenter_encoder.keras"), load("segmenter_distilled.keras")
    assert isinstance(served.network, MaskEnsemble) and encoder.flip_average is True
    np.testing.assert_array_equal(served.predict(images, verbose=0),
                                  load("segmenter_ensemble.keras").predict(images, verbose=0))
    expected = 0.7 * distilled.predict(images, verbose=0) + 0.3 * encoder.predict(images, verbose=0)
    np.testing.assert_allclose(served.predict(images, verbose=0), expected, atol=1e-5)  # no largest-region step
    for method, scores in results.items():
        assert scores["num_images"] == 16, method


def test_segmentation_stage_with_lr_decay_resumes_on_its_schedule(run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(run.dir, run_dir)
    shutil.rmtree(run_dir / "checkpoints" / "segmentation")
    run_module.train(tiny_config(steps=2, lr_decay=True), run_dir, stage="segmenter", verbose=0)
    run_module.train(tiny_config(steps=4, lr_decay=True), run_dir, stage="segmenter", verbose=0)
    latest = tf.train.latest_checkpoint(str(run_dir / "checkpoints" / "segmentation"))
    assert latest.endswith("ckpt-4")
    assert tf.train.load_variable(latest, "unet_optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE") == 4


@pytest.mark.parametrize("stage", ["segmenter", "encoder"])  # encoder: the stage's old name
def test_segmenter_stage_needs_a_trained_generator(tmp_path, stage):
    with pytest.raises(ConfigError, match="--stage gan"):
        run_module.train(tiny_config(), tmp_path / "empty", stage=stage, verbose=0)
    assert not (tmp_path / "empty").exists()


def test_an_unknown_stage_is_refused_naming_the_stages(tmp_path):
    with pytest.raises(ValueError, match="stage must be one of gan, segmenter, all, got 'unet'"):
        run_module.train(tiny_config(), tmp_path / "run", stage="unet", verbose=0)


# --- CLI: evaluate, export, segment -------------------------------------------------------------


from keras_layered import cli


def invoke(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def test_cli_evaluate_on_held_out_scenes_matches_the_run(run, tmp_path):
    out = tmp_path / "scores.json"
    result = invoke("evaluate", "--model", run.dir, "--out", out)
    assert result.exit_code == 0, result.output
    scores = json.loads(out.read_text())
    # The run's config.yaml gives the same held-out scenes the stage evaluated on.
    assert scores["mean_iou"] == pytest.approx(run.results["distilled"]["mean_iou"])
    assert scores["mean_inverted_iou"] == pytest.approx(run.results["distilled"]["mean_inverted_iou"])
    assert scores["num_images"] == 16
    assert "mean IoU" in result.output
    lines = result.output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("method"))  # after the progress lines
    header, row = lines[start:start + 2]
    assert header.split()[:4] == ["method", "mean", "IoU", "inverted"]
    assert float(row.split()[2]) == pytest.approx(scores["mean_inverted_iou"], abs=5e-4)


def test_cli_evaluate_rejects_a_bad_model_and_a_bad_data_spec(run, tmp_path):
    result = invoke("evaluate", "--model", tmp_path)
    assert result.exit_code != 0 and "no segmenter" in result.output and "Traceback" not in result.output
    result = invoke("evaluate", "--model", run.dir, "--data", "nonsense")
    assert result.exit_code != 0 and "--data" in result.output and "Traceback" not in result.output


def test_cli_export_writes_savedmodels_and_prints_signatures(run, tmp_path):
    out = tmp_path / "exported"
    result = invoke("export", "--run", run.dir, "--out", out)
    assert result.exit_code == 0, result.output
    for name in ("segmenter/saved_model.pb", "generator/saved_model.pb", "segmenter.keras", "generator.keras"):
        assert (out / name).is_file(), name
    assert "serving_default" in result.output and f"images: float32 (None, {RES}, {RES}, 3)" in result.output
    images = np.random.default_rng(2).integers(0, 256, (2, RES, RES, 3)).astype("uint8")
    served = tf.saved_model.load(str(out / "segmenter")).signatures["serving_uint8"](images=tf.constant(images))
    expected = keras.saving.load_model(run.dir / "segmenter.keras").predict(images, verbose=0)
    np.testing.assert_allclose(served["mask"].numpy(), expected, atol=1e-5)


def test_cli_segment_writes_one_mask_per_image(run, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (13, 21), (200, 10, 10)).save(images / "a.png")
    Image.new("L", (30, 9), 128).save(images / "b.jpg")
    (images / "broken.png").write_bytes(b"not an image")
    result = invoke("segment", "--model", run.dir, images, "--out", tmp_path / "masks")
    assert result.exit_code == 0, result.output
    assert "wrote 2 masks" in result.output and "skipped 1" in result.output
    assert Image.open(tmp_path / "masks" / "a.png").size == (13, 21)
    assert Image.open(tmp_path / "masks" / "b.png").size == (30, 9)


def test_cli_train_help_names_the_stages():
    result = invoke("train", "--help")
    assert result.exit_code == 0
    for text in ("--stage [gan|segmenter|all]", "segmenter: the segmentation stage", "encoder is its old name",
                 "segmenter.keras", "evaluation.json"):
        assert text in " ".join(result.output.split()), text


def test_a_bad_command_does_not_rewrite_the_runs_config(run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(run.dir, run_dir)
    before = (run_dir / "config.yaml").read_text()
    with pytest.raises(ConfigError, match="data.resolution cannot change .*the run has 8, "):
        run_module.train(config_from_dict({**TINY, "data": {"resolution": 16}}), run_dir, stage="segmenter", verbose=0)
    with pytest.raises(ConfigError, match="segment.steps_per_epoch"):
        run_module.train(tiny_config(steps=3), run_dir, stage="all", verbose=0)
    assert (run_dir / "config.yaml").read_text() == before


def test_cli_train_continues_a_run_with_its_own_config(run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(run.dir, run_dir)
    result = invoke("train", "--out", run_dir, "--dry-run", "--set", "segment.steps=4")
    assert result.exit_code == 0, result.output
    printed = yaml.safe_load(result.output)
    assert printed["data"]["resolution"] == RES and printed["segment"]["steps"] == 4  # not synthetic.yaml's 32


def test_evaluation_scores_every_held_out_scene(tmp_path):
    from keras_layered.training.build import build_eval_dataset

    cfg = config_from_dict({**TINY, "data": {"resolution": RES, "eval_scenes": 10}})
    assert [len(b["image"]) for b in build_eval_dataset(cfg, batch_size=4)] == [4, 4, 2]
