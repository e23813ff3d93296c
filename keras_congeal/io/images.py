"""Reading image sets, for the command line and the Python API.

Inputs (`open_images`), told apart by their first bytes, not their names:

* `.npy`: memory-mapped (`np.load(mmap_mode="r")`).
* `.npz`: the array `key` (optional when the file holds one). A member stored
  uncompressed (`np.savez`) is memory-mapped inside the archive; a compressed
  one (`np.savez_compressed`) is first unpacked, streaming, into a temporary
  `.npy` (in `$TMPDIR`) that `close()` deletes.
* HDF5: the dataset `key` (a path such as `train/images`; optional when the
  file holds one), read lazily through h5py, slice by slice.
* a directory of PNG/JPEG files: sorted by name, headers checked first (sizes,
  modes, the pixel budgets below), then decoded into one in-memory uint8
  stack, `(N, H, W)` grey or `(N, H, W, 3)` RGB. Which files are images: a
  name ending in `.png`, `.jpg` or `.jpeg` (any case) is an image, even when
  it starts with a dot (`..png`, `.a.png` are read); skipped are
  sub-directories, macOS resource forks (`._name.png`, not images) and other
  hidden files whose names are not image names (`.DS_Store`, `.gitignore`).
  Any other file is an error.

Budgets, checked from the headers before anything is decoded or unpacked:
`MAX_IMAGE_PIXELS` per image (any input), `MAX_FOLDER_BYTES` for a folder's
decoded stack, `MAX_UNPACKED_BYTES` for a compressed `.npz` member unpacked
to `$TMPDIR` (and no more than the free space there). Larger sets belong in
a `.npy`, an uncompressed `.npz` or HDF5, read lazily.

Arrays are `(N, H, W)` or `(N, H, W, C)` with `C` 1 or 3, uint8 (0..255) or
float ([0, 1]). Every problem raises `InputError` with a one-line message
naming the file.
"""

import os
import re
import shutil
import tempfile
import warnings
import zipfile

import numpy as np

from keras_congeal.io.atomic import InputError, unlink_quietly

