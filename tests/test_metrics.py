"""Tests of keras_congeal.metrics against values computed by hand."""

import numpy as np
import pytest

from keras_congeal.metrics import AlignmentMeter, ImageStats, apsnr, content_scale, ink_kept


def test_apsnr_two_pixels_by_hand():
    # Eq. (9): mean image 127.5; MSE = mean of (0 - 127.5)^2 and (255 - 127.5)^2
    # = 127.5^2; APSNR = 10 log10(255^2 / 127.5^2) = 10 log10(4) = 6.0206 dB.
    images = np.array([[[0]], [[255]]], np.uint8)
    assert apsnr(images) == pytest.approx(10 * np.log10(4.0), abs=1e-12)
    assert apsnr(images / 255.0) == pytest.approx(6.020599913279624, abs=1e-12)


def test_apsnr_small_set_by_hand():
    # Three 1x2 images; per pixel: (10, 40, 70) mean 40, squared deviations
    # 900 + 0 + 900; (0, 0, 90) mean 30, 900 + 900 + 3600.
    # MSE = (1800 + 5400) / (3 images * 2 pixels) = 1200.
    images = np.array([[[10, 0]], [[40, 0]], [[70, 90]]], np.uint8)
    expected = 10 * np.log10(255.0**2 / 1200.0)
    assert apsnr(images) == pytest.approx(expected, abs=1e-12)
    # Batch by batch (Chan's merge) gives the same as all at once.
    stats = ImageStats(255.0).update(images[:1]).update(images[1:])
    assert stats.mse() == pytest.approx(1200.0, abs=1e-9)
    np.testing.assert_allclose(stats.mean[0], [40.0, 30.0])
    np.testing.assert_allclose(stats.variance[0], [600.0, 1800.0])
    # Two meters of parts merged, whatever their data ranges: the same.
    merged = ImageStats(1.0).update(images[2:] / 255.0).merge(ImageStats(255.0).update(images[:2]))
    assert merged.count == 3 and merged.mse() == pytest.approx(1200.0, abs=1e-9)
    np.testing.assert_allclose(merged.mean[0], np.array([40.0, 30.0]) / 255.0)
    assert ImageStats().merge(ImageStats()).count == 0


def test_apsnr_of_identical_images_is_infinite():
    assert apsnr(np.full((4, 3, 3), 7, np.uint8)) == float("inf")


def test_image_stats_errors():
    with pytest.raises(ValueError, match="data_range > 0"):
        ImageStats(0)
    with pytest.raises(ValueError, match="No images were added"):
        ImageStats().mse()
    with pytest.raises(ValueError, match="differs from earlier images"):
        ImageStats().update(np.zeros((1, 2, 2))).update(np.zeros((1, 3, 3)))
    with pytest.raises(ValueError, match="differs from earlier images"):
        ImageStats().update(np.zeros((1, 2, 2))).merge(ImageStats().update(np.zeros((1, 3, 3))))


def test_content_scale_and_ink_by_hand():
    # src_from_dst scaling by 2 about the origin: the aligned content is the
    # input shrunk by 2 (each output pixel reads twice as far).
    zoom_out = np.diag([2.0, 2.0, 1.0])[None]
    np.testing.assert_allclose(content_scale(zoom_out, (9, 9)), [0.5])
    np.testing.assert_allclose(content_scale(np.eye(3)[None], (9, 9)), [1.0])
    assert ink_kept(np.ones((2, 3, 3)), np.full((2, 3, 3), 0.25)) == pytest.approx(0.25)
    assert np.isnan(ink_kept(np.zeros((1, 2, 2)), np.zeros((1, 2, 2))))


def test_image_stats_of_float32_match_float64():
    # Float32 batches are summed without a float64 copy: same statistics to
    # float32 rounding, merged batch by batch as in float64.
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(300, 7, 5, 1)).astype("float32")
    images[:, 0, 0] = 0.5  # a constant pixel: variance exactly 0
    fast = ImageStats(1.0).update(images[:120]).update(images[120:])
    exact = ImageStats(1.0).update(images[:120].astype("float64")).update(
        images[120:].astype("float64"))
    np.testing.assert_allclose(fast.mean, exact.mean, rtol=1e-12)
    np.testing.assert_allclose(fast.variance, exact.variance, rtol=1e-6, atol=1e-12)
    assert fast.variance[0, 0, 0] == 0.0
    assert fast.apsnr() == pytest.approx(exact.apsnr(), abs=1e-5)


def test_alignment_meters_merged_equal_one_meter():
    # Meters filled side by side (million's measuring threads) and merged
    # summarise as one meter fed everything.
    rng = np.random.default_rng(1)
    inputs = rng.uniform(size=(50, 6, 6, 1))
    aligned = rng.uniform(size=(50, 6, 6, 1)) * 0.8
    transforms = np.tile(np.diag([1.25, 1.25, 1.0]), (50, 1, 1))
    transforms[::2] = np.diag([2.0, 2.0, 1.0])
    whole = AlignmentMeter().update(inputs, aligned, transforms).summary()
    parts = [AlignmentMeter().update(inputs[s], aligned[s], transforms[s])
             for s in (slice(0, 20), slice(20, 45), slice(45, 50))]
    merged = parts[0].merge(parts[1]).merge(parts[2]).summary()
    assert merged.keys() == whole.keys()
    for key, value in whole.items():
        assert merged[key] == pytest.approx(value, rel=1e-12), key
    assert whole["images"] == 50
    assert whole["ink_kept"] == pytest.approx(aligned.sum() / inputs.sum(), rel=1e-12)
