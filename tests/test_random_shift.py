"""Tests of `shift` and the `RandomShift` layer (the foreground perturbation)."""

import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_layered.layers import RandomShift, shift


def np_shift(x, offsets):
    """Reference: np.roll each image by (dy, dx), then zero what wrapped around."""
    x = np.asarray(x)
    out = np.zeros_like(x)
    height, width = x.shape[1], x.shape[2]
    for b, (dy, dx) in enumerate(np.asarray(offsets)):
        if abs(dy) >= height or abs(dx) >= width:
            continue  # everything left the image
        rolled = np.roll(x[b], (dy, dx), axis=(0, 1))
        if dy > 0:
            rolled[:dy] = 0
        elif dy < 0:
            rolled[dy:] = 0
        if dx > 0:
            rolled[:, :dx] = 0
        elif dx < 0:
            rolled[:, dx:] = 0
        out[b] = rolled
    return out


def arange_images(batch, height, width, channels=1, dtype=np.float32):
    # +1 so that no source pixel is 0 and zero fill is distinguishable from content.
    return (np.arange(batch * height * width * channels) + 1).reshape(
        batch, height, width, channels
    ).astype(dtype)


def bright_pixel(batch, height, width, y, x):
    img = np.zeros((batch, height, width, 1), np.float32)
    img[:, y, x, 0] = 1.0
    return img


def recover_offsets(shifted, y, x):
    """Offsets (dy, dx) of each sample from where its single bright pixel went."""
    offsets = []
    for img in np.asarray(shifted)[..., 0]:
        ys, xs = np.nonzero(img > 0.5)
        assert len(ys) == 1, "the bright pixel must stay inside the image exactly once"
        offsets.append((ys[0] - y, xs[0] - x))
    return np.array(offsets)


# ---------------------------------------------------------------------------------------------
# shift


def test_reference_itself_on_a_hand_computed_case():
    # Guard the reference: x[i, j] = 1..12 on a 3x4 grid, offset (1, -1) -> out[i, j] = x[i-1, j+1].
    x = arange_images(1, 3, 4)
    expected = np.array([[0, 0, 0, 0], [2, 3, 4, 0], [6, 7, 8, 0]], np.float32)
    np.testing.assert_array_equal(np_shift(x, [(1, -1)])[0, ..., 0], expected)


def test_shift_exact_pixels_hand_computed():
    x = arange_images(3, 3, 4)  # sample b holds 12*b + 1 .. 12*b + 12
    offsets = np.array([(1, -1), (0, 0), (-2, 3)], np.int32)
    out = shift(tf.constant(x), tf.constant(offsets)).numpy()[..., 0]
    np.testing.assert_array_equal(
        out[0], [[0, 0, 0, 0], [2, 3, 4, 0], [6, 7, 8, 0]]
    )  # down 1, left 1
    np.testing.assert_array_equal(out[1], x[1, ..., 0])  # zero offset: unchanged
    # up 2, right 3: only out[0, 3] = x[2, 0] survives; in sample 2 that is 24 + 2 * 4 + 1 = 33.
    np.testing.assert_array_equal(out[2], [[0, 0, 0, 33], [0, 0, 0, 0], [0, 0, 0, 0]])


@pytest.mark.parametrize(
    "offsets",
    [
        [(2, 1), (-1, -3), (0, 0), (1, -2), (-3, 2), (0, 4), (3, 0)],
        # beyond the border: |offset| >= size empties the image, on either axis and sign
        [(5, 0), (-5, 0), (0, 6), (0, -6), (9, 9), (-7, 11), (4, 5)],
    ],
)
def test_shift_matches_numpy_reference(offsets):
    x = arange_images(len(offsets), 5, 6, channels=2)
    out = shift(tf.constant(x), tf.constant(offsets, tf.int32)).numpy()
    np.testing.assert_array_equal(out, np_shift(x, offsets))


def test_shift_beyond_border_is_all_zeros():
    x = arange_images(4, 4, 5)
    out = shift(tf.constant(x), tf.constant([(4, 0), (0, -5), (-4, 1), (0, 5)])).numpy()
    assert not out.any()
    # One less than the size keeps exactly one row / column.
    out = shift(tf.constant(x), tf.constant([(3, 0), (0, -4), (-3, 0), (0, 4)])).numpy()
    assert np.count_nonzero(out[0]) == 5 and np.count_nonzero(out[1]) == 4


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_shift_preserves_dtype(dtype):
    x = arange_images(2, 3, 3).astype(dtype)
    out = shift(tf.constant(x), tf.constant([(1, 1), (-1, 0)]))
    assert out.dtype == tf.as_dtype(dtype)
    np.testing.assert_array_equal(out.numpy(), np_shift(x, [(1, 1), (-1, 0)]))


