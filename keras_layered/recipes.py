"""The shipped recipes (the repository's configs/*.yaml), found by name: `--config cub_64`.

An installed wheel carries them as package data in keras_layered/configs/ (setup.cfg maps the
top-level configs/ folder there). A source checkout, run as `python cli.py`, from PYTHONPATH or
installed editable, reads the checkout's own configs/ beside the package: found by path, not
importlib.resources, since an editable install cannot import a folder of YAML files mapped into
a package, and another checkout's editable install would otherwise lend its recipes.
"""

from pathlib import Path

from keras_layered.config import parse_override
from keras_layered.errors import ConfigError

_PACKAGE = Path(__file__).resolve().parent


def recipe_dir():
    """The folder holding the shipped recipes."""
    shipped = _PACKAGE / "configs"  # an installed wheel's package data
    return shipped if shipped.is_dir() else _PACKAGE.parent / "configs"  # a source checkout


def recipe_names():
    """Names of the shipped recipes, sorted: cub_128, cub_64, ..., synthetic."""
    return sorted(path.stem for path in recipe_dir().glob("*.yaml"))


def recipe(name):
    """The file of the shipped recipe `name` (with or without .yaml); ConfigError if none has it."""
    stem = name[:-len(".yaml")] if name.endswith(".yaml") else name
    path = recipe_dir() / f"{stem}.yaml"
    if Path(name).name != name or not path.is_file():  # a name, not a path into another folder
        raise ConfigError(f"no shipped recipe named {name!r}: the recipes are {', '.join(recipe_names())}")
    return path


def resolve_config(name_or_path):
    """--config: a YAML file that exists (it wins over a recipe of the same name), else a shipped
    recipe's name. Raises ConfigError naming the recipes when it is neither."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    name = str(name_or_path)
    known = path.suffix in ("", ".yaml") and path.stem in recipe_names()
    if known and path.name == name:
        return recipe(path.stem)
    if known:  # e.g. configs/cub_64.yaml outside a checkout
        raise ConfigError(f"no config file {name} (the shipped recipe of that name: --config {path.stem})")
    raise ConfigError(f"{name} is neither a config file nor a shipped recipe: the recipes are "
                      f"{', '.join(recipe_names())}")


def data_source(overrides):
    """The data.source that `overrides` (--data, --set data.source=...) give the default recipe."""
    source = "synthetic"  # synthetic.yaml's
    for text in overrides:
        key, value = parse_override(text)
        if key == "data.source":
            source = value
    return source


def default_recipe(source):
    """The recipe `train` starts from without --config: synthetic.yaml for the built-in scenes,
    photos.yaml for real images (folder:PATH, tfds:NAME)."""
    return recipe("synthetic" if source == "synthetic" else "photos")
