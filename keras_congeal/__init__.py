"""keras_congeal: unsupervised joint alignment (congealing) of large image sets.

Implements *Jointly Aligning Millions of Images with Deep Penalised
Reconstruction Congealing* (Annunziata, Sagonas, Cali; ICCV 2019) in Keras 3.

The main names are importable from here; they load Keras only when first
used, so `import keras_congeal` (and the command line's `--help`) stay fast:

    from keras_congeal import Congealer, CongealSettings, fit_congealer
"""

import importlib

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


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'keras_congeal' has no attribute {name!r}")
