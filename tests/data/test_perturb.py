import inspect

import numpy as np
import pytest
from skimage.transform import ProjectiveTransform
from skimage.transform import warp as skimage_warp

from keras_congeal.data import (
    affnist_like,
    homography_from_corners,
    infimnist_like,
    iter_infimnist_like,
    iter_perspective_perturbation,
    oracle_align,
    perspective_perturbation,
)

CORNERS = np.array([[0.0, 0.0], [27.0, 0.0], [27.0, 27.0], [0.0, 27.0]])


def _map(matrix, points):
    homogeneous = np.concatenate([points, np.ones_like(points[:, :1])], axis=1)
    mapped = homogeneous @ matrix.T
    return mapped[:, :2] / mapped[:, 2:]


def _smooth_images(n):
    """Smooth float images, for which bilinear resampling is nearly exact."""
    y, x = np.mgrid[0:28, 0:28].astype(np.float64)
    phase = np.arange(n)[:, None, None]
    return (120 + 60 * np.sin(x / 5 + phase) * np.cos(y / 6 - phase)).astype(np.float32)


def _skimage(image, src_from_dst):
    # skimage's inverse_map maps output (col, row) to input (col, row): the
    # same (x, y) and direction as keras_congeal's `src_from_dst`.
    return skimage_warp(
        image.astype(np.float64),
        ProjectiveTransform(matrix=src_from_dst),
        order=1,
        mode="constant",
        cval=0.0,
        preserve_range=True,
    )


# === homography_from_corners ===


def test_homography_hand_cases():
    np.testing.assert_allclose(homography_from_corners(CORNERS, CORNERS)[0], np.eye(3), atol=1e-12)
    shifted = homography_from_corners(CORNERS, CORNERS + [2.0, -1.0])[0]
    np.testing.assert_allclose(shifted, [[1, 0, 2], [0, 1, -1], [0, 0, 1]], atol=1e-12)
    doubled = homography_from_corners(CORNERS, 2 * CORNERS)[0]
    np.testing.assert_allclose(doubled, np.diag([2.0, 2.0, 1.0]), atol=1e-12)


def test_homography_maps_the_corners():
    moved = CORNERS + np.array([[1.5, -2.0], [-3.0, 0.5], [2.5, 4.0], [-1.0, -0.5]])
    matrix = homography_from_corners(CORNERS, moved)[0]
    assert matrix[2, 2] == 1.0 and abs(matrix[2, 0]) > 1e-4  # a true homography
    np.testing.assert_allclose(_map(matrix, CORNERS), moved, atol=1e-9)


def test_homography_degenerate():
    with pytest.raises(ValueError, match="collinear"):
        homography_from_corners(CORNERS, np.zeros((4, 2)))


# === perspective_perturbation ===


def test_sigma_zero_is_identity(make_digits):
    images = make_digits(5, 0)
    perturbed, matrices = perspective_perturbation(images, 0.0)
    assert perturbed.dtype == np.uint8
    np.testing.assert_array_equal(perturbed, images)
    np.testing.assert_array_equal(matrices, np.tile(np.eye(3), (5, 1, 1)))


def test_protocol_corner_noise():
    """Corners move by N(0, (sigma s)^2) each plus a shared N(0, (sigma s)^2) shift."""
    images = np.zeros((1000, 28, 28), np.uint8)
    sigma, seed = 0.1, 7
    _, matrices = perspective_perturbation(images, sigma, seed=seed)
    noise = np.random.default_rng(seed).standard_normal((1000, 10)) * sigma * 28
    expected = CORNERS + noise[:, :8].reshape(-1, 4, 2) + noise[:, None, 8:]
    moved = np.stack([_map(m, CORNERS) for m in matrices])
    np.testing.assert_allclose(moved, expected, atol=1e-8)
    # Distribution: each coordinate has variance 2 (sigma s)^2, and two
    # corners are correlated by 1/2 (the shared translation).
    displacement = (moved - CORNERS).reshape(-1, 8)
    np.testing.assert_allclose(displacement.std(axis=0), np.sqrt(2) * 2.8, rtol=0.1)
    correlation = np.corrcoef(displacement[:, 0], displacement[:, 2])[0, 1]
    assert abs(correlation - 0.5) < 0.1


def test_matches_skimage_warp(make_digits):
    images = make_digits(8, 1).astype(np.float32)
    perturbed, matrices = perspective_perturbation(images, 0.1, seed=3)
    assert perturbed.dtype == np.float32
    for image, result, matrix in zip(images, perturbed, matrices, strict=True):
        np.testing.assert_allclose(result, _skimage(image, matrix), atol=0.05)
    # uint8 in, uint8 out: the same warp, rounded.
    as_uint8, _ = perspective_perturbation(images.astype(np.uint8), 0.1, seed=3)
    assert as_uint8.dtype == np.uint8
    assert np.abs(as_uint8.astype(np.float32) - perturbed).max() <= 0.5 + 1e-3


