"""The package's structure: imports flow one way, and the light modules stay free of TensorFlow.

The import graph is read from the source with `ast` (module-level and function-level imports);
the promises that depend on it (the command line starts without TensorFlow, `import
keras_layered` loads nothing heavy yet `keras.saving.load_model` finds the model classes) are
checked in fresh interpreters.
"""

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "keras_layered"

# Lowest first; a module may import from its own layer or the ones below. A module belongs to
# the layer of its longest listed prefix. evaluation (mask metrics, numpy only) sits beside the
# losses: the training run scores its segmenters with it.
LAYERS = [
    ("errors",),
    ("config", "kernels", "distribute", "io", "recipes", "data.spec", "data.registry"),
    ("data",),
    ("layers",),
    ("losses", "evaluation"),
    ("models",),
    ("training",),
    ("fid", "export", "segment"),
    ("cli",),
]
# Free of TensorFlow, Keras and TFDS when imported (their module-level imports, transitively).
LIGHT = ("errors", "config", "kernels", "io", "recipes", "data.spec", "data.registry")
HEAVY = ("tensorflow", "keras", "tensorflow_datasets")
# What the library's lower parts must never reach up to.
LIBRARY = ("data", "layers", "models", "training", "losses", "evaluation", "export")


def _module_name(path):
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name):
    """[(imported name, module level?)] of module `name`; `from X import a` gives X.a when that is a module."""
    tree = ast.parse(MODULES[name].read_text())
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    found = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((alias.name, not in_function) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    base = ".".join([*package.split(".")[:len(package.split(".")) - child.level + 1], base]).strip(".")
                for alias in child.names:
                    full = f"{base}.{alias.name}"
                    found.append((full if full in MODULES else base, not in_function))
            visit(child, inner)

    visit(tree, False)
    return found


def _internal(target):
    """The package module `target` names (its longest known prefix), or None outside the package."""
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


def _graph(module_level_only=False):
    """{module: {package modules it imports}}; the root package (entered by every import) is left out."""
    graph = {}
    for name in MODULES:
        targets = {_internal(t) for t, top in _imports(name) if top or not module_level_only}
        graph[name] = {t for t in targets if t and t not in ("keras_layered", name)}
    return graph


def _short(name):
    return name.removeprefix("keras_layered.")


def _layer(name):
    short = _short(name)
    best = max(((len(prefix), i) for i, names in enumerate(LAYERS) for prefix in names
                if short == prefix or short.startswith(prefix + ".")), default=None)
    assert best is not None, f"{name} belongs to no layer: add it to LAYERS"
    return best[1]


def test_the_walk_sees_the_package():
    graph = _graph()
    assert {"keras_layered.cli", "keras_layered.io", "keras_layered.data.registry",
            "keras_layered.training.checks"} <= set(graph)
    # Module-level and function-level imports, `from package import module` resolved to the module.
    assert "keras_layered.training.checks" in graph["keras_layered.cli"]  # inside `train`
    assert "keras_layered.data.sources" in graph["keras_layered.training.build"]  # from keras_layered.data import sources
    assert "keras_layered.io" in _graph(module_level_only=True)["keras_layered.data.folder"]


def test_no_import_cycles():
    graph, state, cycles = _graph(), {}, []

    def visit(node, path):
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                cycles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(map(_short, c)) for c in cycles)


def test_every_module_has_a_layer_and_imports_only_downward():
    upward = [f"{_short(name)} (layer {_layer(name)}) imports {_short(target)} (layer {_layer(target)})"
              for name, targets in _graph().items() if name != "keras_layered"
              for target in sorted(targets) if _layer(target) > _layer(name)]
    assert not upward, "\n".join(upward)


def test_the_library_never_imports_the_applications_above_it():
    offending = [f"{_short(name)} imports {_short(target)}" for name, targets in _graph().items()
                 if _short(name).split(".")[0] in LIBRARY
                 for target in targets if target in ("keras_layered.segment", "keras_layered.cli")]
    assert not offending, offending


def test_distribute_stays_below_the_layers_that_draw_with_it():
    assert not {t for t in _graph()["keras_layered.distribute"]
                if _short(t).split(".")[0] in ("training", "models", "layers", "data")}


def test_light_modules_import_no_tensorflow_at_module_level():
    graph = _graph(module_level_only=True)
    heavy = []
    for light in LIGHT:
        reached, todo = set(), [f"keras_layered.{light}"]
        while todo:
            name = todo.pop()
            if name not in reached:
                reached.add(name)
                todo.extend(graph[name])
        heavy += [f"{light} -> {_short(name)} imports {target}" for name in sorted(reached)
                  for target, top in _imports(name) if top and target.split(".")[0] in HEAVY]
    assert not heavy, heavy


def test_the_package_root_loads_only_the_kernel_choice():
    assert _graph()["keras_layered"] == {"keras_layered.kernels"}


# --- in fresh interpreters -------------------------------------------------------------------------


