"""Feeding image sets that may not fit in memory to `Congealer.fit`.

`ImageBatches` is a `keras.utils.PyDataset` over any array-like indexable by
slices (a NumPy array, a `np.load(..., mmap_mode="r")` memory map, an h5py
dataset): it reads one batch at a time, converts it to float32 in [0, 1] and
adds the channel axis of grey images, so the whole set never needs to be in
memory. It works on every Keras backend; on TensorFlow, Keras turns it into a
`tf.data` pipeline itself (also under `MirroredStrategy`).
"""

import math

import keras
import numpy as np

from keras_congeal.io import value_range_of

__all__ = ["ImageBatches", "as_float_images", "value_range_of"]


def as_float_images(batch, data_range=None):
    """A batch (B, H, W[, C]) as float32 (B, H, W, C) in [0, 1]."""
    batch = np.asarray(batch)
    if data_range is None:
        data_range = value_range_of(batch.dtype)
    out = batch.astype("float32") / np.float32(data_range)
    return out[..., None] if out.ndim == 3 else out


class ImageBatches(keras.utils.PyDataset):
    """Batches of images in [0, 1], read lazily from an array-like.

    Args:
        images: array-like (N, H, W) or (N, H, W, C), uint8 or float in [0, 1].
        batch_size: int. Images per batch. Defaults to 64.
        shuffle: bool. Visit the batches in a new random order every epoch.
            Batches are contiguous blocks of the array (cheap to read from
            disk); when the set fits in memory, shuffle the array once
            beforehand for fully random batches. Defaults to `True`.
        seed: int. Seed of the batch order.
        drop_remainder: bool. Skip a last, smaller batch. Defaults to `False`.
        **kwargs: passed to `PyDataset` (`workers`, `use_multiprocessing`,
            `max_queue_size`).
    """

    def __init__(self, images, batch_size=64, shuffle=True, seed=0, drop_remainder=False,
                 **kwargs):
        super().__init__(**kwargs)
        if len(images) == 0:
            raise ValueError("`images` is empty: expected at least one image.")
        if batch_size < 1:
            raise ValueError(f"Expected batch_size >= 1, received {batch_size}.")
        self.images = images
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.drop_remainder = drop_remainder
        self.data_range = value_range_of(images.dtype)
        self._rng = np.random.default_rng(seed)
        self._order = np.arange(len(self))
        self.on_epoch_end()

    def __len__(self):
        n = len(self.images) / self.batch_size
        return max(1, math.floor(n)) if self.drop_remainder else math.ceil(n)

    def __getitem__(self, index):
        start = int(self._order[index]) * self.batch_size
        batch = as_float_images(self.images[start:start + self.batch_size], self.data_range)
        if not np.all(np.isfinite(batch)):
            raise ValueError(
                f"Images {start}..{start + len(batch) - 1} contain NaN or infinite values."
            )
        return batch

    def on_epoch_end(self):
        if self.shuffle:
            self._rng.shuffle(self._order)
