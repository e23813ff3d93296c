import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from skimage.transform import ProjectiveTransform
from skimage.transform import warp as skimage_warp

from keras_congeal.layers import DeSTNet, PenalisedAutoencoder
from keras_congeal.metrics import apsnr, content_scale
from keras_congeal.models import Congealer
from keras_congeal.ops import filters
from tests.conftest import REPO, in_the_pass_of


def blobs(n=64, size=16, max_shift=2.5, seed=0):
    """A Gaussian blob shifted by known random translations."""
    rng = np.random.default_rng(seed)
    shifts = rng.uniform(-max_shift, max_shift, size=(n, 2))
    y, x = np.mgrid[0:size, 0:size].astype("float64")
    c = (size - 1) / 2
    images = np.exp(-(((x[None] - c - shifts[:, 0, None, None]) ** 2)
                      + ((y[None] - c - shifts[:, 1, None, None]) ** 2)) / (2 * 2.0**2))
    return images[..., None].astype("float32"), shifts


def small_congealer(reference, transform="translation", objective="D+C", **kwargs):
    aligner = DeSTNet(transform=transform, num_stages=2, localisation=[[3, 8, 1], [1, 8, 1]],
                      fusion_units=16, name="aligner")
    autoencoder = PenalisedAutoencoder(code_size=4, encoder_convs=[[3, 8], [3, 8]],
                                       dense_units=[32], bottleneck_channels=2)
    return Congealer(aligner, autoencoder, reference, objective=objective, **kwargs)


def test_losses_at_the_identity_start():
    images, _ = blobs(8)
    reference = images[0]
    model = small_congealer(reference, ink_weight=0.5, lam=2.0)
    out = model(images)
    # The regressors start at zero: the first warp is the identity.
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(out["aligned"]), images)
    assert len(model.losses) == 3  # D, ink, C
    distortion = np.abs(images - reference).mean()
    np.testing.assert_allclose(float(model.losses[0]), distortion, rtol=1e-5)
    np.testing.assert_allclose(float(model.losses[1]), 0.0, atol=1e-6)
    complexity = keras.ops.convert_to_numpy(out["complexity"]).mean()
    np.testing.assert_allclose(float(model.losses[2]), 2.0 * complexity, rtol=1e-5)


@pytest.mark.parametrize("objective,ink,count", [("D", 1.0, 2), ("C", 1.0, 2), ("D+C", 0.0, 2)])
def test_objectives_add_their_losses(objective, ink, count):
    images, _ = blobs(4)
    model = small_congealer(images[0], objective=objective, ink_weight=ink)
    model(images)
    assert len(model.losses) == count
    assert (model.autoencoder is None) == (objective == "D")


def test_fit_recovers_known_translations():
    images, shifts = blobs(64, seed=1)
    reference, _ = blobs(1, max_shift=0.0)
    keras.utils.set_random_seed(0)
    model = small_congealer(reference[0], objective="D", ink_weight=0.0)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    history = model.fit(images, batch_size=16, epochs=25, verbose=0)
    assert {"distortion", "ink", "loss"} <= set(history.history)
    result = model.align(images)
    # src_from_dst translation = the blob's shift (the aligned blob is centred).
    recovered = result["transforms"][:, :2, 2]
    assert np.abs(recovered - shifts).mean() < 0.5, np.abs(recovered - shifts).mean()
    assert apsnr(result["aligned"], 1.0) > apsnr(images, 1.0) + 5


FACE_DISTORTION = dict(distortion_features="local-contrast", distortion_target="batch-mean",
                       distortion_window=0.3)


def test_local_contrast_distortion_to_the_batch_mean_by_hand():
    rng = np.random.default_rng(4)
    images = rng.uniform(size=(3, 16, 16, 3)).astype("float32")
    model = small_congealer(images[0], objective="D", ink_weight=0.0, **FACE_DISTORTION)
    out = model(images)
    # Features: local contrast at 1/16, 1/32, 1/64 of the width (1, 0.5, 0.25 px),
    # window 1 px; target: their batch mean; squared error weighted by a
    # Gaussian window of sigma 0.3 x side, mean 1.
    features = np.concatenate(
        [keras.ops.convert_to_numpy(filters.local_contrast(images, 16 * s, 1.0))
         for s in (1 / 16, 1 / 32, 1 / 64)], axis=-1).astype("float64")
    y, x = np.mgrid[0:16, 0:16]
    window = np.exp(-0.5 * (((x - 7.5) / 16) ** 2 + ((y - 7.5) / 16) ** 2) / 0.09)
    window /= window.mean()
    squared = (features - features.mean(axis=0)) ** 2 * window[None, :, :, None]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(out["distortion"]),
                               squared.mean(axis=(1, 2, 3)), rtol=1e-4)
    # Identical images: nothing to align, no distortion.
    same = model(np.repeat(images[:1], 4, axis=0))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(same["distortion"]), 0.0, atol=1e-6)