def test_shift_accepts_int64_offsets_and_float_offsets():
    x = arange_images(2, 3, 3)
    expected = np_shift(x, [(1, 0), (0, -1)])
    np.testing.assert_array_equal(shift(x, tf.constant([(1, 0), (0, -1)], tf.int64)).numpy(), expected)
    np.testing.assert_array_equal(shift(x, np.array([(1.0, 0.0), (0.0, -1.0)], np.float32)).numpy(), expected)


def test_fractional_shift_interpolates_linearly_by_hand():
    # A row [1, 2, 3] moved right by 0.5: out[i] = 0.5 * x[i - 1] + 0.5 * x[i], with x[-1] = 0.
    x = tf.constant([[[[1.0], [2.0], [3.0]]]])
    out = shift(x, tf.constant([(0.0, 0.5)]))
    np.testing.assert_allclose(out.numpy()[0, 0, :, 0], [0.5, 1.5, 2.5])
    # Moved up by 0.25 on a column [1, 2, 3]: out[i] = 0.75 * x[i] + 0.25 * x[i + 1], x[3] = 0.
    column = tf.reshape(x, (1, 3, 1, 1))
    np.testing.assert_allclose(shift(column, tf.constant([(-0.25, 0.0)])).numpy()[0, :, 0, 0], [1.25, 2.25, 2.25])


def test_shift_gradient_with_respect_to_a_fractional_offset_by_hand():
    # out[i] = (1 - f) x[i] + f x[i - 1] for dx = f in (0, 1): d sum(out) / df = sum(x[i - 1] - x[i]) = -3.
    x = tf.constant([[[[1.0], [2.0], [3.0]]]])
    offsets = tf.Variable([[0.0, 0.5]])
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(shift(x, offsets))
    np.testing.assert_allclose(tape.gradient(total, offsets).numpy(), [[0.0, -3.0]])


def test_shift_under_xla():
    x = arange_images(3, 4, 5, channels=3)
    offsets = np.array([(1, 2), (-2, -1), (0, 3)], np.int32)
    fn = tf.function(shift, jit_compile=True)
    out = fn(tf.constant(x), tf.constant(offsets)).numpy()
    np.testing.assert_array_equal(out, np_shift(x, offsets))
    # Different offsets through the same compiled function.
    out = fn(tf.constant(x), tf.constant(offsets[::-1].copy())).numpy()
    np.testing.assert_array_equal(out, np_shift(x, offsets[::-1]))


def test_shift_gradient_hand_computed():
    # y = shift(x, (0, 1)) on a 1x1x3 row: y = [0, x0, x1], so dL/dx = [g1, g2, 0].
    x = tf.constant([[[[1.0], [2.0], [3.0]]]])
    upstream = tf.constant([[[[10.0], [20.0], [30.0]]]])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = shift(x, tf.constant([(0, 1)]))
    grad = tape.gradient(y, x, output_gradients=upstream)
    np.testing.assert_array_equal(grad.numpy()[0, 0, :, 0], [20.0, 30.0, 0.0])


