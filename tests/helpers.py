"""Assertions and fixtures' building blocks shared by several test modules."""

import copy

import numpy as np


def assert_config_round_trip(cls, args):
    """`cls(**args)` keeps every argument in `get_config`, and `from_config` rebuilds it exactly."""
    config = cls(**args).get_config()
    for key, value in args.items():
        assert config[key] == value, key
    clone = cls.from_config(config)
    assert isinstance(clone, cls)
    for key, value in args.items():
        assert getattr(clone, key) == value, key
    assert clone.get_config() == config
    return clone


def load_script(relative_path):
    """A script of the repository (bench/*.py), which is not in a package: loaded by path."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def config_with(base, **sections):
    """The config of the dict `base` with some sections' keys overridden, e.g.
    config_with(TINY, loss={"adversarial": "wgan_gp"})."""
    from keras_layered.config import config_from_dict

    values = copy.deepcopy(base)
    for section, overrides in sections.items():
        values.setdefault(section, {}).update(overrides)
    return config_from_dict(values)


def to_uint8(image):
    """An image in [-1, 1] back to its integer pixel values."""
    return np.round((image + 1.0) * 127.5).astype(np.int64)


def coded_crop_position(pixels, mask, size):
    """Checks a size x size crop of a coded test image (red = 6 x column, green = 8 x row, blue > 0
    inside the mask): its pixels are one contiguous window of the source, mirrored or not, and its
    mask is the source mask of the same pixels. Returns ((top row, left column), mirrored)."""
    np.testing.assert_array_equal(pixels[..., 2] > 0, mask[..., 0] == 1)
    x, y = pixels[..., 0] // 6, pixels[..., 1] // 8
    step = x[0, 1] - x[0, 0]
    assert step in (1, -1)
    np.testing.assert_array_equal(x, x[0, 0] + step * np.arange(size)[None, :].repeat(size, 0))
    np.testing.assert_array_equal(y, y[0, 0] + np.arange(size)[:, None].repeat(size, 1))
    return (y[0, 0], x.min()), step == -1


def write_images_and_masks(root, examples, sub=""):
    """Writes root/images[/sub]/NAME.png and root/masks[/sub]/NAME.png (the folder layout with
    masks) from {NAME: (uint8 RGB image, boolean mask)}; returns root."""
    from pathlib import Path

    from PIL import Image

    root = Path(root)
    for kind in ("images", "masks"):
        (root / kind / sub).mkdir(parents=True, exist_ok=True)
    for name, (rgb, mask) in examples.items():
        Image.fromarray(rgb).save(root / "images" / sub / f"{name}.png")
        Image.fromarray(np.asarray(mask, bool).astype(np.uint8) * 255).save(root / "masks" / sub / f"{name}.png")
    return root