def test_centring_penalty_is_the_squared_mean_parameter():
    images, _ = blobs(4)
    model = small_congealer(images[0], transform="similarity", objective="D", ink_weight=0.0,
                            centring_weight=10.0)
    model(images)
    bias = np.array([0.1, -0.2, 0.05, 0.3], "float32")
    model.aligner.fusions[-1].regressor.bias.assign(bias)
    model(images)
    assert len(model.losses) == 2  # D, centring
    np.testing.assert_allclose(float(model.losses[1]), 10.0 * np.sum(bias.astype("float64")**2),
                               rtol=1e-5)


def test_face_distortion_recovers_translations_under_changing_contrast():
    # Blobs shifted by known amounts, each under its own gain: the
    # local-contrast distortion to the batch mean aligns them with no
    # reference image, and the centring keeps the set's mean shift at zero.
    # The same target in raw pixels does not.
    images, shifts = blobs(64, size=32, max_shift=4.0, seed=5)
    images = (np.random.default_rng(6).uniform(0.3, 1.0, (64, 1, 1, 1)) * images)
    images = images.astype("float32")
    errors = {}
    for features in ("local-contrast", "pixels"):
        keras.utils.set_random_seed(0)
        model = small_congealer(images[0], objective="D", ink_weight=0.0, centring_weight=10.0,
                                **{**FACE_DISTORTION, "distortion_features": features})
        model.compile(optimizer=keras.optimizers.Adam(3e-3))
        model.fit(images, batch_size=32, epochs=30, verbose=0)
        recovered = model.align(images)["transforms"][:, :2, 2]
        # Joint alignment recovers the shifts up to one common translation.
        errors[features] = np.abs((recovered - recovered.mean(0))
                                  - (shifts - shifts.mean(0))).mean()
    assert errors["local-contrast"] < 0.5 < errors["pixels"], errors


def test_align_transforms_reproduce_aligned_images():
    rng = np.random.default_rng(2)
    images = rng.random((5, 16, 16, 1)).astype("float32")
    model = small_congealer(images[0], transform="homography")
    model(images)
    for fusion in model.aligner.fusions:
        kernel = fusion.regressor.kernel
        kernel.assign(rng.normal(size=kernel.shape).astype("float32") * 0.02)
    result = model.align(images, batch_size=2)
    assert result["aligned"].shape == images.shape
    assert result["transforms"].shape == (5, 3, 3) and result["transforms"].dtype == np.float64
    assert not np.allclose(result["transforms"], np.eye(3))
    x, y = np.meshgrid(np.arange(16.0), np.arange(16.0))
    for i in range(5):
        t = result["transforms"][i]
        theirs = skimage_warp(images[i, ..., 0].astype("float64"), ProjectiveTransform(matrix=t),
                              order=1, mode="constant", cval=0.0)
        src = t @ np.stack([x.ravel(), y.ravel(), np.ones(x.size)])
        sx, sy = (src[:2] / src[2]).reshape(2, 16, 16)
        inside = (sx >= 0) & (sx <= 15) & (sy >= 0) & (sy <= 15)
        np.testing.assert_allclose(result["aligned"][i, ..., 0][inside], theirs[inside], atol=1e-4)


