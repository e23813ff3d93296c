"""Least-squares congealing baseline and the shared NumPy warp."""

import numpy as np
import pytest
from skimage.transform import warp as skimage_warp

from benchmarks.baselines._common import warp_bilinear
from benchmarks.baselines.lsc import choose_reference, params_to_offset_matrix, run_lsc

KEYS = {"aligned", "transforms", "kept_mask", "seconds", "iterations", "peak_memory_bytes",
        "max_rss_bytes", "method", "info"}


def _matrices(count, seed, linear=0.0, shift=0.0, perspective=0.0):
    """Random `src_from_dst` matrices about the image centre (13.5, 13.5)."""
    rng = np.random.default_rng(seed)
    about = np.array([[1, 0, 13.5], [0, 1, 13.5], [0, 0, 1.0]])
    matrices = np.tile(np.eye(3), (count, 1, 1))
    matrices[:, :2, :2] += rng.uniform(-linear, linear, (count, 2, 2))
    matrices[:, :2, 2] += rng.uniform(-shift, shift, (count, 2))
    matrices[:, 2, :2] += rng.uniform(-perspective, perspective, (count, 2))
    matrices = about @ matrices @ np.linalg.inv(about)
    matrices[0] = np.eye(3)  # image 0 is the unperturbed reference
    return matrices


def _points(matrices, points):
    mapped = matrices @ np.vstack([points, np.ones(points.shape[1])])
    return mapped[:, :2] / mapped[:, 2:3]


# Points spanning the content of the smooth test image (pixels (x, y)).
CONTENT = np.array([[8.0, 19.0, 8.0, 19.0, 13.5], [8.0, 8.0, 19.0, 19.0, 13.5]])


# === The warp ===


def test_warp_identity_returns_input(smooth):
    images = np.stack([smooth, 1.0 - smooth])
    np.testing.assert_array_equal(warp_bilinear(images, np.eye(3)), images)


def test_warp_one_pixel_translation_matches_hand_array():
    image = np.arange(12.0).reshape(1, 3, 4)
    # J(x, y) = I(x + 1, y): columns shift left, the last one reads zeros.
    expected = np.array([[[1, 2, 3, 0], [5, 6, 7, 0], [9, 10, 11, 0]]], dtype=float)
    matrix = np.array([[1, 0, 1.0], [0, 1, 0], [0, 0, 1]])
    np.testing.assert_array_equal(warp_bilinear(image, matrix), expected)
    # Half a pixel beyond the border: half the border value (zeros padding).
    matrix[0, 2] = 0.5
    assert warp_bilinear(image, matrix)[0, 0, 3] == pytest.approx(0.5 * image[0, 0, 3])


def test_warp_agrees_with_scikit_image(smooth):
    matrices = _matrices(6, seed=1, linear=0.2, shift=3.0, perspective=0.003)
    images = np.repeat(smooth[None], 6, axis=0)
    ours = warp_bilinear(images, matrices, chunk_size=4)
    theirs = np.stack([
        skimage_warp(image, matrix, order=1, mode="constant", cval=0.0, preserve_range=True)
        for image, matrix in zip(images, matrices, strict=True)
    ])
    np.testing.assert_allclose(ours, theirs, atol=1e-9)


def test_warp_degenerate_matrices_read_zeros(smooth):
    far = np.array([[1.0, 0, 1e300], [0, 1, 0], [0, 0, 1]])
    matrices = np.array([np.full((3, 3), np.nan), far, np.zeros((3, 3))])
    out = warp_bilinear(np.repeat(smooth[None], 3, axis=0), matrices)
    assert np.all(np.isfinite(out))
    np.testing.assert_array_equal(out[:2], 0.0)


def test_warp_rejects_bad_matrix_shape(smooth):
    with pytest.raises(ValueError, match="src_from_dst"):
        warp_bilinear(smooth[None], np.eye(3)[None].repeat(2, axis=0))


# === LSC recovers known misalignments ===


def test_lsc_recovers_translations(smooth):
    shifts = np.array([[0, 0], [1.5, -2.0], [-2.5, 1.0], [0.7, 2.2], [-1.2, -1.8]])
    truth = np.tile(np.eye(3), (len(shifts), 1, 1))
    truth[:, :2, 2] = shifts
    images = warp_bilinear(np.repeat(smooth[None], len(shifts), axis=0), truth)
    result = run_lsc(images, reference=0, transform="translation")
    # aligned(p) = images(A p) = smooth(truth A p): A should undo truth.
    np.testing.assert_allclose(result["transforms"][:, :2, 2], -shifts, atol=0.05)
    np.testing.assert_allclose(result["transforms"][:, :2, :2], np.tile(np.eye(2), (5, 1, 1)))


@pytest.mark.parametrize("transform, tolerance", [("affine", 0.1), ("homography", 0.15)])
def test_lsc_recovers_affine_misalignment(smooth, transform, tolerance):
    truth = _matrices(12, seed=0, linear=0.06, shift=1.5)
    images = warp_bilinear(np.repeat(smooth[None], 12, axis=0), truth)
    result = run_lsc(images, reference=0, transform=transform)
    recovered = _points(truth @ result["transforms"], CONTENT)
    error = np.abs(recovered - CONTENT).max()
    assert error < tolerance, f"content points off by {error:.3f} px"
    # Bilinear resampling twice blurs a little: compare with the misalignment.
    assert np.abs(result["aligned"] - smooth).mean() < 0.25 * np.abs(images - smooth).mean()


