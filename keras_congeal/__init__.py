"""keras_congeal: unsupervised joint alignment (congealing) of large image sets.

Implements *Jointly Aligning Millions of Images with Deep Penalised
Reconstruction Congealing* (Annunziata, Sagonas, Cali; ICCV 2019) in Keras 3.

The main names are importable from here; they load Keras only when first
used, so `import keras_congeal` (and the command line's `--help`) stay fast:

    from keras_congeal import Congealer, CongealSettings, fit_congealer

The serialisable classes (`Congealer` and the layers) are registered with
Keras as soon as Keras is loaded, so that after `import keras_congeal`,
`keras.saving.load_model("model.keras")` finds them, as after
`import keras_hub`: at once if Keras is already imported, else right after
its own import finishes (a one-shot import hook; nothing else is loaded).
"""

import importlib
import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"

_LAZY = {
    "Congealer": "keras_congeal.models",
    "CongealSettings": "keras_congeal.settings",
    "fit_congealer": "keras_congeal.training",
    "build_congealer": "keras_congeal.training",
    "choose_reference": "keras_congeal.reference",
    "AlignmentMonitor": "keras_congeal.callbacks",
    "ImageBatches": "keras_congeal.datasets",
}

__all__ = ["__version__", *_LAZY]

# The modules whose import registers every serialisable class.
_SERIALISABLE_MODULES = ("keras_congeal.layers", "keras_congeal.models")


def _register_serialisables():
    for module in _SERIALISABLE_MODULES:
        importlib.import_module(module)


class _RegisteringLoader(importlib.abc.Loader):
    """Keras's own loader, registering keras_congeal's classes once it has run."""

    def __init__(self, loader):
        self._loader = loader

    def __getattr__(self, name):  # get_resource_reader, is_package, ...: Keras's loader's
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        _register_serialisables()


class _AfterKerasImport(importlib.abc.MetaPathFinder):
    """Finds `keras` through the other finders and wraps its loader (one shot)."""

    def find_spec(self, name, path=None, target=None):
        if name != "keras":
            return None
        _remove_hook()
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _RegisteringLoader(spec.loader)
        return spec


def _remove_hook():
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _AfterKerasImport)]


if "keras" in sys.modules:
    _register_serialisables()
else:
    sys.meta_path.insert(0, _AfterKerasImport())


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'keras_congeal' has no attribute {name!r}")
