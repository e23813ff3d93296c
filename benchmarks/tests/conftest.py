"""Shared fixtures of the baseline tests.

The baselines live in `benchmarks/baselines` (imported as
`benchmarks.baselines`), outside the installed package: the repository root is
put on `sys.path` so that `pytest benchmarks/tests` works from anywhere.
"""

import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def smooth_image(size=28):
    """A smooth, asymmetric test image in [0, 1]: three Gaussian blobs, well
    inside the frame (so bilinear and bicubic resampling nearly agree and no
    content reaches the border)."""
    ys, xs = np.mgrid[0:size, 0:size].astype("float64")
    c = (size - 1) / 2.0

    def blob(dx, dy, sx, sy):
        return np.exp(-0.5 * (((xs - c - dx) / sx) ** 2 + ((ys - c - dy) / sy) ** 2))

    image = blob(-2.0, 0.5, 2.5, 4.0) + 0.8 * blob(3.0, -3.0, 2.0, 1.6)
    image = image + 0.5 * blob(2.0, 4.0, 1.5, 1.5)
    return image / image.max()


@pytest.fixture
def smooth():
    """The 28x28 smooth test image."""
    return smooth_image()


@pytest.fixture
def make_smooth():
    """`make_smooth(size)`: the smooth test image at another size."""
    return smooth_image