def test_align_takes_integer_images_as_their_unit_floats():
    # uint8/uint16 images are scaled on the device: the same result as the
    # caller's own division, a padded last batch included.
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, size=(5, 16, 16, 1)).astype("uint8")
    model = small_congealer(images[0] / 255.0, transform="affine")
    model(images.astype("float32") / 255.0)
    for fusion in model.aligner.fusions:
        kernel = fusion.regressor.kernel
        kernel.assign(rng.normal(size=kernel.shape).astype("float32") * 0.02)
    expected = model.align(images.astype("float32") / np.float32(255.0), batch_size=2)
    assert not np.allclose(expected["transforms"], np.eye(3))
    for dtype, white in (("uint8", 1), ("uint16", 257)):  # 255 * 257 = 65535
        result = model.align(images.astype(dtype) * np.array(white, dtype), batch_size=2)
        assert result["aligned"].dtype == np.float32
        # XLA may fuse the scaling into the warp and round differently: a few
        # ulps (1e-6 was exceeded once by 7e-8 on JAX); a wrong white value
        # would differ by orders of magnitude more.
        np.testing.assert_allclose(result["aligned"], expected["aligned"], atol=1e-5)
        np.testing.assert_allclose(result["transforms"], expected["transforms"], atol=1e-5)
    with pytest.raises(ValueError, match="Unsupported image dtype int8"):
        model.align(images.astype("int8"))


def test_pixel_transforms_at_another_resolution():
    images = np.zeros((1, 16, 16, 1), "float32")
    model = small_congealer(images[0], transform="affine")
    params = np.array([[0.1, 0.0, 0.2, 0.0, -0.1, -0.3]], "float32")
    small = model.pixel_transforms(params)[0]
    large = model.pixel_transforms(params, (31, 31), (31, 31))[0]
    scale = np.diag([2.0, 2.0, 1.0])  # (31 - 1) / (16 - 1)
    np.testing.assert_allclose(large, scale @ small @ np.linalg.inv(scale), atol=1e-5)


def test_bad_inputs_raise_clear_errors():
    images, _ = blobs(4)
    model = small_congealer(images[0])
    with pytest.raises(ValueError, match=r"Expected images of shape \(batch, 16, 16, 1\)"):
        model.align(np.zeros((2, 20, 20, 1), "float32"))
    bad = images.copy()
    bad[1, 3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        model.align(bad)
    with pytest.raises(ValueError, match="empty"):
        model.align(np.zeros((0, 16, 16, 1), "float32"))
    with pytest.raises(ValueError, match="Unknown objective"):
        small_congealer(images[0], objective="C+D")
    with pytest.raises(ValueError, match="Unknown distortion_features='edges'"):
        small_congealer(images[0], distortion_features="edges")
    with pytest.raises(ValueError, match="Unknown distortion_target"):
        small_congealer(images[0], distortion_target="median")
    with pytest.raises(ValueError, match="needs an `autoencoder`"):
        Congealer(DeSTNet(), None, images[0], objective="D+C")
    with pytest.raises(ValueError, match="`reference`"):
        small_congealer(np.zeros((2, 16, 16, 1)))


def test_save_load_round_trip(tmp_path):
    images, _ = blobs(6)
    model = small_congealer(images[3], transform="similarity", distortion_blur=1.0,
                            centring_weight=2.0, **FACE_DISTORTION)
    model(images)
    for w in model.aligner.trainable_weights:
        w.assign(np.random.default_rng(3).normal(size=w.shape).astype("float32") * 0.02)
    path = tmp_path / "congealer.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.aligner.get_config() == model.aligner.get_config()
    assert loaded.autoencoder.get_config() == model.autoencoder.get_config()
    assert (loaded.objective, loaded.distortion_blur) == ("D+C", 1.0)
    assert (loaded.distortion_features, loaded.distortion_target) == ("local-contrast",
                                                                     "batch-mean")
    assert (loaded.distortion_window, loaded.centring_weight) == (0.3, 2.0)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded.reference), images[3])
    np.testing.assert_allclose(loaded.align(images)["aligned"], model.align(images)["aligned"],
                               atol=1e-6)


_CROSS_BACKEND = """
import sys, numpy as np, keras
from keras_congeal.models import Congealer
from keras_congeal.ops import filters
rng = np.random.default_rng(0)
images = rng.random((4, 16, 16, 1)).astype("float32")
if sys.argv[1] == "save":
    from tests.models.test_congealer import small_congealer
    model = small_congealer(images[0], transform="affine")
    model(images)
    for w in model.aligner.trainable_weights:
        w.assign(rng.normal(size=w.shape).astype("float32") * 0.02)
    model.save(sys.argv[2])
else:
    model = keras.saving.load_model(sys.argv[2])
np.save(sys.argv[3], model.align(images)["aligned"])
"""