__all__ = [
    "IMAGE_SUFFIXES",
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
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
CHANNELS = (1, 3)
# Images read at a time when scanning or copying.
CHUNK_SIZE = 4096
# Pixels of one image (8192 x 8192): the aligner trains at the images' size,
# far below this; PIL's own bomb limit (~179 M pixels) is not reached.
MAX_IMAGE_PIXELS = 1 << 26
# Bytes of a folder's decoded uint8 stack (held in memory).
MAX_FOLDER_BYTES = 1 << 31
# Bytes of a compressed .npz member unpacked to $TMPDIR.
MAX_UNPACKED_BYTES = 1 << 32

_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
# Pillow mode -> mode converted to. Alpha is dropped, palettes expanded;
# 16-bit and float modes are refused (their scale is not 0..255).
_PIL_MODES = {
    "1": "L", "L": "L", "LA": "L", "P": "RGB", "PA": "RGB", "RGB": "RGB", "RGBA": "RGB",
    "CMYK": "RGB", "YCbCr": "RGB",
}


# === Reading ===


def value_range_of(dtype):
    """The value of white for images of `dtype`: 255 for uint8, else 1."""
    dtype = np.dtype(dtype)
    if dtype == np.uint8:
        return 255.0
    if dtype == np.uint16:
        return 65535.0
    if np.issubdtype(dtype, np.floating):
        return 1.0
    raise ValueError(f"Unsupported image dtype {dtype}: expected uint8, uint16 or float.")


def _gib(count):
    return f"{count / (1 << 30):.3g} GiB"


def _check_image_pixels(name, width, height):
    if width * height > MAX_IMAGE_PIXELS:
        raise InputError(
            f"{name}: {width}x{height} pixels ({width * height:,}) in one image; at most "
            f"{MAX_IMAGE_PIXELS:,} pixels per image are accepted (downscale it)"
        )


class ImagesView:
    """The first `count` images of an array-like, read lazily.

    Slicing an h5py dataset reads it; this view only passes the reads on, so
    the training loop still reads one batch at a time. Supports what
    `ImageBatches`, `fit_congealer` and `choose_reference` use: `len`,
    `shape`, `dtype`, `ndim`, slices and sorted integer arrays.

    Args:
        images: array-like (N, ...) (NumPy array, memory map, h5py dataset).
        count: int. Images kept (`None`: all).
        add_channel: bool. Add a trailing channel axis to (N, H, W) images.
    """

    def __init__(self, images, count=None, add_channel=False):
        self.base = images
        self.count = len(images) if count is None else min(int(count), len(images))
        self.add_channel = add_channel
        shape = (self.count, *images.shape[1:])
        self.shape = (*shape, 1) if add_channel else shape
        self.dtype = np.dtype(images.dtype)
        self.ndim = len(self.shape)

    def __len__(self):
        return self.count

    def __getitem__(self, key):
        if isinstance(key, slice):
            key = slice(*key.indices(self.count))
        elif isinstance(key, (int, np.integer)):
            if not -self.count <= key < self.count:
                raise IndexError(f"index {key} out of range for {self.count} images")
            key = int(key) % self.count
        else:
            key = np.asarray(key)
            if key.size and (key.min() < 0 or key.max() >= self.count):
                raise IndexError(f"indices out of range for {self.count} images")
        values = np.asarray(self.base[key])
        return values[..., None] if self.add_channel else values

    def __array__(self, dtype=None, copy=None):
        values = self[:]
        return values if dtype is None else values.astype(dtype)


class ImageSource:
    """An opened image set: `images`, `filenames`, `close()`.

    Attributes:
        images: array-like (N, H, W) or (N, H, W, C): a memory map, an h5py
            dataset or an in-memory array (folders, the demo).
        filenames: list of str (folder input) or `None`.
        kind: str. `"npy"`, `"npz"`, `"hdf5"`, `"folder"` or `"array"`.
        path: str or `None`. Where it was read from.
        key: str or `None`. The array's name in an `.npz`/HDF5 file.
    """

    def __init__(self, images, filenames=None, kind="array", path=None, key=None, closers=()):
        self.images = images
        self.filenames = filenames
        self.kind = kind
        self.path = path
        self.key = key
        self._closers = list(closers)

    @property
    def name(self):
        """How messages name the input: `path`, `path[key]` or `kind`."""
        if self.path is None:
            return self.kind
        return f"{self.path}[{self.key}]" if self.key is not None else self.path

    @property
    def image_shape(self):
        """`(H, W, C)` of one image."""
        shape = tuple(int(s) for s in self.images.shape[1:])
        return shape if len(shape) == 3 else (*shape, 1)

    def close(self):
        while self._closers:
            self._closers.pop()()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def open_images(path, key=None, check=True):
    """Opens an image set for reading, lazily where the format allows.

    Args:
        path: a `.npy`, `.npz` or HDF5 file, or a directory of PNG/JPEG files.
        key: str. The array of an `.npz` or the dataset of an HDF5 file
            (needed when the file holds several).
        check: bool. Check the shape and dtype (see `check_images`).

    Returns:
        An `ImageSource`; close it (or use it in a `with` block).

    Raises:
        InputError: a missing or unreadable file, an unknown `key` (the
        message lists the available ones), a non-image file or mixed sizes
        in a folder, an empty set, or a shape or dtype that is not an image
        set's.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        if key is not None:
            raise InputError(f"{path}: --key applies to .npz and HDF5 files, not to a folder")
        source = _open_folder(path)
    else:
        source = _open_file(path, key)
    if check:
        try:
            check_images(source.images, source.name)
        except BaseException:
            source.close()
            raise
    return source


def check_images(images, name):
    """Raises `InputError` unless `images` is a non-empty image set.

    Expected: shape (N, H, W) or (N, H, W, C) with C in (1, 3); dtype uint8
    or float.
    """
    shape = tuple(images.shape)
    if len(shape) not in (3, 4):
        raise InputError(
            f"{name}: array of shape {shape}; expected images (N, height, width) or "
            "(N, height, width, channels)"
        )
    if len(shape) == 4 and shape[3] not in CHANNELS:
        raise InputError(
            f"{name}: images with {shape[3]} channels (shape {shape}); expected 1 (grey) "
            "or 3 (RGB)"
        )
    dtype = np.dtype(images.dtype)
    if dtype != np.uint8 and not np.issubdtype(dtype, np.floating):
        raise InputError(
            f"{name}: unsupported dtype {dtype}; expected uint8 (0..255) or float "
            "(0..1); convert it, e.g. with .astype(np.uint8)"
        )
    if shape[0] == 0:
        raise InputError(f"{name}: no images (shape {shape})")
    if min(shape[1:3]) == 0:
        raise InputError(f"{name}: empty images (shape {shape})")
    _check_image_pixels(name, shape[2], shape[1])


def scan_values(images, name, chunk_size=CHUNK_SIZE):
    """Checks float images chunk by chunk: finite, within [0, 1].

    uint8 images need no scan. A small tolerance (1e-3) lets rounding errors
    through.

    Returns:
        `(minimum, maximum)` over the set (floats), or `None` for uint8.

    Raises:
        InputError: NaN or infinite values (the first image with one is
        named), or values outside [0, 1].
    """
    if np.dtype(images.dtype) == np.uint8:
        return None
    low, high = np.inf, -np.inf
    for start in range(0, len(images), chunk_size):
        chunk = np.asarray(images[start:start + chunk_size])
        finite = np.isfinite(chunk)
        if not finite.all():
            first = start + int(np.argmin(finite.reshape(len(chunk), -1).all(axis=1)))
            raise InputError(f"{name}: image {first} contains NaN or infinite values")
        low, high = min(low, float(chunk.min())), max(high, float(chunk.max()))
    if low < -1e-3 or high > 1 + 1e-3:
        raise InputError(
            f"{name}: float images must lie in [0, 1], found values in [{low:g}, {high:g}]; "
            "rescale them (e.g. divide by 255) or pass uint8"
        )
    return low, high


def _open_file(path, key):
    try:
        with open(path, "rb") as f:
            magic = f.read(8)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file or directory") from None
    except OSError as error:
        raise InputError(f"{path}: cannot read ({error.strerror or error})") from None
    if magic.startswith(_NPY_MAGIC):
        if key is not None:
            raise InputError(f"{path}: --key applies to .npz and HDF5 files, not to .npy")
        return ImageSource(_load_npy(path, path), kind="npy", path=path)
    if magic.startswith(_ZIP_MAGIC):
        return _open_npz(path, key)
    if magic == _HDF5_MAGIC:
        return _open_hdf5(path, key)
    if path.lower().endswith(IMAGE_SUFFIXES):
        raise InputError(
            f"{path}: a single image; pass the directory holding the images instead"
        )
    raise InputError(f"{path}: not a .npy, .npz or HDF5 file, nor a directory of images")


def _load_npy(path, name):
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise InputError(f"{name}: cannot read the .npy array ({reason})") from None


def _open_npz(path, key):
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise InputError(f"{path}: not a readable .npz ({error})") from None
    with archive:
        members = {n[:-4]: n for n in archive.namelist() if n.endswith(".npy")}
        if not members:
            raise InputError(f"{path}: a zip file without arrays (not an .npz)")
        key = _pick_key(path, sorted(members), key, "array")
        info = archive.getinfo(members[key])
        name = f"{path}[{key}]"
        if info.compress_type == zipfile.ZIP_STORED:
            images = _map_stored_member(path, archive, info, name)
            return ImageSource(images, kind="npz", path=path, key=key)
        # Compressed: unpack the member (itself a .npy file), streaming. Its
        # size is the zip header's (zipfile never reads past it).
        _check_unpacked_size(name, info.file_size)
        handle, tmp = tempfile.mkstemp(prefix="keras_congeal_", suffix=".npy")
        try:
            with os.fdopen(handle, "wb") as out, archive.open(info) as member:
                shutil.copyfileobj(member, out, 16 << 20)
            images = _load_npy(tmp, name)
        except BaseException:
            os.unlink(tmp)
            raise
    return ImageSource(images, kind="npz", path=path, key=key,
                       closers=[lambda: unlink_quietly(tmp)])


def check_model_file(path):
    """Raises `InputError` unless `path` is an existing file (a `.keras` model)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"{path}: no such model file")
    if not os.path.isfile(path):
        raise InputError(f"{path}: not a file (expected a .keras model)")


