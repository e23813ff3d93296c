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


def test_an_image_file_is_a_reference(tmp_path):
    """`reference` as a path works from Python too, not only from the CLI."""
    from PIL import Image

    from keras_congeal.io import InputError

    images = np.random.default_rng(0).random((5, 12, 10, 1)).astype("float32")
    pixels = np.arange(120, dtype=np.uint8).reshape(12, 10) * 2
    Image.fromarray(pixels).save(tmp_path / "ref.png")
    reference, index = choose_reference(images, str(tmp_path / "ref.png"))
    assert index is None and reference.shape == (12, 10, 1) and reference.dtype == np.float32
    np.testing.assert_allclose(reference[..., 0], pixels / 255.0, atol=1e-7)
    reference, _ = choose_reference(images, tmp_path / "ref.png")  # a Path works too
    with pytest.raises(InputError, match=r"nope\.png: no such image file"):
        choose_reference(images, str(tmp_path / "nope.png"))
    with pytest.raises(InputError, match=r"ref\.png: 10x12 pixels, but the images are 9x12"):
        choose_reference(images[:, :, :9], str(tmp_path / "ref.png"))


def test_fit_congealer_takes_a_reference_file(tmp_path):
    from PIL import Image

    from keras_congeal.training import CongealSettings, fit_congealer

    images = (np.random.default_rng(1).random((16, 28, 28)) * 255).astype(np.uint8)
    Image.fromarray(images[3]).save(tmp_path / "face.png")
    settings = CongealSettings(reference=str(tmp_path / "face.png"), epochs=1, batch_size=8)
    model, _ = fit_congealer(images, settings, monitor_size=0, verbose=0)
    np.testing.assert_allclose(np.asarray(model.reference)[..., 0], images[3] / 255.0,
                               atol=1e-6)
