"""Opening the command line's input, before any framework loads: every check
of the images (format, shape, dtype, pixel budgets, values) runs here, so a bad
input is reported in a second, not after TensorFlow or JAX has started."""

import os

import numpy as np

from keras_congeal.io import ImageSource, ImagesView, open_images, scan_values, value_range_of

__all__ = ["InputSet", "open_input", "images_nhwc"]


class InputSet:
    """An opened, checked input: the source, its (possibly limited) images."""

    def __init__(self, source, images, demo=None):
        self.source = source
        self.images = images
        self.demo = demo  # the `load_demo()` dict, or None
        self.count = len(images)
        self.image_shape = source.image_shape
        self.dtype = np.dtype(images.dtype)
        self.data_range = value_range_of(self.dtype)

    @property
    def filenames(self):
        names = self.source.filenames
        return None if names is None else names[:self.count]

    def describe(self):
        """One line: what the input is."""
        h, w, c = self.image_shape
        kind = "grey" if c == 1 else "RGB"
        what = "the built-in demo set" if self.demo is not None else self.source.name
        return f"{self.count} {kind} images {h}x{w} {self.dtype.name} from {what}"

    def info(self, limit):
        """The input's identity, for report.json and for --resume."""
        return {
            "kind": "demo" if self.demo is not None else self.source.kind,
            "path": None if self.source.path is None else os.path.abspath(self.source.path),
            "key": self.source.key,
            "limit": limit,
            "images": self.count,
            "shape": [int(s) for s in self.images.shape],
            "dtype": self.dtype.name,
        }

    def close(self):
        self.source.close()


def open_input(path, key=None, limit=None):
    """Opens INPUT (or the demo when `path` is None), checks its values.

    Raises:
        InputError: anything wrong with the input (see `keras_congeal.io`).
    """
    demo = None
    if path is None:
        from keras_congeal.data import load_demo

        demo = load_demo()
        source = ImageSource(demo["images"], kind="demo")
    else:
        source = open_images(path, key=key)
    try:
        images = source.images
        if limit is not None or source.kind == "hdf5":
            # Keeps h5py datasets lazy: slicing one would read it.
            images = ImagesView(images, limit)
        if demo is not None and limit is not None:
            demo = {**demo, **{k: demo[k][:limit] for k in ("images", "originals", "matrices")}}
        scan_values(images, source.name)
        return InputSet(source, images, demo)
    except BaseException:
        source.close()
        raise


def images_nhwc(images):
    """`images` with a channel axis, read lazily."""
    return images if images.ndim == 4 else ImagesView(images, add_channel=True)
