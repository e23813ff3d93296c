"""Fixtures: small ONNX models following the keras_congeal contract.

Every model translates images by a fixed number of pixels (see
`keras_congeal_serving.testing`), so expected outputs are written by hand.
"""

import numpy as np
import pytest

from keras_congeal_serving.testing import header_only_png, make_translation_model


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def make_model(model_dir):
    """`make_model(**kwargs)` -> path of a translation model (cached by kwargs)."""
    cache = {}

    def make(**kwargs):
        key = repr(sorted(kwargs.items()))
        if key not in cache:
            cache[key] = make_translation_model(model_dir / f"model_{len(cache)}.onnx", **kwargs)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def grey_model(make_model):
    """8x8 greyscale, one pixel to the right: aligned[y, x] = images[y, x + 1]."""
    return make_model(height=8, width=8, channels=1, shift=(1.0, 0.0))


@pytest.fixture(scope="session")
def rgb_model(make_model):
    """8x8 RGB, one pixel down: aligned[y, x] = images[y + 1, x]."""
    return make_model(height=8, width=8, channels=3, shift=(0.0, 1.0))


@pytest.fixture(scope="session")
def any_size_model(make_model):
    """Greyscale, any size, one pixel to the right."""
    return make_model(height=8, width=8, channels=1, shift=(1.0, 0.0), any_size=True)


@pytest.fixture
def digits():
    """Five 8x8 uint8 images with distinct pixels."""
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(5, 8, 8), dtype=np.uint8)


@pytest.fixture(scope="session")
def bomb_png():
    """`bomb_png(width, height)` -> a greyscale PNG whose header alone claims that size."""
    return header_only_png