def test_channels_last_input(make_digits):
    images = make_digits(8, 2)
    perturbed, matrices = perspective_perturbation(images[..., None], 0.2, seed=1)
    flat, flat_matrices = perspective_perturbation(images, 0.2, seed=1)
    assert perturbed.shape == (8, 28, 28, 1)
    np.testing.assert_array_equal(perturbed[..., 0], flat)
    np.testing.assert_array_equal(matrices, flat_matrices)


def test_reproducible_and_chunk_independent(make_digits):
    images = make_digits(8, 3)
    first = perspective_perturbation(images, 0.2, seed=5)
    again = perspective_perturbation(images, 0.2, seed=5, chunk_size=4)
    np.testing.assert_array_equal(first[1], again[1])
    np.testing.assert_array_equal(first[0], again[0])
    other = perspective_perturbation(images, 0.2, seed=6)
    assert not np.allclose(first[1], other[1])
    # A Generator continues its stream across calls.
    rng = np.random.default_rng(5)
    parts = [perspective_perturbation(part, 0.2, rng) for part in (images[:4], images[4:])]
    np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), first[1])
    chunks = list(iter_perspective_perturbation(images, 0.2, seed=5, chunk_size=4))
    assert [len(c[0]) for c in chunks] == [4, 4]
    np.testing.assert_array_equal(np.concatenate([c[0] for c in chunks]), first[0])


@pytest.mark.parametrize(
    "images, sigma, match",
    [(np.zeros((2, 28, 28)), -0.1, "sigma"), (np.zeros((28, 28)), 0.1, "shape")],
)
def test_perspective_errors(images, sigma, match):
    with pytest.raises(ValueError, match=match):
        perspective_perturbation(images, sigma)


# === oracle_align ===


def test_oracle_one_pixel_translation():
    image = np.zeros((1, 4, 5), np.float32)
    image[0, 1, 2] = 10.0
    # perturbed(p) = original(p + (1, 0)): undoing it moves the dot right by one.
    translation = np.array([[[1.0, 0, 1], [0, 1, 0], [0, 0, 1]]])
    expected = np.zeros((1, 4, 5), np.float32)
    expected[0, 1, 3] = 10.0
    np.testing.assert_allclose(oracle_align(image, translation), expected, atol=1e-6)


def test_oracle_recovers_uncropped_interior():
    images = _smooth_images(8)
    perturbed, matrices = perspective_perturbation(images, 0.1, seed=2)
    aligned = oracle_align(perturbed, matrices, chunk_size=4)
    assert aligned.dtype == np.float32 and aligned.shape == images.shape
    # Valid away from the original's border (where the first warp blended
    # with the zero padding) and where the point sampled in the perturbed
    # frame lies inside it (elsewhere the ink was cropped).
    y, x = np.mgrid[0:28, 0:28].reshape(2, -1).astype(np.float64)
    interior = np.all((np.stack([x, y], axis=1) >= 2) & (np.stack([x, y], axis=1) <= 25), axis=1)
    for original, result, matrix in zip(images, aligned, matrices, strict=True):
        back = _map(np.linalg.inv(matrix), np.stack([x, y], axis=1))
        inside = (np.all((back >= 0.5) & (back <= 26.5), axis=1) & interior).reshape(28, 28)
        assert inside.sum() > 200
        np.testing.assert_allclose(result[inside], original[inside], atol=4.0)


def test_oracle_errors():
    with pytest.raises(ValueError, match="one matrix per image"):
        oracle_align(np.zeros((2, 28, 28)), np.zeros((3, 3, 3)))


# === affnist_like ===


def test_affnist_like(make_digits):
    images = make_digits(64, 4)
    images[:, 4:24, 4:24] = np.maximum(images[:, 4:24, 4:24], 30)  # a full 20x20 box of ink
    out, matrices = affnist_like(images, seed=0)
    assert out.shape == (64, 40, 40) and out.dtype == np.uint8
    assert matrices.shape == (64, 3, 3) and matrices.dtype == np.float64
    # The ink stays inside the frame: nothing on its outermost rows/columns,
    # and the ink box's corners land 2 px inside (3 px would be too much
    # for some draws: the translation uses the room there is).
    assert out[:, [0, -1], :].max() == 0 and out[:, :, [0, -1]].max() == 0
    box = np.array([[10.0, 10], [29, 10], [29, 29], [10, 29]])  # padded frame
    landed = np.stack([_map(np.linalg.inv(m), box) for m in matrices])
    assert landed.min() >= 2 - 1e-9 and landed.max() <= 37 + 1e-9
    # The linear part: determinant = x scale * y scale in [0.64, 1.44];
    # translations vary.
    det = np.linalg.det(np.linalg.inv(matrices)[:, :2, :2])
    assert det.min() >= 0.64 and det.max() <= 1.44 and det.std() > 0.05
    assert np.linalg.inv(matrices)[:, :2, 2].std(axis=0).min() > 1.0
    # The oracle brings back the padded digit.
    padded = np.pad(images, ((0, 0), (6, 6), (6, 6))).astype(np.float32)
    error = np.abs(oracle_align(out, matrices) - padded)
    assert error.mean() < 6.0
    again, _ = affnist_like(images, seed=0, chunk_size=32)
    np.testing.assert_array_equal(again, out)


