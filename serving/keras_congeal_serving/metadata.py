"""The keras_congeal metadata stored in an exported model's `metadata_props`."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from keras_congeal_serving.errors import ModelError

__all__ = ["METADATA_PREFIX", "SUPPORTED_FORMAT_VERSIONS", "ModelMetadata"]

METADATA_PREFIX = "keras_congeal."
SUPPORTED_FORMAT_VERSIONS = (1,)
_REQUIRED_KEYS = ("format_version", "image_height", "image_width", "channels")


@dataclasses.dataclass(frozen=True)
class ModelMetadata:
    """What the exporter wrote about the model (all keys prefixed `keras_congeal.`).

    Args:
        format_version: int. Version of the ONNX contract.
        version: str. Version of keras_congeal that exported the model.
        image_height: int. Training height in pixels.
        image_width: int. Training width in pixels.
        channels: int. Number of image channels the model expects.
        transform: str. Transformation family (e.g. `"homography"`).
        value_range: tuple of two floats. The model's pixel scale; images in
            [0, 1] are mapped linearly onto it. Defaults to `(0.0, 1.0)`.
        any_size: bool. Whether the model accepts any height and width (it
            then predicts on a resized copy and warps the full-size input).
        input_name: str. Name of the graph input. Defaults to `"images"`.
    """

    format_version: int
    image_height: int
    image_width: int
    channels: int
    version: str = "unknown"
    transform: str = "unknown"
    value_range: tuple[float, float] = (0.0, 1.0)
    any_size: bool = False
    input_name: str = "images"

    @classmethod
    def from_props(cls, props: Mapping[str, str], source: str = "model") -> ModelMetadata:
        """Parses `metadata_props` (a str -> str mapping); raises `ModelError`."""
        values = {
            key[len(METADATA_PREFIX) :]: value
            for key, value in props.items()
            if key.startswith(METADATA_PREFIX)
        }
        missing = [key for key in _REQUIRED_KEYS if key not in values]
        if missing:
            names = ", ".join(METADATA_PREFIX + key for key in missing)
            raise ModelError(f"{source}: not a keras_congeal export (metadata_props lacks {names})")
        try:
            format_version = int(values["format_version"])
            height = int(values["image_height"])
            width = int(values["image_width"])
            channels = int(values["channels"])
            low, high = (float(v) for v in values.get("value_range", "0,1").split(","))
        except ValueError as error:
            raise ModelError(f"{source}: malformed keras_congeal metadata ({error})") from None
        if format_version not in SUPPORTED_FORMAT_VERSIONS:
            raise ModelError(
                f"{source}: ONNX contract format version {format_version} is not supported "
                f"by this keras_congeal_serving (supported: {SUPPORTED_FORMAT_VERSIONS}); "
                "upgrade keras-congeal-serving"
            )
        if min(height, width, channels) < 1 or not high > low:
            raise ModelError(f"{source}: inconsistent keras_congeal metadata {values}")
        any_size = values.get("any_size", "false").strip().lower()
        if any_size not in ("true", "false", "1", "0"):
            raise ModelError(f"{source}: keras_congeal.any_size must be true or false")
        return cls(
            format_version=format_version,
            image_height=height,
            image_width=width,
            channels=channels,
            version=values.get("version", "unknown"),
            transform=values.get("transform", "unknown"),
            value_range=(low, high),
            any_size=any_size in ("true", "1"),
            input_name=values.get("input_name", "images"),
        )

    def to_dict(self) -> dict:
        """A JSON-serialisable dict (used by report.json and `/ready`)."""
        data = dataclasses.asdict(self)
        data["value_range"] = list(self.value_range)
        return data
