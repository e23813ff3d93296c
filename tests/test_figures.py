"""Tests of keras_congeal.figures: Pillow-drawn PNGs of an alignment."""

import os

import numpy as np
import pytest
from PIL import Image

from keras_congeal.figures import mean_variance_figure, reference_figure, samples_figure
from keras_congeal.metrics import ImageStats


def _stats(images, data_range):
    return ImageStats(data_range).update(images)


@pytest.mark.parametrize("shape", [(20, 28, 28), (20, 28, 28, 3), (20, 200, 150)])
def test_mean_variance_figure(tmp_path, shape):
    rng = np.random.default_rng(0)
    before = rng.integers(0, 256, shape).astype(np.uint8)
    after = np.repeat(before[:1], len(before), axis=0)  # perfectly aligned: no variance
    path = mean_variance_figure(_stats(before, 255.0), _stats(after, 255.0),
                                str(tmp_path / "mv.png"), title="a title")
    assert os.listdir(tmp_path) == ["mv.png"]
    with Image.open(path) as image:
        assert image.format == "PNG" and image.mode == "RGB"
        # Two panels across, enlarged so that small images are visible.
        assert image.width > 2 * max(168, shape[2])
        assert image.height > 2 * max(168, shape[1])


def test_mean_variance_panels_show_the_images(tmp_path):
    # Inputs: half the images white, half black -> mean grey, variance max.
    before = np.zeros((10, 8, 8), np.float32)
    before[:5] = 1.0
    after = np.full((10, 8, 8), 1.0, np.float32)  # all white: mean white, variance 0
    path = mean_variance_figure(_stats(before, 1.0), _stats(after, 1.0), str(tmp_path / "mv.png"))
    pixels = np.asarray(Image.open(path).convert("L"))
    # The panels are the largest uniform squares; sample the middle of each
    # quadrant of the panel area (right of the row labels, under the headers).
    height, width = pixels.shape
    rows = [int(height * 0.35), int(height * 0.8)]
    columns = [int(width * 0.42), int(width * 0.8)]
    mean_before, mean_after = pixels[rows[0], columns[0]], pixels[rows[0], columns[1]]
    variance_before, variance_after = pixels[rows[1], columns[0]], pixels[rows[1], columns[1]]
    assert abs(int(mean_before) - 128) <= 1 and mean_after == 255
    assert variance_before == 255 and variance_after == 0


@pytest.mark.parametrize("dtype,channels", [(np.uint8, None), (np.float32, 3)])
def test_samples_figure(tmp_path, dtype, channels):
    shape = (20, 28, 28) + ((channels,) if channels else ())
    white = 255 if dtype == np.uint8 else 1.0
    inputs = np.full(shape, white, dtype)
    aligned = np.zeros(shape, dtype)
    path = samples_figure(inputs, aligned, str(tmp_path / "s.png"), n=9)
    pixels = np.asarray(Image.open(path).convert("L"))
    # 3x3 tiles of 28 px enlarged 3x per block: inputs white on the left, aligned black.
    assert pixels.shape[1] > 2 * 3 * 84
    left, right = pixels[:, : pixels.shape[1] // 2], pixels[:, pixels.shape[1] // 2:]
    assert (left == 255).sum() >= 9 * 84 * 84
    assert (right == 255).sum() < 500  # only the label text


def test_samples_figure_with_fewer_images_than_n(tmp_path):
    images = np.zeros((3, 10, 10), np.uint8)
    samples_figure(images, images, str(tmp_path / "s.png"), n=16)
    with pytest.raises(ValueError, match="at least one image"):
        samples_figure(images[:0], images[:0], str(tmp_path / "t.png"))
    assert os.listdir(tmp_path) == ["s.png"]


def test_reference_figure(tmp_path):
    reference = np.zeros((28, 28, 1), np.float32)
    reference[10:20, 10:20] = 1.0
    path = reference_figure(reference, str(tmp_path / "r.png"), label="reference: image 3")
    pixels = np.asarray(Image.open(path).convert("L"))
    assert (pixels == 255).sum() >= (10 * 6) ** 2  # the square, enlarged 6x


def test_failed_save_leaves_no_file(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise OSError("no space left on device")

    monkeypatch.setattr(Image.Image, "save", fail)
    with pytest.raises(OSError):
        reference_figure(np.zeros((8, 8)), str(tmp_path / "r.png"))
    assert os.listdir(tmp_path) == []
