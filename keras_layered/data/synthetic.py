"""Synthetic single-object scenes, the default training data and benchmark.

Each scene is one shaded object (ellipse; at higher difficulty also
superellipses and polygons) composited on a smooth multi-colour background,
with its exact binary mask as ground truth for evaluation.

Why the backgrounds have multi-scale structure: the layered GAN shifts its
foreground and mask by about 1/8 of the image before compositing. A generator
that cheats by putting the whole image in the foreground (mask = all ones) is
only caught if the shift leaves a visible seam, i.e. if the background has
structure at the scale of the shift everywhere. On flat or linearly graded
backgrounds a shifted copy of the whole image looks like the original plus a
constant, the cheat goes unpunished and the mask collapses to all ones. So the
background is a sum of random colour fields on 2x2, 4x4 and 8x8 grids, smoothly
upsampled: no flat regions, but nothing as fine as stripes either, which would
make the task too hard to learn quickly.

Every scene is a pure function of (seed, index, resolution, difficulty), so
the same index gives the same scene in any batch; use a different seed for
held-out evaluation scenes.
"""

import math

import tensorflow as tf

from keras_layered.config import RESOLUTION_RULE, DataConfig, is_resolution

__all__ = ["make_scenes", "synthetic_scenes"]

# Number of uniform draws each scene consumes, by purpose. Appending entries
# keeps existing scenes unchanged; reordering or resizing changes all of them.
_DRAWS = {
    "tint": 2 * 2 * 3,
    "coarse": 4 * 4 * 3,
    "fine": 8 * 8 * 3,
    "saturation": 1,
    "kind": 1,
    "exponent": 1,
    "sides": 1,
    "area": 1,
    "aspect": 1,
    "angle": 1,
    "centre": 2,
    "hue": 3,
    "contrast": 1,
    "light": 1,
    "edges": 6 * 4,  # per edge: angle, centre (2), colour step (3); at most _MAX_EDGES edges
}
_MAX_EDGES = 4

_GOLDEN = 0x9E3779B97F4A7C15


def synthetic_scenes(resolution: int, batch_size: int, *, seed: int = DataConfig.seed,
                     difficulty: float = DataConfig.difficulty, edges: int = DataConfig.edges,
                     num_scenes: int | None = None, with_masks: bool = False, start: int = 0) -> tf.data.Dataset:
    """Batches of synthetic scenes, infinite unless `num_scenes` is given.

    Yields images (B, H, W, 3) in [-1, 1], or dicts {"image", "mask"} when
    `with_masks` is True. Scenes are indexed start, start + 1, ...; with
    `num_scenes`, every scene below it is yielded (the last batch may be
    smaller). A run resumed after k steps of batch B passes start = k * B and
    sees the same batches as a run that never stopped.
    """
    _check_scene_args(resolution, difficulty, edges)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}.")
    if num_scenes is not None and (
            isinstance(num_scenes, bool) or not isinstance(num_scenes, int) or num_scenes < batch_size):
        raise ValueError(
            f"num_scenes must be an integer >= batch_size ({batch_size}) or None for an infinite "
            f"dataset, got {num_scenes!r}; lower batch_size or raise num_scenes.")
    if isinstance(start, bool) or not isinstance(start, int) or start < 0 or (
            num_scenes is not None and start >= num_scenes):
        raise ValueError(f"start must be an integer scene index >= 0 (and below num_scenes), got {start!r}.")

    def render(indices):
        scenes = make_scenes(indices, resolution, seed=seed, difficulty=difficulty, edges=edges)
        return scenes if with_masks else scenes["image"]

    indices = tf.data.Dataset.counter(start) if num_scenes is None else tf.data.Dataset.range(start, num_scenes)
    # An infinite stream has static batch shapes; a finite set keeps its last partial batch.
    return (indices.batch(batch_size, drop_remainder=num_scenes is None)
            .map(render, num_parallel_calls=tf.data.AUTOTUNE)
            .prefetch(tf.data.AUTOTUNE))


def make_scenes(indices, resolution: int, *, seed: int = DataConfig.seed, difficulty: float = DataConfig.difficulty,
                edges: int = DataConfig.edges) -> dict:
    """Renders the scenes with the given int64 indices (B,).

    Returns {"image": float32 (B, H, W, 3) in [-1, 1], "mask": float32
    (B, H, W, 1) of exact 0/1}. `difficulty` in [0, 1] raises background
    detail, shape variety and size range, and lowers object contrast. `edges` (0 to 4) sharp
    straight colour steps cross the background.
    """
    _check_scene_args(resolution, difficulty, edges)
    draws = tf.split(_uniform(seed, indices, sum(_DRAWS.values())), list(_DRAWS.values()), axis=1)
    u = dict(zip(_DRAWS, draws))
    background = _background(u, resolution, difficulty) + _edges(u, resolution, edges)
    alpha, mask, shading = _object(u, resolution, difficulty)
    colour = _object_colour(u, background, alpha, difficulty)  # (B, 1, 1, 3)
    # Shade in [0, 1] space so the light and rim act as illumination factors.
    foreground = (colour + 1.0) * shading - 1.0
    image = background + alpha * (foreground - background)
    return {"image": tf.clip_by_value(image, -1.0, 1.0), "mask": mask}


