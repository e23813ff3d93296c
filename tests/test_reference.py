"""The automatic reference: typical ink, whole content, a warning when atypical."""

import warnings

import numpy as np
import pytest

from keras_congeal.reference import ReferenceWarning, border_ink, choose_reference


def _sevens(n_cut, n_whole, size=28, seed=0):
    """'7's: a bar and a stem. The first `n_cut` have their bar pushed out of the
    frame (what is left is a stem: a '1'); the others are whole, shifted a little."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n_cut + n_whole, size, size, 1), np.float32)
    for i in range(len(images)):
        dx, dy = rng.integers(-2, 3, size=2)
        top = -3 if i < n_cut else 6 + dy  # bar rows top..top+2
        for row in range(max(top, 0), top + 3):
            images[i, row, 8 + dx:20 + dx] = 1.0
        images[i, max(top, 0):22 + dy, 17 + dx:20 + dx] = 1.0  # the stem
    return images


@pytest.mark.parametrize("strategy", ["medoid", "mean"])
def test_reference_content_is_whole(strategy):
    images = _sevens(n_cut=60, n_whole=40)
    assert (border_ink(images[:60]) > 0.02).all() and (border_ink(images[60:]) == 0).all()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ReferenceWarning)
        reference, index = choose_reference(images, strategy)
    assert index >= 60, index  # a whole 7, not a cut one (the cut ones are the majority)
    np.testing.assert_array_equal(reference, images[index])


def test_no_background_excludes_nothing():
    # Photos: content up to the border in every image; the choice is the plain medoid.
    rng = np.random.default_rng(1)
    images = rng.uniform(0.2, 1.0, size=(40, 16, 16, 3)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ReferenceWarning)
        _, index = choose_reference(images, "medoid")
    flat = images.reshape(40, -1)
    totals = np.abs(flat[:, None] - flat[None]).sum(axis=(1, 2))
    assert index == int(np.argmin(totals))


def test_atypical_reference_warns():
    # Only 3 whole images among 97 cut ones, and unlike the rest: the best whole
    # one is farther from the set than most images.
    images = _sevens(n_cut=97, n_whole=3)
    with pytest.warns(ReferenceWarning, match=r"farther from the set than \d+% .* --reference"):
        _, index = choose_reference(images, "medoid")
    assert index >= 97
