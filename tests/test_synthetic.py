import numpy as np
import pytest
import tensorflow as tf

from keras_layered.config import DataConfig
from keras_layered.data.synthetic import make_scenes, synthetic_scenes


def scenes(n, resolution, start=0, edges=0, **kwargs):
    """Images and masks of scenes start..start + n, without edges (the smooth fields measured here) unless asked."""
    out = make_scenes(tf.range(start, start + n, dtype=tf.int64), resolution, edges=edges, **kwargs)
    return out["image"].numpy(), out["mask"].numpy()


def background_pairs(image, mask, shift):
    """Differences image[x + shift] - image[x] along both axes, and where both pixels are background."""
    pairs = []
    for axis in (1, 2):
        n = image.shape[axis]
        later, earlier = range(shift, n), range(0, n - shift)
        diff = np.take(image, later, axis) - np.take(image, earlier, axis)
        valid = (1 - np.take(mask, later, axis)) * (1 - np.take(mask, earlier, axis))
        pairs.append((diff, valid))
    return pairs


def seam_structure(image, mask, shift):
    """Per-scene mean |d - mean(d)| of background differences d at `shift`.

    A linear gradient shifted is itself plus a constant, which is exactly what
    lets a whole-image foreground hide its seam; subtracting the mean
    difference scores any gradient 0, leaving only structure at the shift scale.
    """
    total = 0.0
    for diff, valid in background_pairs(image, mask, shift):
        mean = (diff * valid).sum((1, 2), keepdims=True) / valid.sum((1, 2), keepdims=True)
        total = total + (np.abs(diff - mean) * valid).sum((1, 2, 3)) / (3 * valid.sum((1, 2, 3)))
    return total / 2


def busyness(image, mask, step):
    """Mean |second difference| of the background at `step` pixels: fine-scale detail."""
    total = 0.0
    for axis in (1, 2):
        n = image.shape[axis]
        left, mid, right = range(0, n - 2 * step), range(step, n - step), range(2 * step, n)
        second = np.take(image, left, axis) + np.take(image, right, axis) - 2 * np.take(image, mid, axis)
        valid = np.prod([1 - np.take(mask, r, axis) for r in (left, mid, right)], axis=0)
        total = total + (np.abs(second) * valid).sum() / (3 * valid.sum())
    return total / 2


@pytest.mark.parametrize("resolution", [8, 16, 32])
def test_shapes_dtypes_and_ranges(resolution):
    out = make_scenes(tf.constant([0, 7, 123456789], tf.int64), resolution)
    image, mask = out["image"], out["mask"]
    assert image.shape == (3, resolution, resolution, 3) and image.dtype == tf.float32
    assert mask.shape == (3, resolution, resolution, 1) and mask.dtype == tf.float32
    assert np.all(np.abs(image.numpy()) <= 1.0)
    assert set(np.unique(mask.numpy())) == {0.0, 1.0}
    assert image.numpy().std() > 0.1


def test_scenes_are_pure_functions_of_seed_and_index():
    indices = tf.constant([3, 5, 9], tf.int64)
    first = make_scenes(indices, 16, seed=1)
    again = make_scenes(indices, 16, seed=1)
    alone = make_scenes(tf.constant([5], tf.int64), 16, seed=1)
    other = make_scenes(indices, 16, seed=2)
    np.testing.assert_array_equal(first["image"], again["image"])
    np.testing.assert_array_equal(first["image"][1:2], alone["image"])
    np.testing.assert_array_equal(first["mask"][1:2], alone["mask"])
    assert np.abs(first["image"].numpy() - other["image"].numpy()).mean() > 0.1
    assert np.abs(first["image"][0].numpy() - first["image"][1].numpy()).mean() > 0.1


@pytest.mark.parametrize("difficulty", [0.0, 0.3, 1.0])
def test_one_object_of_moderate_size_per_scene(difficulty):
    _, mask = scenes(256, 32, difficulty=difficulty)
    coverage = mask.mean((1, 2, 3))
    assert 0.05 <= coverage.mean() <= 0.35
    assert coverage.min() > 0.02 and coverage.max() < 0.5


def test_object_contrasts_with_its_surroundings_less_at_high_difficulty():
    contrast = {}
    for difficulty in (0.0, 1.0):
        image, mask = scenes(128, 32, difficulty=difficulty)
        ring = tf.nn.max_pool2d(mask, 5, 1, "SAME").numpy() - mask  # background just outside the object
        inside = (image * mask).sum((1, 2)) / mask.sum((1, 2))
        outside = (image * ring).sum((1, 2)) / ring.sum((1, 2))
        contrast[difficulty] = np.linalg.norm(inside - outside, axis=-1)
    assert np.percentile(contrast[0.0], 5) > 0.4
    assert contrast[1.0].mean() < 0.7 * contrast[0.0].mean()