def _check_scene_args(resolution, difficulty, edges):
    if not is_resolution(resolution):
        raise ValueError(f"resolution must be {RESOLUTION_RULE} (8, 16, 32, 64, 128 or 256), got {resolution!r}.")
    if isinstance(difficulty, bool) or not isinstance(difficulty, (int, float)) or not 0.0 <= difficulty <= 1.0:
        raise ValueError(f"difficulty must be a number in [0, 1] (0 = easiest), got {difficulty!r}.")
    if isinstance(edges, bool) or not isinstance(edges, int) or not 0 <= edges <= _MAX_EDGES:
        raise ValueError(f"edges must be an integer in [0, {_MAX_EDGES}] (sharp edges across the background), "
                         f"got {edges!r}.")


def _mix(z):
    """SplitMix64 finaliser: a bijective, well-avalanched uint64 hash."""
    z = tf.bitwise.bitwise_xor(z, tf.bitwise.right_shift(z, tf.constant(30, tf.uint64)))
    z = z * tf.constant(0xBF58476D1CE4E5B9, tf.uint64)
    z = tf.bitwise.bitwise_xor(z, tf.bitwise.right_shift(z, tf.constant(27, tf.uint64)))
    z = z * tf.constant(0x94D049BB133111EB, tf.uint64)
    return tf.bitwise.bitwise_xor(z, tf.bitwise.right_shift(z, tf.constant(31, tf.uint64)))


def _uniform(seed, indices, n):
    """(B, n) uniforms in [0, 1), a pure function of (seed, scene index, draw number).

    tf.random.stateless_* ops take one seed per call, so they cannot give each
    row of a batch its own seed without a per-scene loop; a counter-based hash
    is the vectorised equivalent.
    """
    golden = tf.constant(_GOLDEN, tf.uint64)
    seed_key = _mix(tf.constant(seed % 2**64, tf.uint64) + golden)
    scene_key = _mix(tf.bitwise.bitwise_xor(seed_key, tf.cast(tf.cast(indices, tf.int64), tf.uint64)))
    draw = golden * tf.cast(tf.range(1, n + 1, dtype=tf.int64), tf.uint64)
    bits = _mix(scene_key[:, None] + draw)  # (B, n)
    # The top 24 bits map exactly onto float32 values strictly below 1.
    return tf.cast(tf.bitwise.right_shift(bits, tf.constant(40, tf.uint64)), tf.float32) * 2.0**-24


def _background(u, resolution, difficulty):
    """Smooth random colour fields at three scales, muted. (B, H, W, 3)"""

    def field(values, grid, amplitude, method):
        nodes = tf.reshape(values * 2.0 - 1.0, (-1, grid, grid, 3)) * amplitude
        return tf.image.resize(nodes, (resolution, resolution), method=method)

    rgb = (field(u["tint"], 2, 0.35, "bilinear")
           + field(u["coarse"], 4, 0.5, "bicubic")
           + field(u["fine"], 8, 0.06 + 0.3 * difficulty, "bicubic"))
    grey = tf.reduce_mean(rgb, axis=-1, keepdims=True)
    saturation = 0.35 + 0.4 * u["saturation"][:, None, None]  # (B, 1, 1, 1)
    return grey + saturation * (rgb - grey)


def _edges(u, resolution, edges):
    """Sum of `edges` straight colour steps, each through a point of the central 60 % of the image
    at a random angle, anti-aliased over one pixel. (B, H, W, 3), 0 when edges == 0."""
    ys, xs = tf.meshgrid(tf.linspace(0.0, 1.0, resolution), tf.linspace(0.0, 1.0, resolution), indexing="ij")
    total = tf.zeros((tf.shape(u["edges"])[0], resolution, resolution, 3))
    for k in range(edges):
        q = u["edges"][:, 6 * k: 6 * k + 6, None, None]  # (B, 6, 1, 1)
        angle = 2.0 * math.pi * q[:, 0]
        centre_x, centre_y = 0.2 + 0.6 * q[:, 1], 0.2 + 0.6 * q[:, 2]
        distance = (xs - centre_x) * tf.cos(angle) + (ys - centre_y) * tf.sin(angle)  # (B, H, W)
        step = tf.clip_by_value(distance * resolution + 0.5, 0.0, 1.0)[..., None]
        colour = (2.0 * tf.transpose(q[:, 3:6], (0, 2, 3, 1)) - 1.0) * 0.45  # (B, 1, 1, 3)
        total += step * colour
    return total