def _python(code, *args, env=None, timeout=240):
    """Runs `code` in a fresh interpreter importing this checkout; the last line of its stdout, as JSON."""
    env = {**os.environ, **(env or {}), "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


CLI = """
    import json, runpy, sys
    sys.argv = ["cli.py", *sys.argv[1:]]
    try:
        runpy.run_path("cli.py", run_name="__main__")
    except SystemExit as exit:
        code = exit.code
    print()
    print(json.dumps({"code": code, "loaded": sorted(m for m in ("tensorflow", "keras", "tensorflow_datasets")
                                                     if m in sys.modules)}))
"""


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"], ["train", "--dry-run"]])
def test_the_command_line_starts_without_tensorflow(args, tmp_path):
    extra = ["--out", tmp_path / "run"] if "--dry-run" in args else []
    assert _python(CLI, *args, *extra) == {"code": 0, "loaded": []}
    assert not (tmp_path / "run").exists()


BLOCK_TENSORFLOW = """
    import sys

    class NoTensorFlow:  # as on a machine where TensorFlow and Keras are not installed
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in ("tensorflow", "keras", "tensorflow_datasets"):
                raise ModuleNotFoundError(f"No module named {name!r}")

    sys.meta_path.insert(0, NoTensorFlow())
"""


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"], ["segment", "--help"]])
def test_the_help_needs_no_tensorflow_installed(args):
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(BLOCK_TENSORFLOW) + textwrap.dedent(CLI), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Usage: cli.py" in done.stdout
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"code": 0, "loaded": []}
    # The blocker is real: importing TensorFlow behind it fails.
    blocked = subprocess.run([sys.executable, "-c", textwrap.dedent(BLOCK_TENSORFLOW) + "import tensorflow"],
                             capture_output=True, text=True, timeout=120)
    assert blocked.returncode != 0 and "No module named 'tensorflow'" in blocked.stderr


def test_a_dry_run_on_an_image_folder_needs_no_tensorflow(tmp_path):
    (tmp_path / "images").mkdir()
    for i in range(2):
        Image.fromarray(np.full((20, 24, 3), 40 * i, np.uint8)).save(tmp_path / "images" / f"{i}.png")
    assert _python(CLI, "train", "--dry-run", "--data", f"folder:{tmp_path / 'images'}", "--out",
                   tmp_path / "run") == {"code": 0, "loaded": []}
    # The check is real: an empty folder fails, still without TensorFlow.
    (tmp_path / "empty").mkdir()
    assert _python(CLI, "train", "--dry-run", "--data", f"folder:{tmp_path / 'empty'}", "--out",
                   tmp_path / "run") == {"code": 2, "loaded": []}


def test_config_and_the_light_modules_load_without_tensorflow():
    loaded = _python("""
        import json, sys
        import keras_layered
        from keras_layered import config, errors, io, kernels
        from keras_layered.data import folder, registry, sources, spec
        from keras_layered.training import checks
        assert config.ConfigError is errors.ConfigError
        cfg = config.load_config(overrides=["data.source=tfds:caltech_birds2011"])
        try:
            config.load_config(overrides=["data.source=tfds:no_such_set"])
        except errors.ConfigError as err:
            message = str(err)
        print(json.dumps([cfg.data.source, message, sorted(m for m in ("tensorflow", "keras") if m in sys.modules)]))
    """)
    assert loaded[0] == "tfds:caltech_birds2011"
    assert loaded[1].startswith("data.source: tfds:no_such_set is not supported; supported datasets: "
                                "tfds:caltech_birds2011")
    assert loaded[2] == []


@pytest.fixture(scope="module")
def saved_segmenter(tmp_path_factory):
    import keras

    from keras_layered.models import Segmenter, UNet

    path = tmp_path_factory.mktemp("model") / "segmenter.keras"
    segmenter = Segmenter(UNet(16, width=4, depth=2), 16)
    images = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3)).astype(np.uint8)
    expected = keras.ops.convert_to_numpy(segmenter(images))
    segmenter.save(path)
    np.save(path.with_name("images.npy"), images)
    return path, expected


LOAD = """
    import importlib, json, sys
    path, first = sys.argv[1:]
    if first != "keras_layered":
        importlib.import_module(first)
    import keras_layered
    before = sorted(m for m in ("tensorflow", "keras") if m in sys.modules)
    import keras
    import numpy as np
    model = keras.saving.load_model(path)
    masks = model.predict(np.load(path.replace("segmenter.keras", "images.npy")), verbose=0)
    print(json.dumps({"before": before, "class": type(model).__name__, "masks": masks.tolist()}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("first", ["keras_layered", "keras", "tensorflow"])
def test_load_model_after_import_keras_layered_in_any_order(first, saved_segmenter):
    """`import keras_layered` then Keras, or Keras (or TensorFlow, which loads Keras) then the
    package: either way `keras.saving.load_model` knows the package's classes."""
    path, expected = saved_segmenter
    loaded = _python(LOAD, path, first)
    assert loaded["class"] == "Segmenter"
    np.testing.assert_allclose(loaded["masks"], expected, rtol=1e-6, atol=1e-6)
    if first == "keras_layered":
        assert loaded["before"] == []  # the package alone loaded neither