def test_lsc_result_keys_and_convention(smooth):
    truth = _matrices(8, seed=3, linear=0.05, shift=1.0)
    images = (255 * warp_bilinear(np.repeat(smooth[None], 8, axis=0), truth)).astype(np.uint8)
    result = run_lsc(images, transform="similarity", iterations=10, trace_memory=True)
    assert KEYS <= set(result)
    assert result["aligned"].shape == images.shape and result["aligned"].dtype == np.float64
    assert result["transforms"].shape == (8, 3, 3) and result["transforms"].dtype == np.float64
    assert result["kept_mask"].all() and result["method"] == "lsc"
    assert result["peak_memory_bytes"] > 0 and result["seconds"] > 0
    # In the input's range (uint8: 0..255), not rescaled.
    assert 100 < result["aligned"].max() <= 255
    # Warping the input by the returned matrices with an independent warp
    # reproduces `aligned`.
    independent = np.stack([
        skimage_warp(image.astype(float), matrix, order=1, mode="constant", cval=0.0,
                     preserve_range=True)
        for image, matrix in zip(images, result["transforms"], strict=True)
    ])
    np.testing.assert_allclose(result["aligned"], independent, atol=1e-9)
    # Similarity matrices stay similarities: [[a, -b], [b, a]].
    linear = result["transforms"][:, :2, :2]
    np.testing.assert_allclose(linear[:, 0, 0], linear[:, 1, 1], atol=1e-12)
    np.testing.assert_allclose(linear[:, 0, 1], -linear[:, 1, 0], atol=1e-12)


def test_lsc_residual_does_not_increase_within_a_level(smooth):
    truth = _matrices(10, seed=5, linear=0.08, shift=2.0)
    images = warp_bilinear(np.repeat(smooth[None], 10, axis=0), truth)
    result = run_lsc(images, reference=0, transform="affine", iterations=15)
    for level in result["info"]["mean_squared_residual"]:
        assert np.all(np.diff(level) <= 1e-12)


def test_lsc_update_reference_rounds(smooth):
    truth = _matrices(10, seed=7, linear=0.03, shift=1.0)
    images = warp_bilinear(np.repeat(smooth[None], 10, axis=0), truth)
    result = run_lsc(images, reference="mean", transform="affine", rounds=2,
                     update_reference=True, iterations=10)
    assert len(result["info"]["levels"]) == 2 * 3
    before = np.mean((images - images.mean(axis=0)) ** 2)
    after = np.mean((result["aligned"] - result["aligned"].mean(axis=0)) ** 2)
    assert after < 0.5 * before
    with pytest.raises(ValueError, match="rounds >= 2"):
        run_lsc(images, update_reference=True)


def test_lsc_zero_image_does_not_crash(smooth):
    images = np.stack([smooth, np.zeros_like(smooth), smooth])
    result = run_lsc(images, transform="homography", iterations=3)
    assert np.all(np.isfinite(result["transforms"]))
    np.testing.assert_array_equal(result["aligned"][1], 0.0)


# === Reference choice and arguments ===


def test_choose_reference_strategies(smooth):
    images = np.stack([smooth, np.zeros_like(smooth), 0.9 * smooth, np.roll(smooth, 6, axis=1)])
    # A blank image is the closest in L1 to a blurred mean; it is skipped.
    template, index = choose_reference(images)
    assert index == 2 and np.array_equal(template, images[2])
    assert choose_reference(images, -1)[1] == 3
    template, index = choose_reference(images, "mean")
    assert index is None and np.allclose(template, images.mean(axis=0))
    template, index = choose_reference(images, smooth[..., None])
    assert index is None and template.shape == smooth.shape
    with pytest.raises(ValueError, match="out of range"):
        choose_reference(images, 4)
    with pytest.raises(ValueError, match="reference"):
        choose_reference(images, "medoid")
    with pytest.raises(ValueError, match="shape"):
        choose_reference(images, np.zeros((5, 5)))


def test_params_to_offset_matrix_layout():
    np.testing.assert_array_equal(
        params_to_offset_matrix(np.array([[0.1, 0.2, 3.0, 4.0]]), "similarity")[0],
        [[1.1, -0.2, 3.0], [0.2, 1.1, 4.0], [0, 0, 1]],
    )
    np.testing.assert_array_equal(
        params_to_offset_matrix(np.arange(8.0)[None], "homography")[0],
        [[1, 1, 2], [3, 5, 5], [6, 7, 1]],
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"transform": "euclidean"}, "transform"),
        ({"iterations": 0}, "iterations"),
        ({"blur_sigmas": (1.0, -1.0)}, "blur_sigmas"),
        ({"init": np.eye(3)}, "init"),
        ({"step_halvings": -1}, "step_halvings"),
    ],
)
def test_lsc_rejects_bad_arguments(smooth, kwargs, match):
    with pytest.raises(ValueError, match=match):
        run_lsc(np.stack([smooth, smooth]), **kwargs)


def test_lsc_rejects_bad_images():
    with pytest.raises(ValueError, match="shape"):
        run_lsc(np.zeros((4, 28)))
    with pytest.raises(ValueError, match="NaN"):
        run_lsc(np.full((2, 8, 8), np.nan))
