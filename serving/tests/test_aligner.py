"""The Python API: `Aligner`."""

import logging

import numpy as np
import pytest

from keras_congeal_serving import Aligner, InputError, ModelError, ProviderError
from keras_congeal_serving.aligner import resolve_providers
from keras_congeal_serving.testing import expected_translation, translation_matrices


def test_one_pixel_translation_matches_hand_written_array(grey_model):
    images = np.array([[[0, 1, 2], [3, 4, 5], [6, 7, 8]]], dtype=np.uint8)
    images = np.pad(images, ((0, 0), (0, 5), (0, 5)))  # 8x8, content top-left
    result = Aligner(grey_model).align(images)
    assert result.aligned[0, :3, :3].tolist() == [[1, 2, 0], [4, 5, 0], [7, 8, 0]]
    assert not result.aligned[0, 3:].any() and not result.aligned[0, :, 3:].any()
    np.testing.assert_array_equal(
        result.transforms[0], [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    )


def test_uint8_round_trip_shapes_and_dtypes(grey_model, digits):
    aligner = Aligner(grey_model)
    result = aligner.align(digits)
    assert result.aligned.dtype == np.uint8 and result.aligned.shape == digits.shape
    assert result.transforms.dtype == np.float64 and result.transforms.shape == (5, 3, 3)
    np.testing.assert_array_equal(result.aligned, expected_translation(digits, (1, 0)))
    np.testing.assert_array_equal(result.transforms, translation_matrices((1, 0), 5))
    aligned, transforms = result  # a named tuple
    assert aligned is result.aligned


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_float_keeps_dtype_and_range(grey_model, digits, dtype):
    images = (digits / 255.0).astype(dtype)[..., None]  # (N, H, W, 1)
    aligned, _ = Aligner(grey_model).align(images)
    assert aligned.dtype == dtype and aligned.shape == images.shape
    atol = 1e-3 if dtype == np.float16 else 1e-6
    np.testing.assert_allclose(aligned, expected_translation(images, (1, 0)), atol=atol)


def test_rgb_model_vertical_shift(rgb_model):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(3, 8, 8, 3), dtype=np.uint8)
    aligned, transforms = Aligner(rgb_model).align(images)
    np.testing.assert_array_equal(aligned, expected_translation(images, (0, 1)))
    np.testing.assert_array_equal(transforms, translation_matrices((0, 1), 3))


def test_half_pixel_shift_is_bilinear(make_model):
    model = make_model(height=4, width=4, channels=1, shift=(0.5, 0.0))
    images = np.array([[[0, 10, 20, 30]] * 4], dtype=np.uint8)
    aligned, transforms = Aligner(model).align(images)
    # Half-way between neighbours; the last column mixes 30 with the zero outside.
    assert aligned[0].tolist() == [[5, 15, 25, 15]] * 4
    assert transforms[0, 0, 2] == 0.5


def test_chunking_does_not_change_results(grey_model, digits):
    aligner = Aligner(grey_model)
    whole = aligner.align(digits, batch_size=64)
    chunked = aligner.align(digits, batch_size=2)
    np.testing.assert_array_equal(whole.aligned, chunked.aligned)
    np.testing.assert_array_equal(whole.transforms, chunked.transforms)


def test_memmap_input(grey_model, digits, tmp_path):
    np.save(tmp_path / "d.npy", digits)
    images = np.load(tmp_path / "d.npy", mmap_mode="r")
    aligned, _ = Aligner(grey_model).align(images, batch_size=2)
    np.testing.assert_array_equal(aligned, expected_translation(digits, (1, 0)))


def test_any_size_model_accepts_other_sizes(any_size_model):
    aligner = Aligner(any_size_model)
    assert aligner.metadata.any_size
    images = np.arange(2 * 5 * 11, dtype=np.uint8).reshape(2, 5, 11)
    aligned, transforms = aligner.align(images)
    np.testing.assert_array_equal(aligned, expected_translation(images, (1, 0)))
    np.testing.assert_array_equal(transforms, translation_matrices((1, 0), 2))


