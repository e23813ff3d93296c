"""RASL baseline wrapper (skipped when `rasl` is not installed)."""

import importlib
import inspect

import numpy as np
import pytest

rasl = pytest.importorskip("rasl")

from skimage.transform import warp as skimage_warp  # noqa: E402

from benchmarks.baselines import rasl_baseline  # noqa: E402
from benchmarks.baselines._common import warp_bilinear  # noqa: E402
from benchmarks.baselines.rasl_baseline import run_rasl  # noqa: E402

KEYS = {"aligned", "transforms", "kept_mask", "seconds", "iterations", "peak_memory_bytes",
        "max_rss_bytes", "method", "info"}


def _tiny_set(make_smooth, count=12, size=32, seed=0):
    """Smooth images rotated and shifted a little about the centre, uint8."""
    rng = np.random.default_rng(seed)
    c = (size - 1) / 2.0
    about = np.array([[1, 0, c], [0, 1, c], [0, 0, 1.0]])
    matrices = []
    for _ in range(count):
        angle = rng.uniform(-0.1, 0.1)
        m = np.array([[np.cos(angle), -np.sin(angle), rng.uniform(-1, 1)],
                      [np.sin(angle), np.cos(angle), rng.uniform(-1, 1)], [0, 0, 1]])
        matrices.append(about @ m @ np.linalg.inv(about))
    base = np.repeat(make_smooth(size)[None], count, axis=0)
    return np.rint(255 * warp_bilinear(base, np.stack(matrices))).astype(np.uint8)


def _rasl_warp(image, matrix):
    """The input warped by `matrix` as RASL's `imtransform` does it."""
    out = skimage_warp(image.astype(float), matrix, order=3, mode="constant", cval=np.nan,
                       preserve_range=True)
    return np.nan_to_num(out)


def test_guard_premises_hold_for_the_installed_rasl():
    # The guards replace `np` in two modules; each guarded call must be the
    # only one of its kind there (see the module docstring).
    assert rasl.__version__ == rasl_baseline.RASL_VERSION
    jacobian = inspect.getsource(importlib.import_module("rasl.jacobian"))
    inner = inspect.getsource(importlib.import_module("rasl.inner"))
    assert jacobian.count("np.linalg.norm(") == 1
    assert "np.linalg.inv(" not in jacobian
    assert inner.count("np.linalg.inv(") == 1
    assert "np.linalg.norm(" not in inner


def test_guarded_linalg_unit():
    counts = {"zero_norm": 0, "singular_r": 0}
    linalg = rasl_baseline._GuardedNumpy(counts).linalg
    assert linalg.norm(np.zeros(5)) == 1.0
    assert linalg.norm(np.array([3.0, 4.0])) == 5.0
    np.testing.assert_array_equal(linalg.inv(np.zeros((3, 3))), np.zeros((3, 3)))
    np.testing.assert_allclose(linalg.inv(2 * np.eye(3)), 0.5 * np.eye(3))
    assert linalg.qr is np.linalg.qr
    assert counts == {"zero_norm": 1, "singular_r": 1}


@pytest.mark.parametrize("transform", ["euclidean", "affine"])
def test_rasl_runs_and_matrices_reproduce_aligned(make_smooth, transform):
    images = _tiny_set(make_smooth)
    result = run_rasl(images, transform=transform, max_iter=3)
    assert KEYS <= set(result)
    n = len(images)
    assert result["aligned"].shape == (n, 32, 32) and result["aligned"].dtype == np.float64
    assert result["transforms"].shape == (n, 3, 3) and result["transforms"].dtype == np.float64
    assert result["kept_mask"].all() and result["method"] == "rasl"
    assert 1 <= result["iterations"] <= 3 and result["seconds"] > 0
    assert len(result["info"]["inner_iterations"]) == result["iterations"]
    assert result["info"]["guards"] == {"zero_norm": 0, "singular_r": 0}
    # The input's range (uint8 -> 0..255).
    assert 100 < result["aligned"].max() < 300
    transforms = result["transforms"]
    assert np.abs(transforms - np.eye(3)).max() > 1e-3  # it did move
    if transform == "euclidean":
        linear = transforms[:, :2, :2]
        np.testing.assert_allclose(np.linalg.det(linear), 1.0, atol=1e-9)
    # Same warp code as RASL, our matrices: exact.
    for image, matrix, aligned in zip(images, transforms, result["aligned"], strict=True):
        np.testing.assert_allclose(_rasl_warp(image, matrix), aligned, atol=1e-9)
    # An independent (bilinear, hand-written; equal to scikit-image's order-1
    # warp, see test_baselines_lsc) warp by the same matrices agrees up to
    # bicubic-vs-bilinear differences, which are small on smooth images; the
    # inverse matrices (the other convention) do not. Both warps are compared
    # away from the border that RASL's bicubic warp erodes.
    inner = (slice(None), slice(3, -3), slice(3, -3))
    error = np.abs(warp_bilinear(images, transforms) - result["aligned"])[inner]
    assert error.max() < 0.05 * 255 and error.mean() < 0.005 * 255
    wrong = np.abs(warp_bilinear(images, np.linalg.inv(transforms)) - result["aligned"])
    assert wrong[inner].max() > 5 * error.max()


def test_rasl_bilinear_resample(make_smooth):
    images = _tiny_set(make_smooth, count=8)
    result = run_rasl(images, max_iter=2, resample="bilinear")
    np.testing.assert_allclose(result["aligned"], warp_bilinear(images, result["transforms"]))


def test_blank_image_does_not_crash_rasl(make_smooth):
    images = _tiny_set(make_smooth, count=10)
    images[3] = 0
    # Kept (min_ink=0): the zero-norm and singular-r guards handle it.
    result = run_rasl(images, max_iter=2, min_ink=0.0)
    assert result["kept_mask"].all()
    assert np.all(np.isfinite(result["transforms"])) and np.all(np.isfinite(result["aligned"]))
    guards = result["info"]["guards"]
    assert guards["zero_norm"] >= 1 and guards["singular_r"] >= 1
    np.testing.assert_array_equal(result["transforms"][3], np.eye(3))
    # Default: images with less than one white pixel of ink are left out.
    result = run_rasl(images, max_iter=2)
    assert result["kept_mask"].sum() == 9 and not result["kept_mask"][3]
    np.testing.assert_array_equal(result["transforms"][3], np.eye(3))
    np.testing.assert_array_equal(result["aligned"][3], 0.0)
    # The guards are removed again afterwards.
    assert importlib.import_module("rasl.jacobian").np is np
    assert importlib.import_module("rasl.inner").np is np


def test_unguarded_rasl_fails_on_a_blank_image(make_smooth):
    """Why the guards exist: rasl 0.1.0 alone fails on a blank image."""
    images = [image / 255.0 for image in _tiny_set(make_smooth, count=6)]
    images[2] = np.zeros_like(images[2])
    initial = [rasl.EuclideanTransform().inset(image.shape, 0) for image in images]
    with pytest.raises(np.linalg.LinAlgError), np.errstate(all="ignore"):
        importlib.import_module("rasl.rasl").rasl(images, initial, maxiter=1)


def test_rasl_rejects_bad_arguments(make_smooth):
    images = _tiny_set(make_smooth, count=4)
    with pytest.raises(ValueError, match="transform"):
        run_rasl(images, transform="homography")
    with pytest.raises(ValueError, match="max_iter"):
        run_rasl(images, max_iter=0)
    with pytest.raises(ValueError, match="resample"):
        run_rasl(images, resample="nearest")
