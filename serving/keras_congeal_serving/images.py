"""PNG/JPEG decoding and PNG encoding with Pillow (imported lazily)."""

from __future__ import annotations

import io
import os
from typing import BinaryIO

import numpy as np

from keras_congeal_serving.errors import InputError, UnreadableInputError

__all__ = [
    "IMAGE_SUFFIXES",
    "decode_image",
    "encode_png",
    "open_image",
    "image_channels",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_FORMATS = ("PNG", "JPEG")
# Pillow mode -> (channels, mode to convert to). Alpha is dropped; palette
# images are expanded to RGB. 16-bit and float modes are refused: their scale
# is not the 8-bit one the model's uint8 convention assumes.
_MODES = {
    "1": (1, "L"),
    "L": (1, "L"),
    "LA": (1, "L"),
    "RGB": (3, "RGB"),
    "RGBA": (3, "RGB"),
    "P": (3, "RGB"),
    "PA": (3, "RGB"),
    "CMYK": (3, "RGB"),
    "YCbCr": (3, "RGB"),
}


def _pil():
    try:
        from PIL import Image
    except ImportError as error:  # pragma: no cover - pillow is a base dependency
        raise ImportError("reading images needs Pillow: pip install pillow") from error
    return Image


def open_image(source: str | os.PathLike | BinaryIO | bytes, name: str):
    """Opens a PNG/JPEG lazily (header only); raises `UnreadableInputError`."""
    image_module = _pil()
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    try:
        image = image_module.open(source)
    except FileNotFoundError:
        raise UnreadableInputError(f"{name}: no such file") from None
    except image_module.UnidentifiedImageError:
        raise UnreadableInputError(f"{name}: not a PNG or JPEG image") from None
    except (OSError, ValueError, SyntaxError) as error:
        raise UnreadableInputError(f"{name}: not a PNG or JPEG image ({error})") from None
    if image.format not in _FORMATS:
        image.close()
        raise UnreadableInputError(f"{name}: {image.format} image; only PNG and JPEG are supported")
    if image.mode not in _MODES:
        image.close()
        raise InputError(
            f"{name}: unsupported image mode {image.mode!r} (8-bit greyscale or RGB expected)"
        )
    return image


def image_channels(image) -> int:
    """1 for greyscale, 3 for colour (see `_MODES`)."""
    return _MODES[image.mode][0]


def check_image(image, name: str, channels: int | None) -> None:
    """Raises `InputError` if the image's channels differ from `channels`."""
    if channels is not None and image_channels(image) != channels:
        kind = "greyscale" if image_channels(image) == 1 else "colour (RGB)"
        raise InputError(
            f"{name}: {kind} image with {image_channels(image)} channel(s), "
            f"but the model expects {channels}"
        )


def decode_image(
    source: str | os.PathLike | BinaryIO | bytes,
    name: str,
    channels: int | None = None,
    max_pixels: int | None = None,
) -> np.ndarray:
    """Decodes a PNG/JPEG into a uint8 array `(height, width, channels)`.

    Args:
        source: path, binary file object or bytes.
        name: str. Name used in error messages.
        channels: optional int. Channels the model expects; a mismatch raises
            `InputError` (no silent grey <-> RGB conversion).
        max_pixels: optional int. Refuse larger images before decoding them.
    """
    image = open_image(source, name)
    with image:
        check_image(image, name, channels)
        width, height = image.size
        if max_pixels is not None and width * height > max_pixels:
            raise InputError(f"{name}: {width}x{height} image has more than {max_pixels} pixels")
        try:
            image.load()
            array = np.asarray(image.convert(_MODES[image.mode][1]), dtype=np.uint8)
        except (OSError, ValueError, SyntaxError) as error:
            raise UnreadableInputError(f"{name}: cannot decode image ({error})") from None
    if array.ndim == 2:
        array = array[:, :, None]
    return array


def encode_png(array: np.ndarray) -> bytes:
    """Encodes a uint8 `(height, width, 1 or 3)` array as PNG bytes."""
    image_module = _pil()
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[:, :, 0]
    buffer = io.BytesIO()
    image_module.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(
        buffer, format="PNG", compress_level=1
    )
    return buffer.getvalue()
