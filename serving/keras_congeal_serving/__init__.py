"""Serve a keras_congeal aligner exported to ONNX, without TensorFlow or Keras.

The exported model follows `docs/onnx_contract.md` (format version 1) of the
keras_congeal repository: it takes float32 images `(batch, height, width,
channels)` in [0, 1] and returns the aligned images and the pixel `src_from_dst`
matrices that produced them.

Example:

>>> from keras_congeal_serving import Aligner
>>> aligner = Aligner("aligner.onnx")  # doctest: +SKIP
>>> aligned, transforms = aligner.align(images)  # doctest: +SKIP

Importing this package imports numpy only; onnxruntime is imported when an
`Aligner` is created, Pillow/h5py when images/HDF5 files are read, and
FastAPI/uvicorn only by `keras_congeal_serving.server`.
"""

__version__ = "0.1.0"

from keras_congeal_serving.aligner import Aligner, AlignResult, resolve_providers
from keras_congeal_serving.errors import (
    InputError,
    ModelError,
    ProviderError,
    UnreadableInputError,
)
from keras_congeal_serving.metadata import ModelMetadata

__all__ = [
    "Aligner",
    "AlignResult",
    "InputError",
    "ModelError",
    "ModelMetadata",
    "ProviderError",
    "UnreadableInputError",
    "resolve_providers",
    "__version__",
]