def _check_unpacked_size(name, size):
    """Raises `InputError` if a member of `size` bytes cannot be unpacked to $TMPDIR."""
    advice = ("re-save it uncompressed (np.savez, memory-mapped in place) or as .npy, "
              "or point TMPDIR at a larger disk")
    if size > MAX_UNPACKED_BYTES:
        raise InputError(
            f"{name}: a compressed array of {_gib(size)} unpacked; at most "
            f"{_gib(MAX_UNPACKED_BYTES)} are unpacked to a temporary file: {advice}"
        )
    tmpdir = tempfile.gettempdir()
    free = shutil.disk_usage(tmpdir).free
    if size > free:
        raise InputError(
            f"{name}: a compressed array of {_gib(size)} unpacked, but {tmpdir} has "
            f"{_gib(free)} free: {advice}"
        )


def _map_stored_member(path, archive, info, name):
    """A read-only memory map of an uncompressed `.npy` member of a zip."""
    with archive.open(info) as member:
        try:
            version = np.lib.format.read_magic(member)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(member)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(member)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
        except ValueError as error:
            raise InputError(f"{name}: cannot read the array header ({error})") from None
        header_size = member.tell()
    if dtype.hasobject:
        raise InputError(f"{name}: an array of Python objects, not images")
    with open(path, "rb") as f:
        # The local file header: 30 bytes, then the name and the extra field.
        f.seek(info.header_offset)
        local = f.read(30)
        data_start = info.header_offset + 30 + int.from_bytes(local[26:28], "little") \
            + int.from_bytes(local[28:30], "little")
    if int(np.prod(shape)) == 0:
        return np.zeros(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=data_start + header_size,
                     shape=shape, order="F" if fortran else "C")


