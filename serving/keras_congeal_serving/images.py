"""PNG/JPEG decoding and PNG encoding with Pillow (imported lazily)."""

from __future__ import annotations

import io
import os
import warnings
from typing import BinaryIO

import numpy as np

from keras_congeal_serving.errors import InputError, TooLargeError, UnreadableInputError

__all__ = [
    "DEFAULT_MAX_IMAGE_PIXELS",
    "IMAGE_SUFFIXES",
    "check_pixels",
    "check_total_pixels",
    "decode_image",
    "encode_png",
    "image_channels",
    "open_image",
    "read_header",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# Largest image decoded by default (the service's --max-image-pixels, the batch
# command's too): 4096 x 4096, 48 MiB as RGB uint8.
DEFAULT_MAX_IMAGE_PIXELS = 4096 * 4096
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
        with warnings.catch_warnings():
            # Sizes are checked against our own limits (`check_pixels`) before
            # decoding; Pillow's warning for large headers would add a line.
            warnings.simplefilter("ignore", image_module.DecompressionBombWarning)
            image = image_module.open(source)
    except image_module.DecompressionBombError as error:
        raise TooLargeError(f"{name}: refused before decoding: {error}") from None
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


def check_pixels(width: int, height: int, name: str, max_pixels: int | None) -> None:
    """Raises `TooLargeError` if a `width` x `height` image exceeds `max_pixels`."""
    if max_pixels is not None and width * height > max_pixels:
        raise TooLargeError(
            f"{name}: {width}x{height} image has {width * height} pixels; at most "
            f"{max_pixels} are decoded per image (--max-image-pixels)"
        )


def check_total_pixels(total: int, max_total: int | None, name: str, unit: str) -> None:
    """Raises `TooLargeError` if `total` pixels (of a request or a set) exceed `max_total`.

    Args:
        unit: str. `"request"` or `"set"`; names the limit (`--max-request-pixels`, ...).
    """
    if max_total is not None and total > max_total:
        raise TooLargeError(
            f"{name}: {total} pixels in all; at most {max_total} are decoded per {unit} "
            f"(--max-{unit}-pixels); send fewer or smaller images"
        )


def read_header(
    source: str | os.PathLike | BinaryIO | bytes,
    name: str,
    channels: int | None = None,
    max_pixels: int | None = None,
) -> tuple[int, int, int]:
    """`(height, width, channels)` of a PNG/JPEG from its header; nothing is decoded.

    Raises `UnreadableInputError`, `InputError` (channels) or `TooLargeError`.
    """
    with open_image(source, name) as image:
        check_image(image, name, channels)
        width, height = image.size
        check_pixels(width, height, name, max_pixels)
        return height, width, image_channels(image)


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
        check_pixels(*image.size, name, max_pixels)
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
