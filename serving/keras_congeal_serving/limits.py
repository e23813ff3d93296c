"""The HTTP service's limits, with their defaults in one place.

`create_app`, `serve` and the `serve` command line all take them from here.
"""

from __future__ import annotations

from dataclasses import dataclass

from keras_congeal_serving.images import DEFAULT_MAX_IMAGE_PIXELS

__all__ = ["ServiceLimits"]


@dataclass(frozen=True)
class ServiceLimits:
    """What one service process accepts; beyond it, requests get 413 or 503.

    Args:
        max_batch: int. Most images per request and per onnxruntime call.
            Defaults to `64`.
        max_payload_bytes: int. Largest request body. Defaults to 16 MiB.
        batch_timeout_s: float. Micro-batching window. Defaults to `0.005`.
        max_queue_images: optional int. Images waiting for the model beyond
            which requests get 503. Defaults to `16 * max_batch`.
        max_image_pixels: int. Largest image decoded, told from its header.
            Defaults to `4096 * 4096`.
        max_request_pixels: int. Most pixels decoded for one request (all its
            images), told from the headers. Defaults to `4096 * 4096`.
    """

    max_batch: int = 64
    max_payload_bytes: int = 16 * 2**20
    batch_timeout_s: float = 0.005
    max_queue_images: int | None = None
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_request_pixels: int = DEFAULT_MAX_IMAGE_PIXELS

    def __post_init__(self):
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        if self.max_payload_bytes <= 0 or self.batch_timeout_s < 0:
            raise ValueError("max_payload_bytes must be > 0 and batch_timeout_s >= 0")
        if min(self.max_image_pixels, self.max_request_pixels) < 1:
            raise ValueError("max_image_pixels and max_request_pixels must be >= 1")

    @property
    def queue_images(self) -> int:
        """`max_queue_images`, or its default `16 * max_batch`."""
        if self.max_queue_images is not None:
            return self.max_queue_images
        return 16 * self.max_batch