def _object(u, resolution, difficulty):
    """Alpha (anti-aliased), binary mask and shading factor of one object, each (B, H, W, 1)."""

    def param(name):
        return u[name][:, None, None, :]  # (B, 1, 1, k), broadcasts over pixels

    # Probability of a non-ellipse rises from 0 at difficulty 0.25 to 0.75 at 0.85;
    # half of those are polygons, half superellipses.
    p_other = 0.75 * min(max((difficulty - 0.25) / 0.6, 0.0), 1.0)
    is_polygon = param("kind") < p_other / 2
    is_super = tf.logical_and(~is_polygon, param("kind") < p_other)
    exponent = tf.exp(param("exponent") * math.log(6.0))  # 1 = diamond ... 6 = rounded square
    sides = 3.0 + tf.floor(param("sides") * 4.0)

    # Area of each shape with unit semi-axes; the [-1, 1]^2 image has area 4.
    unit_area = tf.where(
        is_polygon, sides / 2 * tf.sin(2 * math.pi / sides),
        tf.where(is_super, 4 * tf.exp(2 * tf.math.lgamma(1 + 1 / exponent) - tf.math.lgamma(1 + 2 / exponent)),
                 math.pi))
    low, high = 0.12 - 0.06 * difficulty, 0.24 + 0.08 * difficulty
    coverage = low + (high - low) * param("area")
    log_aspect = (2 * param("aspect") - 1) * (0.4 + 0.3 * difficulty)
    semi_ab = 4 * coverage / unit_area
    a = tf.sqrt(semi_ab) * tf.exp(log_aspect / 2)
    b = tf.sqrt(semi_ab) * tf.exp(-log_aspect / 2)
    angle = math.pi * param("angle")
    cos, sin = tf.cos(angle), tf.sin(angle)

    # Half-extents of the rotated shape: polygons lie inside the ellipse with
    # the same semi-axes, superellipses inside their bounding rectangle.
    extent_x = tf.where(is_super, a * tf.abs(cos) + b * tf.abs(sin), tf.sqrt((a * cos) ** 2 + (b * sin) ** 2))
    extent_y = tf.where(is_super, a * tf.abs(sin) + b * tf.abs(cos), tf.sqrt((a * sin) ** 2 + (b * cos) ** 2))
    # Up to 10 % of the extent may leave the frame, so objects also touch the border.
    centre = 2 * param("centre") - 1
    cx = centre[..., :1] * tf.maximum(1 - 0.9 * extent_x, 0.0)
    cy = centre[..., 1:] * tf.maximum(1 - 0.9 * extent_y, 0.0)

    pixels = (tf.range(resolution, dtype=tf.float32) + 0.5) * (2.0 / resolution) - 1.0
    dx = pixels[None, None, :, None] - cx  # (B, 1, W, 1)
    dy = pixels[None, :, None, None] - cy  # (B, H, 1, 1)
    x = (dx * cos + dy * sin) / a  # (B, H, W, 1), object frame, unit semi-axes
    y = (dy * cos - dx * sin) / b

    # Degree-1 homogeneous implicit functions: inside <=> level <= 1, and
    # (1 - level) * radius approximates the distance to the edge.
    radius = tf.sqrt(x**2 + y**2)
    superellipse = (tf.abs(x) ** exponent + tf.abs(y) ** exponent) ** (1 / exponent)
    sector = 2 * math.pi / sides
    polar = tf.math.floormod(tf.atan2(y, x), sector) - sector / 2
    polygon = radius * tf.cos(polar) / tf.cos(math.pi / sides)
    level = tf.where(is_polygon, polygon, tf.where(is_super, superellipse, radius))

    pixel_size = 2.0 / resolution
    alpha = tf.clip_by_value(0.5 + (1 - level) * tf.sqrt(a * b) / pixel_size, 0.0, 1.0)
    mask = tf.cast(level <= 1.0, tf.float32)

    light_angle = 2 * math.pi * param("light")
    light = tf.clip_by_value((dx * tf.cos(light_angle) + dy * tf.sin(light_angle)) / tf.sqrt(a * b), -1.0, 1.0)
    rim = tf.minimum(level, 1.0) ** 4
    shading = (1.0 + 0.3 * light) * (1.0 - 0.35 * rim)
    return alpha, mask, shading


def _object_colour(u, background, alpha, difficulty):
    """A random colour at a set distance from the background under the object. (B, 1, 1, 3)"""
    weights = tf.reduce_sum(alpha, axis=(1, 2))  # (B, 1)
    local = tf.reduce_sum(background * alpha, axis=(1, 2)) / tf.maximum(weights, 1e-6)  # (B, 3)
    direction = 2 * u["hue"] - 1
    direction /= tf.maximum(tf.norm(direction, axis=-1, keepdims=True), 1e-3)
    contrast = (1.0 - 0.6 * difficulty) * (0.85 + 0.3 * u["contrast"])
    step = contrast * direction
    # Step the other way on channels that would leave the valid range.
    step = tf.where(tf.abs(local + step) > 0.95, -step, step)
    return tf.clip_by_value(local + step, -0.95, 0.95)[:, None, None, :]
