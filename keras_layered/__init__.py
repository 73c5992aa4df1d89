"""keras-layered: unsupervised object segmentation with perturbed layered GANs in Keras 3.

`import keras_layered` imports neither TensorFlow nor Keras (the command line starts without
them). Its subpackages load on first access (`keras_layered.models`, `keras_layered.layers`, ...),
and its model classes are registered with Keras as soon as Keras is imported, before or after
this package, so `keras.saving.load_model` opens saved models after `import keras_layered`.
"""

import importlib
import importlib.util
import sys

# oneDNN on where it is faster (AVX2 + FMA CPUs), before TensorFlow loads: TensorFlow reads the
# setting at import (`kernels`; a TF_ENABLE_ONEDNN_OPTS set by the user wins).
from keras_layered import kernels

kernels.configure_onednn("auto")

__version__ = "0.1.0"

def __getattr__(name):
    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f"{__name__}.{name}")  # a submodule, loaded on first access
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _register_models():
    importlib.import_module(f"{__name__}.models")  # its classes register themselves when defined


class _AfterKeras:
    """The loader of the `keras` package, registering the model classes once Keras is loaded."""

    def __init__(self, loader):
        self._loader = loader

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def exec_module(self, module):
        self._loader.exec_module(module)
        if _KERAS_HOOK in sys.meta_path:
            sys.meta_path.remove(_KERAS_HOOK)
        _register_models()


class _KerasHook:
    """A `sys.meta_path` finder for `keras` alone: it finds Keras as the other finders do and
    wraps its loader in `_AfterKeras`. It stays until Keras is loaded: `importlib.util.find_spec`
    (TensorFlow calls it for keras) asks finders without loading anything."""

    def find_spec(self, name, path=None, target=None):
        if name != "keras":
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _AfterKeras(spec.loader)
                return spec
        return None


_KERAS_HOOK = _KerasHook()

if "keras" in sys.modules:
    _register_models()
else:
    sys.meta_path.insert(0, _KERAS_HOOK)