# === infimnist_like ===


def test_infimnist_shapes_and_translation(make_digits):
    images = make_digits(8, 5)
    out, matrices = infimnist_like(images, seed=0)
    assert out.shape == images.shape and out.dtype == np.uint8
    assert not np.array_equal(out, images)
    np.testing.assert_array_equal(matrices[:, :2, :2], np.tile(np.eye(2), (8, 1, 1)))
    shift = matrices[:, :2, 2]
    assert np.abs(shift).max() <= 2.0 and shift.std() > 0.5
    # Without field and thickening, it is exactly the translation P.
    moved, same = infimnist_like(images.astype(np.float32), seed=0, alpha=0, thickening_prob=0)
    np.testing.assert_array_equal(same, matrices)
    for image, result, matrix in zip(images, moved, matrices, strict=True):
        np.testing.assert_allclose(result, _skimage(image, matrix), atol=0.05)
    # With nothing random, it is the identity.
    still, _ = infimnist_like(images, alpha=0, thickening_prob=0, max_shift=0)
    np.testing.assert_array_equal(still, images)


def test_infimnist_thickening_changes_ink(make_digits):
    images = make_digits(8, 6)
    out, _ = infimnist_like(images, alpha=0, thickening_prob=1, max_shift=0)
    ratio = out.sum(axis=(1, 2)) / images.sum(axis=(1, 2))
    assert ratio.min() < 0.9 and ratio.max() > 1.1  # both thinned and thickened


def test_infimnist_displacements_smooth_and_small():
    # An image holding its own coordinates reads back the displacement:
    # output(p) = ramp(p + d(p)) = p + d(p), exactly under bilinear sampling.
    y, x = np.mgrid[0:28, 0:28].astype(np.float32)
    ramps = np.tile(np.stack([x, y], axis=-1), (8, 1, 1, 1))
    out, _ = infimnist_like(ramps, seed=1, alpha=1.5, sigma=4.0, thickening_prob=0, max_shift=0)
    field = (out - ramps)[:, 6:-6, 6:-6]  # far from the border
    rms = np.sqrt(np.mean(field**2))
    assert 1.0 < rms < 2.0 and np.abs(field).max() < 7.5
    # Smooth: neighbours differ much less than the field varies (white noise
    # would give a ratio of sqrt(2); a Gaussian of 4 px about 0.18).
    step = np.concatenate([np.diff(field, axis=1).ravel(), np.diff(field, axis=2).ravel()])
    assert np.std(step) / np.std(field) < 0.3


def test_infimnist_reproducible(make_digits):
    images = make_digits(8, 7)
    first = infimnist_like(images, seed=3)
    again = infimnist_like(images, seed=3, chunk_size=4)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    with pytest.raises(ValueError, match="sigma > 0"):
        infimnist_like(images, sigma=0)


def test_iter_infimnist_takes_the_same_arguments(make_digits):
    images = make_digits(9, 7)
    assert inspect.signature(iter_infimnist_like) == inspect.signature(infimnist_like)
    # Positional arguments in the signature's order: seed, alpha, sigma,
    # thickening_prob, max_shift, chunk_size.
    whole, matrices = infimnist_like(images, 5, 1.0, 3.0, 1.0, 1.0, 4)
    chunks = list(iter_infimnist_like(images, 5, 1.0, 3.0, 1.0, 1.0, 4))
    assert [len(chunk) for chunk, _ in chunks] == [4, 4, 1]
    np.testing.assert_array_equal(np.concatenate([c for c, _ in chunks]), whole)
    np.testing.assert_array_equal(np.concatenate([m for _, m in chunks]), matrices)
    # Defaults come from the one signature: alpha=1.5 differs from alpha=1.0.
    default, _ = infimnist_like(images, 5, thickening_prob=1.0, max_shift=1.0, sigma=3.0)
    first, _ = next(
        iter_infimnist_like(
            images, seed=5, thickening_prob=1.0, max_shift=1.0, sigma=3.0, chunk_size=9
        )
    )
    np.testing.assert_array_equal(first, default)
    assert not np.array_equal(default, whole)
    with pytest.raises(TypeError, match="alpah"):
        iter_infimnist_like(images, alpah=1.0)
    with pytest.raises(ValueError, match="thickening_prob"):
        iter_infimnist_like(images, thickening_prob=2.0)


@pytest.mark.data
def test_real_mnist_oracle(mnist_dir):
    from keras_congeal.data import mnist_digit_subset

    threes = mnist_digit_subset(3, 64, path=mnist_dir)
    perturbed, matrices = perspective_perturbation(threes, 0.1)
    aligned = oracle_align(perturbed, matrices)
    before = np.abs(perturbed.astype(np.float32) - threes).mean()
    after = np.abs(aligned - threes).mean()
    assert after < 0.5 * before
