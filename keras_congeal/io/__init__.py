"""Reading image sets and writing outputs atomically.

* `keras_congeal.io.images`: the readers (`open_images` for `.npy`, `.npz`,
  HDF5 and folders of PNG/JPEG files, with their checks and pixel budgets);
* `keras_congeal.io.atomic`: the one atomic-writer family (`atomic_file`,
  `AtomicOutputDir`, `NpyWriter`) and `InputError`.

Both are importable from here, as before the split.
"""

from keras_congeal.io.atomic import (
    AtomicOutputDir,
    InputError,
    NpyWriter,
    atomic_file,
    unlink_quietly,
    write_bytes_atomic,
    write_npy_streaming,
)
from keras_congeal.io.images import (
    IMAGE_SUFFIXES,
    MAX_FOLDER_BYTES,
    MAX_IMAGE_PIXELS,
    MAX_UNPACKED_BYTES,
    ImageSource,
    ImagesView,
    check_images,
    check_model_file,
    is_listed_image,
    open_images,
    read_image_file,
    scan_values,
    value_range_of,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "InputError",
    "ImageSource",
    "ImagesView",
    "open_images",
    "check_images",
    "check_model_file",
    "is_listed_image",
    "read_image_file",
    "scan_values",
    "value_range_of",
    "MAX_IMAGE_PIXELS",
    "MAX_FOLDER_BYTES",
    "MAX_UNPACKED_BYTES",
    "atomic_file",
    "write_bytes_atomic",
    "unlink_quietly",
    "AtomicOutputDir",
    "NpyWriter",
    "write_npy_streaming",
]