def test_shift_gradient_is_opposite_shift_of_upstream():
    x = tf.constant(arange_images(3, 4, 5, channels=2))
    offsets = np.array([(1, -2), (-3, 1), (0, 0)], np.int32)
    upstream = np.random.default_rng(0).normal(size=x.shape).astype(np.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = shift(x, tf.constant(offsets))
    grad = tape.gradient(y, x, output_gradients=tf.constant(upstream)).numpy()
    np.testing.assert_array_equal(grad, np_shift(upstream, -offsets))


# ---------------------------------------------------------------------------------------------
# RandomShift: the offset distribution


def test_offsets_stay_within_bounds_and_cover_both_signs():
    layer = RandomShift(max_shift=0.125, seed=0)
    offsets = layer.sample_offsets(4000, 32, 32).numpy()
    assert offsets.dtype == np.int32 and offsets.shape == (4000, 2)
    limit = round(0.125 * 32)  # 4
    assert np.abs(offsets).max() == limit  # reached, never exceeded
    for axis in range(2):
        values = set(offsets[:, axis].tolist())
        assert values == set(range(-limit, limit + 1)), values


def test_offsets_differ_between_samples_and_between_calls():
    layer = RandomShift(max_shift=0.25, seed=1)
    first = layer.sample_offsets(16, 16, 16).numpy()
    assert len({tuple(o) for o in first}) > 4
    second = layer.sample_offsets(16, 16, 16).numpy()
    assert not np.array_equal(first, second)


def test_non_square_images_use_each_axis_size():
    layer = RandomShift(max_shift=0.25, seed=2)
    offsets = layer.sample_offsets(4000, 8, 32).numpy()  # limits: dy 2, dx 8
    assert np.abs(offsets[:, 0]).max() == 2
    assert np.abs(offsets[:, 1]).max() == 8
    assert offsets[:, 0].min() == -2 and offsets[:, 1].min() == -8
    offsets = layer.sample_offsets(4000, 32, 8).numpy()  # and the other way round
    assert np.abs(offsets[:, 0]).max() == 8
    assert np.abs(offsets[:, 1]).max() == 2


def test_non_square_layer_call_stays_within_each_axis_limit():
    layer = RandomShift(max_shift=0.3, seed=3)
    height, width = 10, 20  # limits round(3.0) = 3 and round(6.0) = 6
    img = bright_pixel(256, height, width, 5, 10)
    offsets = recover_offsets(layer(img, training=True), 5, 10)
    assert np.abs(offsets[:, 0]).max() == 3
    assert np.abs(offsets[:, 1]).max() == 6


# ---------------------------------------------------------------------------------------------
# RandomShift: the layer


def test_foreground_and_mask_move_together():
    layer = RandomShift(max_shift=0.4, seed=4)  # up to round(6.4) = 6 pixels on 16 x 16
    batch, size = 64, 16
    rng = np.random.default_rng(0)
    foreground = np.concatenate(
        [bright_pixel(batch, size, size, 8, 8), rng.uniform(size=(batch, size, size, 2))], axis=-1
    ).astype(np.float32)
    mask = rng.uniform(size=(batch, size, size, 1)).astype(np.float32)
    fg_out, mask_out = layer([foreground, mask], training=True)
    fg_out, mask_out = fg_out.numpy(), mask_out.numpy()
    offsets = recover_offsets(fg_out[..., :1], 8, 8)
    assert len({tuple(o) for o in offsets}) > 10  # really different offsets per sample
    np.testing.assert_array_equal(fg_out, np_shift(foreground, offsets))
    np.testing.assert_array_equal(mask_out, np_shift(mask, offsets))


def test_single_tensor_in_single_tensor_out():
    layer = RandomShift(max_shift=0.25, seed=5)
    img = bright_pixel(8, 8, 8, 4, 4)
    out = layer(img, training=True)
    assert not isinstance(out, (list, tuple))
    np.testing.assert_array_equal(out.numpy(), np_shift(img, recover_offsets(out, 4, 4)))


def test_identity_at_inference():
    layer = RandomShift(max_shift=0.25, seed=6)
    img = arange_images(4, 8, 8)
    np.testing.assert_array_equal(np.asarray(layer(img, training=False)), img)
    np.testing.assert_array_equal(np.asarray(layer(img)), img)
    fg, mask = layer([img, img[..., :1]], training=False)
    np.testing.assert_array_equal(np.asarray(fg), img)
    np.testing.assert_array_equal(np.asarray(mask), img[..., :1])


def test_identity_when_max_shift_is_zero():
    layer = RandomShift(max_shift=0.0, seed=7)
    img = arange_images(4, 8, 8)
    np.testing.assert_array_equal(np.asarray(layer(img, training=True)), img)
    np.testing.assert_array_equal(np.asarray(layer(img, training=False)), img)


def test_layer_in_tf_function_with_unknown_batch():
    layer = RandomShift(max_shift=0.25, seed=9)

    @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 1], tf.float32)])
    def run(x):
        return layer(x, training=True)

    img = bright_pixel(16, 8, 8, 4, 4)
    out = run(tf.constant(img)).numpy()
    offsets = recover_offsets(out, 4, 4)
    assert np.abs(offsets).max() <= 2 and np.any(offsets != 0)
    # The generator state advances inside the traced function too.
    assert not np.array_equal(run(tf.constant(img)).numpy(), out)


