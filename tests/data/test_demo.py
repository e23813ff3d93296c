import os

import numpy as np
import pytest

from keras_congeal.data import load_demo, perspective_perturbation
from keras_congeal.data.demo import build_demo


def test_demo_asset():
    demo = load_demo()
    assert demo["images"].shape == (1000, 28, 28) and demo["images"].dtype == np.uint8
    assert demo["originals"].shape == (1000, 28, 28) and demo["originals"].dtype == np.uint8
    assert demo["matrices"].shape == (1000, 3, 3) and demo["matrices"].dtype == np.float64
    assert demo["indices"].shape == (1000,)
    assert "LeCun" in demo["description"] and "CC BY-SA 3.0" in demo["description"]
    assert "sigma=0.2" in demo["description"]
    # The images are the documented perturbation of the originals.
    # (Matrices to the last few ulps: the 8x8 solves round differently with
    # other BLAS builds.)
    images, matrices = perspective_perturbation(demo["originals"][:8], 0.2, seed=0)
    np.testing.assert_allclose(matrices, demo["matrices"][:8], rtol=1e-12, atol=1e-12)
    assert np.abs(images.astype(int) - demo["images"][:8]).max() <= 1


def test_demo_asset_is_small():
    import keras_congeal

    path = os.path.join(os.path.dirname(keras_congeal.__file__), "assets", "demo_mnist.npz")
    assert os.path.getsize(path) < 1_000_000


@pytest.mark.data
def test_demo_rebuild_matches_asset(mnist_dir, tmp_path):
    from keras_congeal.data import load_mnist

    demo = load_demo()
    (x_train, y_train), _ = load_mnist(mnist_dir)
    np.testing.assert_array_equal(x_train[demo["indices"]], demo["originals"])
    assert np.all(y_train[demo["indices"]] == 3)
    rebuilt = np.load(build_demo(mnist_dir, tmp_path / "demo.npz"))
    np.testing.assert_allclose(rebuilt["matrices"], demo["matrices"], rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(rebuilt["indices"], demo["indices"])
    assert np.abs(rebuilt["images"].astype(int) - demo["images"]).max() <= 1