def _pick_key(path, names, key, what):
    """`key` if it is one of `names`, or the only name when `key` is None."""
    if key is None:
        if len(names) != 1:
            raise InputError(
                f"{path}: holds several {what}s ({', '.join(names)}); choose one with --key"
            )
        return names[0]
    if key not in names:
        raise InputError(f"{path}: no {what} {key!r}; available: {', '.join(names)}")
    return key


def _hdf5_datasets(handle):
    names = []
    handle.visititems(lambda name, obj: names.append(name) if hasattr(obj, "dtype") else None)
    return names


def _open_hdf5(path, key):
    import h5py

    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise InputError(f"{path}: cannot open the HDF5 file ({error})") from None
    try:
        datasets = _hdf5_datasets(handle)
        if not datasets:
            raise InputError(f"{path}: an HDF5 file without datasets")
        key = _pick_key(path, datasets, None if key is None else key.strip("/"), "dataset")
        return ImageSource(handle[key], kind="hdf5", path=path, key=key, closers=[handle.close])
    except BaseException:
        handle.close()
        raise


def _pil():
    from PIL import Image

    return Image


def _open_pil(path):
    """Opens an image file, reading only its header; checks its format, mode
    and pixel count (`MAX_IMAGE_PIXELS`) before anything is decoded."""
    image_module = _pil()
    try:
        with warnings.catch_warnings():  # our budget is lower than PIL's warning's
            warnings.simplefilter("ignore", image_module.DecompressionBombWarning)
            image = image_module.open(path)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except image_module.DecompressionBombError as error:
        claimed = re.search(r"\((\d+) pixels\)", str(error))
        claimed = f"{int(claimed.group(1)):,} pixels" if claimed else "too many pixels"
        raise InputError(
            f"{path}: its header claims {claimed}; at most {MAX_IMAGE_PIXELS:,} pixels per "
            "image are accepted"
        ) from None
    except (image_module.UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise InputError(f"{path}: not a readable PNG or JPEG image") from None
    if image.format not in ("PNG", "JPEG"):
        image.close()
        raise InputError(f"{path}: a {image.format} image; expected PNG or JPEG")
    if image.mode not in _PIL_MODES:
        image.close()
        raise InputError(f"{path}: unsupported image mode {image.mode!r}; expected 8-bit "
                         "grey or colour")
    try:
        _check_image_pixels(path, *image.size)
    except InputError:
        image.close()
        raise
    return image


def read_image_file(path, channels=None):
    """Decodes a PNG/JPEG file into uint8 `(H, W)` (grey) or `(H, W, 3)`.

    Args:
        path: the file.
        channels: int. Convert to 1 (grey) or 3 (RGB) channels; `None` keeps
            the file's own.
    """
    with _open_pil(path) as image:
        mode = _PIL_MODES[image.mode]
        if channels is not None:
            mode = "L" if channels == 1 else "RGB"
        try:
            return np.asarray(image.convert(mode), dtype=np.uint8)
        except (OSError, ValueError, SyntaxError) as error:
            raise InputError(f"{path}: cannot decode the image ({error})") from None


def is_listed_image(name):
    """Whether a folder's file `name` is one of its images (see the module doc)."""
    if name.startswith("._"):  # a macOS resource fork, not an image
        return False
    return name.lower().endswith(IMAGE_SUFFIXES) or not name.startswith(".")


def _open_folder(path):
    # Hidden files that are not images are skipped; every other file must be
    # an image (is_listed_image).
    names = sorted(
        entry.name for entry in os.scandir(path)
        if entry.is_file() and is_listed_image(entry.name)
    )
    if not names:
        raise InputError(f"{path}: no PNG or JPEG files in this directory")
    first = None
    for name in names:
        full = os.path.join(path, name)
        if not name.lower().endswith(IMAGE_SUFFIXES):
            raise InputError(
                f"{full}: not a PNG or JPEG file (expected {', '.join(IMAGE_SUFFIXES)})"
            )
        with _open_pil(full) as image:
            size, mode = image.size, _PIL_MODES[image.mode]
        if first is None:
            first = (name, size, mode)
        elif size != first[1]:
            raise InputError(
                f"{full}: {size[0]}x{size[1]} pixels, but {first[0]} is "
                f"{first[1][0]}x{first[1][1]}: all images must have one size"
            )
        elif mode != first[2]:
            kinds = {"L": "grey", "RGB": "colour"}
            raise InputError(
                f"{full}: a {kinds[mode]} image, but {first[0]} is {kinds[first[2]]}: "
                "all images must be grey or all colour"
            )
    width, height = first[1]
    shape = (len(names), height, width) + ((3,) if first[2] == "RGB" else ())
    size = int(np.prod(shape))
    if size > MAX_FOLDER_BYTES:
        raise InputError(
            f"{path}: {len(names)} images of {width}x{height} decode to {_gib(size)}; a "
            f"folder is decoded in memory, at most {_gib(MAX_FOLDER_BYTES)}: store the set "
            "as a .npy or HDF5 file (read lazily), or split it"
        )
    images = np.empty(shape, np.uint8)
    for i, name in enumerate(names):
        images[i] = read_image_file(os.path.join(path, name))
    return ImageSource(images, filenames=names, kind="folder", path=path)