def test_same_seed_same_offsets_different_seed_different():
    a = RandomShift(max_shift=0.25, seed=123).sample_offsets(32, 16, 16).numpy()
    b = RandomShift(max_shift=0.25, seed=123).sample_offsets(32, 16, 16).numpy()
    c = RandomShift(max_shift=0.25, seed=124).sample_offsets(32, 16, 16).numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("bad", [0.5, -0.1, 0.75])
def test_invalid_max_shift_raises(bad):
    with pytest.raises(ValueError, match="max_shift") as info:
        RandomShift(max_shift=bad)
    assert str(bad) in str(info.value)


def test_config_round_trip():
    layer = RandomShift(max_shift=0.2, seed=42, name="shifty", dtype="float64")
    config = layer.get_config()
    assert config["max_shift"] == 0.2
    assert config["seed"] == 42
    clone = RandomShift.from_config(config)
    assert (clone.max_shift, clone.seed, clone.name) == (0.2, 42, "shifty")
    assert clone.dtype_policy.name == "float64"
    assert clone.get_config() == config
    # Same seed through the round trip, so the same offsets.
    np.testing.assert_array_equal(
        clone.sample_offsets(16, 20, 20).numpy(),
        RandomShift(max_shift=0.2, seed=42).sample_offsets(16, 20, 20).numpy(),
    )
    # And through Keras' own (registered) serialisation.
    revived = keras.layers.deserialize(json.loads(json.dumps(keras.layers.serialize(layer))))
    assert isinstance(revived, RandomShift)
    assert (revived.max_shift, revived.seed) == (0.2, 42)


def test_defaults_in_config():
    config = RandomShift().get_config()
    assert (config["max_shift"], config["seed"]) == (0.125, None)


MIRRORED_CODE = textwrap.dedent(
    """
    import json, os
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    os.environ["KERAS_BACKEND"] = "tensorflow"
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from keras_layered.layers import RandomShift

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        layer = RandomShift(max_shift=0.4, seed=3)
    size, batch = 16, 16
    fg = np.zeros((batch, size, size, 1), np.float32)
    fg[:, 8, 8, 0] = 1.0
    mask = np.zeros((batch, size, size, 1), np.float32)
    mask[:, 7, 9, 0] = 1.0

    @tf.function
    def step():
        return strategy.run(lambda: layer([tf.constant(fg), tf.constant(mask)], training=True))

    result = []
    for _ in range(2):
        fg_out, mask_out = step()
        fgs = strategy.experimental_local_results(fg_out)
        masks = strategy.experimental_local_results(mask_out)
        replicas = []
        for f, m in zip(fgs, masks):
            f = f.numpy()[..., 0]
            m = m.numpy()[..., 0]
            fpos = [np.argwhere(img > 0.5).tolist() for img in f]
            mpos = [np.argwhere(img > 0.5).tolist() for img in m]
            replicas.append({"fg": fpos, "mask": mpos})
        result.append(replicas)
    # One device drawing the global batch (2 x 16) from the same seed, step by step.
    reference = RandomShift(max_shift=0.4, seed=3)
    global_offsets = [reference.sample_offsets(2 * batch, size, size).numpy().tolist() for _ in range(2)]
    print("RESULT" + json.dumps({"replicas": strategy.num_replicas_in_sync, "steps": result,
                                 "global": global_offsets}))
    """
)


def test_mirrored_strategy_gives_each_replica_its_own_offsets():
    proc = subprocess.run(
        [sys.executable, "-c", MIRRORED_CODE], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT")][-1]
    result = json.loads(line[len("RESULT"):])
    assert result["replicas"] == 2
    for replicas, global_offsets in zip(result["steps"], result["global"]):
        offsets = []
        for replica in replicas:
            fg_off, mask_off = [], []
            for fpos, mpos in zip(replica["fg"], replica["mask"]):
                assert len(fpos) == 1 and len(mpos) == 1  # one pixel, never pushed out
                fg_off.append((fpos[0][0] - 8, fpos[0][1] - 8))
                mask_off.append((mpos[0][0] - 7, mpos[0][1] - 9))
            assert fg_off == mask_off  # fg and mask together on each replica
            assert max(abs(v) for o in fg_off for v in o) <= 6
            offsets.append(fg_off)
        assert len(set(offsets[0])) > 4  # different offsets within a replica's batch
        # Identical input on both replicas must still get independent offsets ...
        assert offsets[0] != offsets[1], "both replicas drew the same offsets"
        # ... which are replica r's rows of what one device draws for the global batch.
        assert offsets[0] + offsets[1] == [tuple(o) for o in global_offsets]