@pytest.mark.slow
@in_the_pass_of("tensorflow")
def test_model_trained_on_jax_reloads_on_tensorflow(tmp_path):
    pytest.importorskip("jax")
    pytest.importorskip("tensorflow")
    path = tmp_path / "m.keras"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for backend, mode, out in [("jax", "save", "a.npy"), ("tensorflow", "load", "b.npy")]:
        subprocess.run([sys.executable, "-c", _CROSS_BACKEND, mode, str(path), str(tmp_path / out)],
                       env={**env, "KERAS_BACKEND": backend}, check=True, cwd=REPO)
    np.testing.assert_allclose(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"), atol=1e-5)


def test_content_scale_of_known_transforms():
    # src_from_dst scaling by 2 shrinks the content by 2.
    t = np.array([np.diag([2.0, 2.0, 1.0]), np.eye(3)])
    np.testing.assert_allclose(content_scale(t, (28, 28)), [0.5, 1.0])


def test_scale_anchor_loss():
    from keras_congeal.ops import geometry

    # A src_from_dst scaling by 2 (content shrunk by 2) has log|det J| = log 4.
    m = np.array([np.diag([2.0, 2.0, 1.0]), np.eye(3)], "float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(geometry.log_area_change(m)),
                               [np.log(4.0), 0.0], atol=1e-6)
    images, _ = blobs(4)
    model = small_congealer(images[0], transform="affine", objective="D", ink_weight=0.0,
                            scale_weight=2.0)
    model(images)
    assert len(model.losses) == 2  # D and the scale anchor (zero at the identity)
    np.testing.assert_allclose(float(model.losses[1]), 0.0, atol=1e-7)


def test_align_is_compiled_once_and_reads_the_current_weights():
    rng = np.random.default_rng(4)
    images = rng.random((7, 16, 16, 1)).astype("float32")
    model = small_congealer(images[0], transform="affine")
    model(images)
    before = model.align(images, batch_size=3)
    compiled = model._compiled_align
    kernel = model.aligner.fusions[-1].regressor.kernel
    kernel.assign(rng.normal(size=kernel.shape).astype("float32") * 0.05)
    after = model.align(images, batch_size=3)  # the last batch padded to 3, then cut
    assert model._compiled_align is compiled
    assert not np.allclose(after["transforms"], before["transforms"])
    whole = model.align(images, batch_size=7)
    np.testing.assert_allclose(after["aligned"], whole["aligned"], atol=1e-6)
    np.testing.assert_allclose(after["transforms"], whole["transforms"], atol=1e-6)
    assert after["aligned"].shape == images.shape


def test_mixed_bfloat16_keeps_geometry_and_losses_in_float32():
    images, _ = blobs(8)
    model = Congealer.from_preset("mnist", reference=np.zeros((28, 28, 1), "float32"),
                                  transform="affine", precision="mixed_bfloat16")
    model.build((None, 28, 28, 1))
    assert model.aligner.stages[0].layers[0].compute_dtype == "bfloat16"
    assert model.autoencoder.encoder.layers[0].compute_dtype == "bfloat16"
    assert model.aligner.sampler.compute_dtype == "float32"
    assert model.aligner.fusions[0].compute_dtype == "float32"
    assert all(v.dtype == "float32" for v in model.weights)
    x = np.zeros((4, 28, 28, 1), "float32")
    x[:, 10:18, 10:18] = 1.0
    out = model(x)
    assert out["params"].dtype == "float32" and out["aligned"].dtype == "float32"
    assert out["complexity"].dtype == "float32"
    assert all(keras.backend.standardize_dtype(loss.dtype) == "float32" for loss in model.losses)
    with pytest.raises(ValueError, match="precision"):
        Congealer.from_preset("mnist", reference=x[0], precision="float16")


@pytest.mark.parametrize("preset,shape,transform", [
    ("mnist", (28, 28, 1), "affine"),
    ("lfw", (64, 64, 3), "similarity"),
])
def test_from_preset_trains_the_transform_of_the_command_line(preset, shape, transform):
    from keras_congeal import CongealSettings

    model = Congealer.from_preset(preset, reference=np.zeros(shape, "float32"))
    assert model.transform == transform == CongealSettings.for_preset(preset).transform
    explicit = Congealer.from_preset(preset, reference=np.zeros(shape, "float32"),
                                     transform="homography")
    assert explicit.transform == "homography"
