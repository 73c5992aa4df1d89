"""The shipped recipes: found by name (`--config cub_64`), the photo recipe as the start for real
images, and installed with the package (the wheel holds them and the `keras-layered` command)."""

import configparser
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from keras_layered import cli, recipes
from keras_layered.config import ConfigError

REPO = Path(__file__).resolve().parents[1]
NAMES = ["cub_128", "cub_64", "flowers_128", "flowers_64", "lsun_car_128", "lsun_car_64", "photos", "synthetic"]


def test_every_file_of_configs_is_a_recipe_by_name():
    assert recipes.recipe_dir() == REPO / "configs"  # a checkout reads its own recipes
    assert recipes.recipe_names() == sorted(p.stem for p in (REPO / "configs").glob("*.yaml"))
    assert set(NAMES) <= set(recipes.recipe_names())
    for name in recipes.recipe_names():
        assert recipes.resolve_config(name) == REPO / "configs" / f"{name}.yaml"
        assert recipes.resolve_config(f"{name}.yaml") == REPO / "configs" / f"{name}.yaml"
    assert cli.DEFAULT_CONFIG == REPO / "configs" / "synthetic.yaml"


def test_a_file_that_exists_wins_over_a_recipe_of_its_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("cub_64.yaml").write_text("train:\n  steps: 8\n")
    assert recipes.resolve_config("cub_64.yaml") == Path("cub_64.yaml")
    assert recipes.resolve_config("cub_64") == REPO / "configs" / "cub_64.yaml"  # no file of that name here
    assert recipes.resolve_config(tmp_path / "cub_64.yaml") == tmp_path / "cub_64.yaml"


@pytest.mark.parametrize("given, message", [
    ("cub_32", "cub_32 is neither a config file nor a shipped recipe: the recipes are " + ", ".join(NAMES)),
    ("cub_64.txt", "cub_64.txt is neither a config file nor a shipped recipe"),
    ("configs/cub_64.yaml", "no config file configs/cub_64.yaml (the shipped recipe of that name: --config cub_64)"),
    ("elsewhere/mine.yaml", "elsewhere/mine.yaml is neither a config file nor a shipped recipe"),
])
def test_an_unknown_name_or_missing_file_names_the_recipes(tmp_path, monkeypatch, given, message):
    monkeypatch.chdir(tmp_path)  # where no configs/ folder is, as for an installed package
    with pytest.raises(ConfigError) as err:
        recipes.resolve_config(given)
    assert message in str(err.value)
    with pytest.raises(ConfigError, match="no shipped recipe named '../configs/cub_64'"):
        recipes.recipe("../configs/cub_64")  # a name, never a path out of the recipes' folder


def test_an_installed_package_reads_its_package_data(tmp_path, monkeypatch):
    package = tmp_path / "site-packages" / "keras_layered"
    (package / "configs").mkdir(parents=True)
    (package / "configs" / "synthetic.yaml").write_text("train:\n  steps: 8\n")
    monkeypatch.setattr(recipes, "_PACKAGE", package)
    assert recipes.recipe_dir() == package / "configs"
    assert recipes.recipe_names() == ["synthetic"]
    assert recipes.resolve_config("synthetic") == package / "configs" / "synthetic.yaml"