def test_fixed_batch_model_is_padded(make_model, digits):
    """A model exported with `--batch 4` gets calls of exactly 4 images."""
    aligner = Aligner(make_model(height=8, width=8, batch=4))
    assert aligner.fixed_batch == 4
    for batch_size in (2, 3, 64):
        aligned, transforms = aligner.align(digits, batch_size=batch_size)
        np.testing.assert_array_equal(aligned, expected_translation(digits, (1, 0)))
        assert transforms.shape == (5, 3, 3)


def test_metadata_property(rgb_model):
    metadata = Aligner(rgb_model).metadata
    assert (metadata.image_height, metadata.image_width, metadata.channels) == (8, 8, 3)
    assert metadata.format_version == 1 and metadata.transform == "translation"
    assert metadata.value_range == (0.0, 1.0) and not metadata.any_size


@pytest.mark.parametrize(
    "images, message",
    [
        (np.zeros((2, 9, 8), np.uint8), "9x8 .* takes 8x8"),
        (np.zeros((2, 8, 8, 3), np.uint8), "3 channel"),
        (np.zeros((8, 8), np.uint8), "expected an array of shape"),
        (np.zeros((0, 8, 8), np.uint8), "empty"),
        (np.zeros((2, 8, 8), np.int16), "unsupported dtype int16"),
        (np.full((2, 8, 8), np.nan, np.float32), "image 0 contains NaN"),
        (np.stack([np.zeros((8, 8)), np.full((8, 8), np.inf)]), "image 1 contains NaN or inf"),
    ],
)
def test_bad_input(grey_model, images, message):
    with pytest.raises(InputError, match=message):
        Aligner(grey_model).align(images)


def test_greyscale_stack_for_rgb_model(rgb_model):
    with pytest.raises(InputError, match="greyscale"):
        Aligner(rgb_model).align(np.zeros((1, 8, 8), np.uint8))


def test_nan_index_counts_across_chunks(grey_model):
    images = np.zeros((5, 8, 8), np.float32)
    images[3, 2, 2] = np.nan
    with pytest.raises(InputError, match="image 3 "):
        Aligner(grey_model).align(images, batch_size=2)


def test_providers_are_logged_and_default_to_cpu(grey_model, caplog):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has CUDA")
    with caplog.at_level(logging.INFO, logger="keras_congeal_serving"):
        aligner = Aligner(grey_model, intra_op_threads=1)
    assert aligner.providers == ["CPUExecutionProvider"]
    assert "providers in use ['CPUExecutionProvider']" in caplog.text


def test_strict_refuses_a_provider_that_is_not_available(grey_model, caplog):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ProviderError, match="CUDAExecutionProvider"):
        Aligner(grey_model, providers=["CUDAExecutionProvider"], strict=True)
    with pytest.raises(ProviderError):
        Aligner(grey_model, providers="cuda,cpu", strict=True)
    # Without strict: a warning, and the session runs on CPU.
    with caplog.at_level(logging.WARNING, logger="keras_congeal_serving"):
        aligner = Aligner(grey_model, providers=["CUDAExecutionProvider"])
    assert aligner.providers == ["CPUExecutionProvider"]
    assert "falling back" in caplog.text


def test_strict_accepts_the_provider_in_use(grey_model):
    assert Aligner(grey_model, providers="cpu", strict=True).providers[0] == "CPUExecutionProvider"


def test_resolve_providers():
    assert resolve_providers(None, ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert resolve_providers(None, ["CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert resolve_providers("cuda, cpu", []) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert resolve_providers([("cuda", {"device_id": 1})], []) == [
        ("CUDAExecutionProvider", {"device_id": 1})
    ]


def test_unknown_provider(grey_model):
    with pytest.raises(ValueError, match="unknown execution provider"):
        Aligner(grey_model, providers=["NoSuchExecutionProvider"])


def test_model_errors(tmp_path, make_model):
    with pytest.raises(ModelError, match="no such model file"):
        Aligner(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelError, match="cannot load ONNX model"):
        Aligner(tmp_path / "junk.onnx")
    bare = make_model(height=8, width=8, metadata={"keras_congeal.format_version": None})
    with pytest.raises(ModelError, match="not a keras_congeal export"):
        Aligner(bare)
