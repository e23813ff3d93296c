"""`Aligner`: one onnxruntime session around an exported keras_congeal model.

Convention (from the ONNX contract, format version 1): the model takes float32
images `(batch, height, width, channels)` in its value range (normally [0, 1])
and returns `aligned` (same shape, bilinear, zeros outside the input) and
`transforms` `(batch, 3, 3)`: pixel `src_from_dst` matrices in the input's own
pixel frame (x = column, y = row, pixel centres at integers, origin at the
centre of the top-left pixel), so that
`aligned[i][y, x] == bilinear(images[i], transforms[i] @ (x, y, 1))`.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from keras_congeal_serving.errors import InputError, ModelError, ProviderError
from keras_congeal_serving.metadata import ModelMetadata

__all__ = ["Aligner", "AlignResult", "PROVIDER_ALIASES", "resolve_providers"]

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 64
# Float input must lie in [0, 1] up to this rounding tolerance (the same rule as
# keras_congeal.io.scan_values, which this package does not import).
FLOAT_TOLERANCE = 1e-3
PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "dml": "DmlExecutionProvider",
}
_OUTPUT_NAMES = ("aligned", "transforms")


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as error:
        raise ImportError(
            "keras_congeal_serving needs onnxruntime: install exactly one of "
            "`pip install 'keras-congeal-serving[cpu]'` (onnxruntime) or "
            "`pip install 'keras-congeal-serving[gpu]'` (onnxruntime-gpu)"
        ) from error
    return onnxruntime


class AlignResult(NamedTuple):
    """What `Aligner.align` returns.

    Args:
        aligned: np.ndarray. Same shape, dtype and value range as the input.
        transforms: np.ndarray. float64 `(N, 3, 3)` pixel `src_from_dst` matrices.
    """

    aligned: np.ndarray
    transforms: np.ndarray


def resolve_providers(
    providers: Sequence[str | tuple[str, dict]] | str | None,
    available: Sequence[str],
) -> list[str | tuple[str, dict]]:
    """Expands aliases (`"cuda"`, `"cpu"`, ...) and picks the default.

    Args:
        providers: None, a comma-separated string, or a sequence of provider
            names or `(name, options)` pairs, most preferred first. None means
            `["CUDAExecutionProvider", "CPUExecutionProvider"]` when CUDA is
            available, else `["CPUExecutionProvider"]`.
        available: what `onnxruntime.get_available_providers()` returned.

    Returns:
        A non-empty list of full provider names or `(name, options)` pairs.
    """
    if providers is None:
        if "CUDAExecutionProvider" in available:
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]
    if isinstance(providers, str):
        providers = [p.strip() for p in providers.split(",") if p.strip()]
    resolved = []
    for provider in providers:
        if isinstance(provider, tuple):
            name, options = provider
            resolved.append((PROVIDER_ALIASES.get(name.lower(), name), dict(options)))
        else:
            resolved.append(PROVIDER_ALIASES.get(provider.lower(), provider))
    if not resolved:
        raise ValueError("providers must name at least one execution provider")
    return resolved


def _provider_name(provider: str | tuple[str, dict]) -> str:
    return provider[0] if isinstance(provider, tuple) else provider


class Aligner:
    """Aligns images with an exported keras_congeal model on onnxruntime.

    The session is created once, here. Execution providers are explicit and the
    ones actually in use are logged: onnxruntime silently falls back to CPU when
    e.g. CUDA fails to load, which `strict=True` turns into an error.

    Args:
        model_path: str or path. The `.onnx` file written by
            `python -m keras_congeal.export`.
        providers: optional. Execution providers, most preferred first: full
            names (`"CUDAExecutionProvider"`), aliases (`"cuda"`, `"cpu"`,
            `"tensorrt"`), `(name, options)` pairs, or one comma-separated
            string. Defaults to CUDA then CPU when CUDA is available, else CPU.
        strict: bool. Raise `ProviderError` when the first requested provider is
            not the one the session uses. Defaults to `False` (log a warning).
        intra_op_threads: optional int. onnxruntime intra-op threads. Defaults
            to onnxruntime's choice (one per physical core).

    Example:

    >>> aligner = Aligner("aligner.onnx", providers="cuda,cpu", strict=True)  # doctest: +SKIP
    >>> result = aligner.align(uint8_images, batch_size=256)  # doctest: +SKIP
    >>> result.aligned.dtype, result.transforms.shape  # doctest: +SKIP
    (dtype('uint8'), (1000, 3, 3))
    """

    def __init__(
        self,
        model_path: str | os.PathLike,
        providers: Sequence[str | tuple[str, dict]] | str | None = None,
        strict: bool = False,
        intra_op_threads: int | None = None,
    ):
        ort = _import_onnxruntime()
        self.model_path = os.fspath(model_path)
        self.strict = strict
        self.intra_op_threads = intra_op_threads
        if not os.path.isfile(self.model_path):
            raise ModelError(f"{self.model_path}: no such model file")
        available = ort.get_available_providers()
        requested = resolve_providers(providers, available)
        known = set(ort.get_all_providers())
        unknown = [_provider_name(p) for p in requested if _provider_name(p) not in known]
        if unknown:
            raise ValueError(
                f"unknown execution provider(s) {unknown}; aliases: {sorted(PROVIDER_ALIASES)}"
            )
        self.requested_providers = [_provider_name(p) for p in requested]
        first = self.requested_providers[0]
        if first not in available:
            message = (
                f"{first} was requested but this onnxruntime build only has "
                f"{list(available)} (onnxruntime-gpu installed? CUDA libraries found?)"
            )
            if strict:
                raise ProviderError(message)
            logger.warning("%s; falling back", message)
        usable = [p for p in requested if _provider_name(p) in available]
        if not usable:
            usable = ["CPUExecutionProvider"]

        options = ort.SessionOptions()
        if intra_op_threads is not None:
            options.intra_op_num_threads = int(intra_op_threads)
        try:
            self._session = ort.InferenceSession(
                self.model_path, sess_options=options, providers=usable
            )
        except Exception as error:  # onnxruntime raises its own pybind classes
            message = str(error).strip().splitlines()[0] if str(error).strip() else error
            raise ModelError(f"{self.model_path}: cannot load ONNX model: {message}") from None
        self.providers = list(self._session.get_providers())
        logger.info(
            "onnxruntime session for %s: providers in use %s (requested %s)",
            self.model_path,
            self.providers,
            self.requested_providers,
        )
        if self.providers[0] != first:
            message = (
                f"requested {first} but the session runs on {self.providers[0]} "
                f"(providers in use: {self.providers})"
            )
            if strict:
                raise ProviderError(message)
            if first in available:
                logger.warning("%s", message)

        props = self._session.get_modelmeta().custom_metadata_map
        self._metadata = ModelMetadata.from_props(props, source=self.model_path)
        inputs = [i.name for i in self._session.get_inputs()]
        if self._metadata.input_name in inputs:
            self.input_name = self._metadata.input_name
        elif len(inputs) == 1:
            self.input_name = inputs[0]
        else:
            raise ModelError(
                f"{self.model_path}: no graph input named "
                f"{self._metadata.input_name!r} (inputs: {inputs})"
            )
        batch_dim = next(
            i.shape[0] for i in self._session.get_inputs() if i.name == self.input_name
        )
        # Exported with `--batch N`: every call must hold exactly N images.
        self.fixed_batch = batch_dim if isinstance(batch_dim, int) and batch_dim > 0 else None
        outputs = [o.name for o in self._session.get_outputs()]
        if not set(_OUTPUT_NAMES) <= set(outputs):
            raise ModelError(
                f"{self.model_path}: outputs {outputs}, expected {list(_OUTPUT_NAMES)}"
            )

    # --- Properties -------------------------------------------------------

    @property
    def metadata(self) -> ModelMetadata:
        """The keras_congeal metadata read from the model's `metadata_props`."""
        return self._metadata

    @functools.cached_property
    def model_sha256(self) -> str:
        """SHA-256 of the model file (identifies the deployed model)."""
        digest = hashlib.sha256()
        with open(self.model_path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()

    def __repr__(self) -> str:
        m = self._metadata
        return (
            f"Aligner({self.model_path!r}, providers={self.providers}, "
            f"size={m.image_height}x{m.image_width}x{m.channels}, any_size={m.any_size}, "
            f"fixed_batch={self.fixed_batch})"
        )

    # --- Validation and conversion ---------------------------------------

    def check_shape(self, shape: Sequence[int], name: str = "images") -> tuple[int, ...]:
        """Checks an input shape against the metadata; returns `(N, H, W, C)`.

        Accepts `(N, H, W)` (greyscale) or `(N, H, W, C)`; raises `InputError`.
        """
        shape = tuple(int(s) for s in shape)
        m = self._metadata
        if len(shape) == 3:
            if m.channels != 1:
                raise InputError(
                    f"{name}: shape {shape} is greyscale (N, H, W) but the model expects "
                    f"{m.channels} channels (N, H, W, {m.channels})"
                )
            shape = shape + (1,)
        elif len(shape) != 4:
            raise InputError(
                f"{name}: expected an array of shape (N, H, W) or (N, H, W, C), got {shape}"
            )
        count, height, width, channels = shape
        if count == 0:
            raise InputError(f"{name}: no images (empty batch)")
        if channels != m.channels:
            raise InputError(
                f"{name}: images have {channels} channel(s) but the model expects {m.channels}"
            )
        if m.any_size:
            if height < 2 or width < 2:
                raise InputError(f"{name}: images of {height}x{width} pixels are too small")
        elif (height, width) != (m.image_height, m.image_width):
            raise InputError(
                f"{name}: images are {height}x{width} (HxW) but the model takes "
                f"{m.image_height}x{m.image_width} (exported without --any-size)"
            )
        return shape

    def prepare(self, images: np.ndarray, first_index: int = 0) -> np.ndarray:
        """Converts a chunk to the model's float32 input `(n, H, W, C)`.

        uint8 is divided by 255; floats must be finite and lie in [0, 1] (with a
        tolerance of `FLOAT_TOLERANCE` for rounding errors: the rule and message
        of `keras_congeal`'s `congeal` command, so that 0-255 floats are refused
        everywhere). Both are then mapped onto the model's value range. Raises
        `InputError` for other dtypes, NaN/inf (naming the first bad image,
        counted from `first_index`) and out-of-range floats. Does not check the
        shape: see `check_shape`.
        """
        images = np.asarray(images)
        if images.dtype == np.uint8:
            x = images.astype(np.float32) * np.float32(1 / 255)
        elif np.issubdtype(images.dtype, np.floating):
            x = images.astype(np.float32)
            finite = np.isfinite(x).reshape(len(x), -1).all(axis=1)
            if not finite.all():
                bad = int(np.argmin(finite)) + first_index
                raise InputError(f"image {bad} contains NaN or infinite values")
            low, high = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
            if low < -FLOAT_TOLERANCE or high > 1 + FLOAT_TOLERANCE:
                raise InputError(
                    f"float images must lie in [0, 1], found values in [{low:g}, {high:g}]; "
                    "rescale them (e.g. divide by 255) or pass uint8"
                )
        else:
            raise InputError(
                f"unsupported dtype {images.dtype}; expected uint8 (0-255) or float ([0, 1])"
            )
        if x.ndim == 3:
            x = x[..., None]
        low, high = self._metadata.value_range
        if (low, high) != (0.0, 1.0):
            x = x * np.float32(high - low) + np.float32(low)
        return np.ascontiguousarray(x)

    def restore(self, aligned: np.ndarray, dtype: Any) -> np.ndarray:
        """Converts model output back to `dtype`: uint8 rounded and clipped."""
        low, high = self._metadata.value_range
        if (low, high) != (0.0, 1.0):
            aligned = (aligned - np.float32(low)) / np.float32(high - low)
        if np.dtype(dtype) == np.uint8:
            return np.clip(np.rint(aligned * np.float32(255)), 0, 255).astype(np.uint8)
        return aligned.astype(dtype, copy=False)

    # --- Inference ----------------------------------------------------------

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """onnxruntime on a prepared float32 batch `(B, H, W, C)`.

        One call, unless the model was exported with a fixed batch size
        (`fixed_batch`): then calls of exactly that size, the last one padded
        with zeros. Thread-safe (onnxruntime sessions are).

        Returns:
            `(aligned float32 (B, H, W, C), transforms float64 (B, 3, 3))`.
        """
        size = self.fixed_batch
        if size is None or len(batch) == size:
            return self._run_once(batch)
        aligned, transforms = [], []
        for start in range(0, len(batch), size):
            part = batch[start : start + size]
            count = len(part)
            if count < size:
                padding = np.zeros((size - count, *part.shape[1:]), part.dtype)
                part = np.concatenate([part, padding])
            a, t = self._run_once(part)
            aligned.append(a[:count])
            transforms.append(t[:count])
        return np.concatenate(aligned), np.concatenate(transforms)

    def _run_once(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        aligned, transforms = self._session.run(list(_OUTPUT_NAMES), {self.input_name: batch})
        if aligned.shape != batch.shape or transforms.shape != (len(batch), 3, 3):
            raise ModelError(
                f"{self.model_path}: outputs of shape {aligned.shape} and {transforms.shape} "
                f"for input {batch.shape} break the contract"
            )
        return aligned, transforms.astype(np.float64)

    def align(self, images: Any, batch_size: int = DEFAULT_BATCH_SIZE) -> AlignResult:
        """Aligns a stack of images, `batch_size` at a time.

        Args:
            images: array-like `(N, H, W)` or `(N, H, W, C)`, uint8 (0-255) or
                float ([0, 1]). Anything sliceable with a `.shape` and `.dtype`
                works (np.memmap, h5py.Dataset): it is read one chunk at a time.
            batch_size: int. Images per onnxruntime call. Defaults to 64.

        Returns:
            `AlignResult(aligned, transforms)`: `aligned` has the input's shape,
            dtype and value range (uint8 rounded and clipped); `transforms` is
            float64 `(N, 3, 3)`.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not hasattr(images, "shape") or not hasattr(images, "dtype"):
            images = np.asarray(images)
        self.check_shape(images.shape)
        count = images.shape[0]
        aligned = np.empty(images.shape, dtype=images.dtype)
        transforms = np.empty((count, 3, 3), dtype=np.float64)
        for start in range(0, count, batch_size):
            stop = min(start + batch_size, count)
            chunk = np.asarray(images[start:stop])
            out, transforms[start:stop] = self.run(self.prepare(chunk, first_index=start))
            aligned[start:stop] = self.restore(out, chunk.dtype).reshape(chunk.shape)
        return AlignResult(aligned, transforms)
