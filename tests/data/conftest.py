"""Fixtures for the data tests: a tiny synthetic MNIST and the real one, if any."""

import os
from pathlib import Path

import numpy as np
import pytest

# The repository root is two levels above this file; the shared data sit
# beside it (`../shared/data` from the root).
_SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture(scope="session")
def mnist_dir():
    """Directory of the real mnist.npz (KERAS_CONGEAL_DATA or ../shared/data)."""
    for directory in (os.environ.get("KERAS_CONGEAL_DATA"), _SHARED_DATA):
        if directory and (Path(directory) / "mnist.npz").is_file():
            return Path(directory)
    pytest.skip("real MNIST not found (set KERAS_CONGEAL_DATA or provide ../shared/data)")


def _make_digits(n, seed):
    """`n` synthetic 28x28 uint8 "digits": an anti-aliased ring in a 20x20 box."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:28, 0:28].astype(np.float64)
    centre = 13.5 + rng.uniform(-2, 2, (n, 2, 1, 1))
    radius = rng.uniform(5, 8, (n, 1, 1))
    r = np.hypot(x - centre[:, 0], y - centre[:, 1])
    ink = np.clip(2.0 - np.abs(r - radius), 0, 1)
    return np.round(255 * ink).astype(np.uint8)


@pytest.fixture(scope="session")
def make_digits():
    """`make_digits(n, seed)`: n synthetic uint8 28x28 digits (rings)."""
    return _make_digits


@pytest.fixture
def fake_mnist(tmp_path):
    """A tiny mnist.npz (40 train and 10 test images per digit); its directory."""
    directory = tmp_path / "fake_data"
    directory.mkdir()
    y_train = np.repeat(np.arange(10, dtype=np.uint8), 40)
    y_test = np.repeat(np.arange(10, dtype=np.uint8), 10)
    np.savez(
        directory / "mnist.npz",
        x_train=_make_digits(len(y_train), 0),
        y_train=y_train,
        x_test=_make_digits(len(y_test), 1),
        y_test=y_test,
    )
    return directory
