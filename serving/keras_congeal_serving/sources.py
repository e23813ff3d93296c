"""Input sources for the batch command, read one chunk at a time.

- `.npy`: memory-mapped (`np.load(mmap_mode="r")`).
- `.npz`: the member `KEY.npy` is streamed from the zip archive (compressed or
  not) without loading the whole array.
- HDF5: `h5py` dataset `KEY`, sliced lazily.
- a directory of PNG/JPEG files, sorted by name; headers are checked up front
  (format, mode, size, pixels per image and per set) so that bad files fail
  before anything is decoded or written.

The file type is told by its first bytes, not its name.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator

import numpy as np

from keras_congeal_serving.errors import InputError, UnreadableInputError
from keras_congeal_serving.images import (
    DEFAULT_MAX_IMAGE_PIXELS,
    IMAGE_SUFFIXES,
    check_total_pixels,
    decode_image,
    read_header,
)

__all__ = [
    "DEFAULT_MAX_SET_PIXELS",
    "ArraySource",
    "FolderSource",
    "iter_chunks",
    "list_folder",
    "open_source",
]

# Most pixels decoded from one folder (--max-set-pixels): 2**32, i.e. 4 GiB of
# greyscale uint8 output (12 GiB RGB).
DEFAULT_MAX_SET_PIXELS = 2**32

_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


class ArraySource:
    """A stack of equally sized images: `.shape`, `.dtype`, `read(start, stop)`."""

    kind = "array"
    filenames: list[str] | None = None
    uniform = True

    def __init__(
        self, path: str, key: str | None, shape, dtype, reader, closer=None, sequential=False
    ):
        self.path = path
        self.key = key
        # True when rows can only be read in order, from the first (.npz streams).
        self.sequential = sequential
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self._reader = reader
        self._closer = closer
        if self.dtype != np.uint8 and not np.issubdtype(self.dtype, np.floating):
            raise InputError(
                f"{self.describe()}: unsupported dtype {self.dtype}; "
                "expected uint8 (0-255) or float ([0, 1])"
            )

    def describe(self) -> str:
        return f"{self.path}[{self.key}]" if self.key is not None else self.path

    def read(self, start: int, stop: int) -> np.ndarray:
        return np.asarray(self._reader(start, stop))

    def view(self, start: int, stop: int) -> ArraySource:
        """The rows `start:stop` as a source of their own (closing it closes this one)."""
        if self.sequential and start != 0:
            raise ValueError(f"{self.describe()}: rows can only be read from the first")
        return ArraySource(
            self.path,
            self.key,
            (stop - start, *self.shape[1:]),
            self.dtype,
            lambda a, b: self._reader(start + a, start + b),
            self.close,
            self.sequential,
        )

    def close(self) -> None:
        if self._closer is not None:
            self._closer()
            self._closer = None


def list_folder(path: str) -> list[str]:
    """The names of the files of directory `path`, sorted, hidden ones (`.*`) left out."""
    return sorted(
        entry.name
        for entry in os.scandir(path)
        if not entry.name.startswith(".") and entry.is_file()
    )


class FolderSource:
    """PNG/JPEG files of one directory, sorted by name, decoded to uint8.

    Every header is read (nothing decoded) when the source is opened: format,
    mode, channels, at most `max_image_pixels` per image and `max_set_pixels`
    for all the files together.

    Args:
        path: str. The directory.
        channels: optional int. Channels the model expects (checked per header).
        max_image_pixels, max_set_pixels: optional ints. Pixel budgets (None: no limit);
            beyond them `TooLargeError`.
        names: optional list of str. Files to read, relative to `path`, in this
            order; defaults to every non-hidden file of `path`, sorted by name.
    """

    kind = "folder"
    key = None
    dtype = np.dtype(np.uint8)

    def __init__(
        self,
        path: str,
        channels: int | None = None,
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
        max_set_pixels: int | None = DEFAULT_MAX_SET_PIXELS,
        names: list[str] | None = None,
    ):
        self.path = path
        if names is None:
            names = list_folder(path)
        if not names:
            raise InputError(f"{path}: no PNG or JPEG files in this directory")
        for name in names:
            if not name.lower().endswith(IMAGE_SUFFIXES):
                raise UnreadableInputError(
                    f"{os.path.join(path, name)}: not a PNG or JPEG file "
                    f"(expected {', '.join(IMAGE_SUFFIXES)})"
                )
        self.filenames = list(names)
        self.shapes = []
        for name in names:
            full = os.path.join(path, name)
            self.shapes.append(read_header(full, full, channels, max_image_pixels))
        check_total_pixels(sum(h * w for h, w, _ in self.shapes), max_set_pixels, path, "set")
        self.channels_seen = sorted({s[2] for s in self.shapes})
        if len(self.channels_seen) > 1:
            raise InputError(f"{path}: mixes greyscale and colour images")
        self.uniform = len(set(self.shapes)) == 1
        # Grey folders read as (N, H, W), as `python -m keras_congeal congeal`
        # writes them: the same folder gives the same aligned.npy shape.
        self.grey = self.channels_seen == [1]
        shape = self.shapes[0][:2] if self.grey else self.shapes[0]
        self.shape = (len(names), *shape) if self.uniform else None
        self._channels = channels

    def describe(self) -> str:
        return self.path

    def read_list(self, start: int, stop: int) -> list[np.ndarray]:
        return [
            decode_image(
                os.path.join(self.path, name), os.path.join(self.path, name), self._channels
            )
            for name in self.filenames[start:stop]
        ]

    def read(self, start: int, stop: int) -> np.ndarray:
        stack = np.stack(self.read_list(start, stop))
        return stack[..., 0] if self.grey and stack.shape[-1] == 1 else stack

    def close(self) -> None:
        pass


def _npz_member(path: str, archive: zipfile.ZipFile, key: str | None) -> str:
    members = [n[:-4] for n in archive.namelist() if n.endswith(".npy")]
    if not members:
        raise UnreadableInputError(f"{path}: a zip file without .npy members (not an .npz)")
    if key is None:
        if len(members) != 1:
            raise InputError(f"{path}: several arrays {members}; choose one with --key")
        return members[0]
    if key not in members:
        raise UnreadableInputError(f"{path}: no array {key!r} (arrays: {members})")
    return key


def _open_npz(path: str, key: str | None) -> ArraySource:
    """Streams one member of an .npz: reads rows sequentially from the zip stream."""
    archive = zipfile.ZipFile(path)
    try:
        key = _npz_member(path, archive, key)
        stream = archive.open(key + ".npy")
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise UnreadableInputError(f"{path}[{key}]: unsupported .npy version {version}")
        if dtype.hasobject:
            raise InputError(f"{path}[{key}]: object arrays are not supported")
        if fortran and len(shape) > 1:
            raise InputError(
                f"{path}[{key}]: Fortran-ordered array; save it C-ordered "
                "(np.ascontiguousarray) to stream it"
            )
    except BaseException:
        archive.close()
        raise
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
    position = [0]

    def reader(start: int, stop: int) -> np.ndarray:
        if start != position[0]:  # the batch command reads in order
            raise RuntimeError("the .npz reader is sequential")
        data = stream.read((stop - start) * row_bytes)
        if len(data) != (stop - start) * row_bytes:
            raise UnreadableInputError(f"{path}[{key}]: truncated array data")
        position[0] = stop
        return np.frombuffer(data, dtype=dtype).reshape((stop - start, *shape[1:]))

    def closer() -> None:
        stream.close()
        archive.close()

    return ArraySource(path, key, shape, dtype, reader, closer, sequential=True)


def _hdf5_datasets(handle) -> list[str]:
    names = []

    def visit(name, obj):
        if hasattr(obj, "shape") and hasattr(obj, "dtype"):
            names.append(name)

    handle.visititems(visit)
    return names


def _open_hdf5(path: str, key: str | None) -> ArraySource:
    try:
        import h5py
    except ImportError as error:
        raise ImportError(
            "HDF5 input needs h5py: pip install 'keras-congeal-serving[hdf5]'"
        ) from error
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise UnreadableInputError(f"{path}: cannot open HDF5 file ({error})") from None
    try:
        datasets = _hdf5_datasets(handle)
        if key is None:
            if len(datasets) != 1:
                raise InputError(f"{path}: datasets {datasets}; choose one with --key")
            key = datasets[0]
        if key not in datasets:
            raise UnreadableInputError(f"{path}: no dataset {key!r} (datasets: {datasets})")
        dataset = handle[key]
        return ArraySource(
            path, key, dataset.shape, dataset.dtype, lambda a, b: dataset[a:b], handle.close
        )
    except BaseException:
        handle.close()
        raise


def open_source(
    path: str | os.PathLike,
    key: str | None = None,
    channels: int | None = None,
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    max_set_pixels: int | None = DEFAULT_MAX_SET_PIXELS,
):
    """Opens an input for the batch command; raises `InputError` subclasses.

    Args:
        path: `.npy`, `.npz`, HDF5 file, or a directory of PNG/JPEG files.
        key: optional str. Array name in an `.npz` or dataset path in HDF5
            (optional when the file holds exactly one).
        channels: optional int. For folders: channels the model expects.
        max_image_pixels, max_set_pixels: optional ints. For folders: most
            pixels decoded per image and in all, told from the headers.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        if key is not None:
            raise InputError("--key applies only to .npz and HDF5 input, not to a folder")
        return FolderSource(path, channels, max_image_pixels, max_set_pixels)
    if not os.path.exists(path):
        raise UnreadableInputError(f"{path}: no such file or directory")
    with open(path, "rb") as handle:
        magic = handle.read(8)
    if magic.startswith(_NPY_MAGIC):
        if key is not None:
            raise InputError("--key applies only to .npz and HDF5 input, not to .npy")
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as error:
            raise UnreadableInputError(f"{path}: cannot read .npy ({error})") from None
        return ArraySource(path, None, array.shape, array.dtype, lambda a, b: array[a:b])
    if magic.startswith(_ZIP_MAGIC):
        try:
            return _open_npz(path, key)
        except zipfile.BadZipFile as error:
            raise UnreadableInputError(f"{path}: broken .npz ({error})") from None
    if magic == _HDF5_MAGIC:
        return _open_hdf5(path, key)
    raise UnreadableInputError(f"{path}: not a .npy, .npz or HDF5 file, nor a directory")


def iter_chunks(count: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, count, size):
        yield start, min(start + size, count)
