"""Data protocols of the paper: MNIST subsets, perturbed MNIST, affNIST-like and
infiMNIST-like digits, and the built-in demo set.

Command line: `keras-congeal data --help` (also `python -m keras_congeal.data`).

The names exported are those of `keras_congeal.data.mnist` and
`keras_congeal.data.perturb`, and `load_demo`. Those of `perturb` (which
imports Keras) and `load_demo` are imported on first use: the command line
imports this package to check its arguments and read MNIST before Keras
loads.
"""

import importlib

from keras_congeal.data import mnist as _mnist
from keras_congeal.data.mnist import *  # noqa: F403 (the names of mnist.__all__)

# `perturb.__all__` (perturb takes it from here), known without importing Keras.
_PERTURB_NAMES = (
    "CHUNK_SIZE",
    "AFFNIST_PADDING",
    "homography_from_corners",
    "perspective_perturbation",
    "iter_perspective_perturbation",
    "oracle_align",
    "iter_oracle_align",
    "affnist_like",
    "iter_affnist_like",
    "infimnist_like",
    "iter_infimnist_like",
)

__all__ = [*_mnist.__all__, *_PERTURB_NAMES, "load_demo"]  # noqa: F405


def __getattr__(name):
    # `load_demo` is also imported on first use so that `python -m
    # keras_congeal.data.demo` does not find the module already imported by
    # its package.
    if name in _PERTURB_NAMES:
        return getattr(importlib.import_module("keras_congeal.data.perturb"), name)
    if name == "load_demo":
        from keras_congeal.data.demo import load_demo

        return load_demo
    if name in ("perturb", "demo"):
        return importlib.import_module(f"keras_congeal.data.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