def invoke(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def photo_folder(root, count=3):
    root.mkdir()
    for i in range(count):
        pixels = np.random.default_rng(i).integers(0, 256, (40, 48, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"photo_{i}.png")
    return root


def test_train_on_a_folder_starts_from_the_photo_recipe(tmp_path):
    photos = photo_folder(tmp_path / "my_photos")
    result = invoke("train", "--dry-run", "--data", f"folder:{photos}", "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert result.stderr.strip().splitlines() == [
        f"using the photo recipe photos.yaml for folder:{photos} (pass --config to choose another)"]
    printed = yaml.safe_load(result.stdout)
    recipe = yaml.safe_load((REPO / "configs" / "photos.yaml").read_text())
    assert printed["data"]["source"] == f"folder:{photos}"
    assert printed["perturb"]["background_mixing"] == recipe["perturb"]["background_mixing"] == 1.0
    assert (printed["train"]["steps"], printed["segment"]["steps"]) == (7000, 2000)  # synthetic.yaml: 2500, 1000
    assert printed["segment"]["layer_jitter"] == 0.6  # synthetic.yaml: 0 (off)
    assert printed["segment"]["unet_flip_average"] is True  # the built-in default: False
    assert printed["segment"]["reconstruction_weight"] == 0.0  # the built-in default: 1
    assert printed["segment"]["encoder_flip_average"] is True  # the built-in default: False
    # Served: the mean of both segmenters' masks (the built-in default: the U-Net's).
    assert (printed["segment"]["serve"], printed["segment"]["ensemble_encoder_share"]) == ("ensemble", 0.3)
    assert printed["segment"]["mask_threshold"] == 0.4  # the built-in default: 0.5
    assert printed["segment"]["shift_average"] == 1  # the built-in default: 0 (off)
    # Without --out the run is named after the data, as with any recipe.
    assert cli._default_run_dir(None, [f"data.source=folder:{photos}"]) == "runs/my_photos"
    assert cli._default_run_dir(None, []) == "runs/synthetic"


@pytest.mark.parametrize("config, mixing, steps, resolution", [
    ("synthetic", 0.0, 2500, 32), ("cub_64.yaml", 1.0, 100000, 64), ("photos", 1.0, 7000, 32)])
def test_a_named_recipe_overrides_the_photo_default(tmp_path, config, mixing, steps, resolution):
    photos = photo_folder(tmp_path / "my_photos")
    result = invoke("train", "--dry-run", "--config", config, "--data", f"folder:{photos}", "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert "photo recipe" not in result.stderr
    printed = yaml.safe_load(result.stdout)
    assert printed["perturb"]["background_mixing"] == mixing
    assert (printed["train"]["steps"], printed["data"]["resolution"]) == (steps, resolution)


def test_a_resumed_run_keeps_its_own_config_and_a_wrong_name_is_a_usage_error(tmp_path):
    photos = photo_folder(tmp_path / "my_photos")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(f"data:\n  source: folder:{photos}\ntrain:\n  steps: 6\n  steps_per_epoch: 2\n")
    result = invoke("train", "--dry-run", "--data", f"folder:{photos}", "--out", run)
    assert result.exit_code == 0, result.output
    assert "photo recipe" not in result.stderr
    printed = yaml.safe_load(result.stdout)
    assert (printed["train"]["steps"], printed["perturb"]["background_mixing"]) == (6, 0.0)

    result = invoke("train", "--dry-run", "--config", "cub64", "--out", tmp_path / "other")
    assert result.exit_code == 2, result.output
    assert "cub64 is neither a config file nor a shipped recipe: the recipes are cub_128, cub_64" in result.output
    assert "Traceback" not in result.output


def test_the_wheel_holds_every_module_every_recipe_and_the_command(tmp_path):
    source = tmp_path / "source"  # a copy: building writes build/ and *.egg-info beside setup.cfg
    source.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for name in ("keras_layered", "configs"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    # --no-build-isolation: the setuptools and wheel that TensorFlow installs build it, nothing is downloaded.
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                           "--quiet", "--wheel-dir", str(tmp_path / "wheel")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = (tmp_path / "wheel").glob("keras_layered-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for path in (REPO / "configs").glob("*.yaml"):
            assert archive.read(f"keras_layered/configs/{path.name}") == path.read_bytes(), path.name
        modules = {p.relative_to(REPO).as_posix() for p in (REPO / "keras_layered").rglob("*.py")}
        assert modules and modules <= names, sorted(modules - names)  # setup.cfg lists every subpackage
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        parser = configparser.ConfigParser()
        parser.read_string(archive.read(entry_points).decode())
    assert parser["console_scripts"]["keras-layered"] == "keras_layered.cli:main"