def test_background_has_structure_at_the_shift_scale():
    resolution = 32
    shift = resolution // 8
    image, mask = scenes(128, resolution)
    ramp = np.linspace(-1.0, 1.0, resolution, dtype=np.float32)
    gradient = np.broadcast_to(ramp[None, None, :, None] * [1.0, 0.5, -1.0], image.shape)
    baseline = seam_structure(gradient, mask, shift)
    structure = seam_structure(image, mask, shift)
    assert baseline.max() < 1e-3
    assert structure.min() > 0.04 and structure.mean() > 0.08


def test_higher_difficulty_gives_busier_backgrounds():
    busy = [busyness(*scenes(64, 32, difficulty=d), step=2) for d in (0.0, 0.5, 1.0)]
    assert busy[0] < busy[1] < busy[2]
    assert busy[2] > 1.5 * busy[0]


def test_dataset_elements_and_length():
    images = synthetic_scenes(16, 4, num_scenes=10)
    assert images.element_spec == tf.TensorSpec((None, 16, 16, 3), tf.float32)
    assert [len(batch) for batch in images] == [4, 4, 2]  # every held-out scene is scored
    assert synthetic_scenes(8, 2).cardinality() == tf.data.INFINITE_CARDINALITY

    pairs = synthetic_scenes(8, 3, seed=5, with_masks=True)
    assert pairs.element_spec["mask"] == tf.TensorSpec((3, 8, 8, 1), tf.float32)
    second = list(pairs.skip(1).take(1))[0]
    singles = list(synthetic_scenes(8, 1, seed=5, with_masks=True).skip(3).take(3))
    np.testing.assert_array_equal(second["image"], np.concatenate([s["image"] for s in singles]))
    # Graph-mode kernels may round differently from eager ones in the last bit.
    direct = make_scenes(tf.range(3, 6, dtype=tf.int64), 8, seed=5)
    np.testing.assert_allclose(second["image"], direct["image"], atol=1e-5)
    np.testing.assert_array_equal(second["mask"], direct["mask"])


@pytest.mark.parametrize("kwargs, name", [
    (dict(resolution=24), "resolution"),
    (dict(resolution=4), "resolution"),
    (dict(resolution=512), "resolution"),
    (dict(resolution=32.0), "resolution"),
    (dict(difficulty=1.5), "difficulty"),
    (dict(difficulty=-0.1), "difficulty"),
    (dict(batch_size=0), "batch_size"),
    (dict(batch_size=8, num_scenes=4), "num_scenes"),
])
def test_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        synthetic_scenes(**{"resolution": 16, "batch_size": 4, **kwargs})


def test_make_scenes_validates_too():
    with pytest.raises(ValueError, match="resolution"):
        make_scenes(tf.constant([0], tf.int64), 10)


def background_jumps(image, mask, size=0.2):
    """Per scene, how many neighbouring background pixels differ by more than `size` in a channel
    (pixels next to the object excluded: its anti-aliased rim is not background)."""
    grown = mask.copy()
    for axis in (1, 2):
        grown = np.maximum(grown, np.maximum(np.roll(mask, 1, axis), np.roll(mask, -1, axis)))
    return sum(((np.abs(diff) > size) * valid).any(axis=3).sum(axis=(1, 2))
               for diff, valid in background_pairs(image, grown, 1))


def test_edges_add_sharp_steps_to_the_background_only():
    smooth_image, smooth_mask = scenes(64, 32)
    edged_image, edged_mask = scenes(64, 32, edges=2)
    np.testing.assert_array_equal(smooth_mask, edged_mask)  # same objects, same places
    assert background_jumps(smooth_image, smooth_mask).max() <= 2  # smooth fields: (almost) no jumps
    jumps = background_jumps(edged_image, edged_mask)
    assert (jumps >= 10).mean() > 0.9  # edges cross most scenes over many pixels
    # Without `edges`, the scenes are the config's (data.edges).
    default = make_scenes(tf.range(4, dtype=tf.int64), 16)["image"].numpy()
    np.testing.assert_array_equal(scenes(4, 16, edges=DataConfig.edges)[0], default)


@pytest.mark.parametrize("edges", [-1, 5, 1.0, True])
def test_bad_edge_counts_are_rejected(edges):
    with pytest.raises(ValueError, match="edges"):
        synthetic_scenes(16, 4, edges=edges)
