"""Feeding image sets that may not fit in memory to `Congealer.fit`.

`ImageBatches` is a `keras.utils.PyDataset` over any array-like indexable by
slices (a NumPy array, a `np.load(..., mmap_mode="r")` memory map, an h5py
dataset): it reads one batch at a time, converts it to float32 in [0, 1] and
adds the channel axis of grey images, so the whole set never needs to be in
memory. (A memory map keeps the pages it has read resident, as file-backed
memory that the kernel reclaims under pressure: up to the whole file after
an epoch. An array-like that reads each slice into a new array with file
reads, as `benchmarks/million.py` does, keeps one batch resident.) It works
on every Keras backend; on TensorFlow, Keras turns it into a `tf.data`
pipeline itself (also under `MirroredStrategy`).

`DeviceImageBatches` (JAX backend) gives the same batches in the same order
from a copy of the whole set held on the device: uploaded once, block by
block, in its own dtype (uint8 stays uint8), then each batch is sliced and
scaled on the device, with no host-to-device copy per step. This is the input
path of sets that fit in the device's memory: on a GPU, host-fed batches
cap training at a fraction of the step's speed.
"""

import math

import keras
import numpy as np

from keras_congeal.io import value_range_of

__all__ = ["DeviceImageBatches", "ImageBatches", "as_float_images", "value_range_of"]


def as_float_images(batch, data_range=None):
    """A batch (B, H, W[, C]) as float32 (B, H, W, C) in [0, 1]."""
    batch = np.asarray(batch)
    if data_range is None:
        data_range = value_range_of(batch.dtype)
    out = batch.astype("float32")  # a new array: scaled in place, no second copy
    out /= np.float32(data_range)
    return out[..., None] if out.ndim == 3 else out


def _check_finite(images, start):
    """Raises `ValueError` if `images` (float; the set's images from `start` on)
    hold a NaN or an infinite value. Integer images need no check."""
    if not np.all(np.isfinite(images)):
        raise ValueError(
            f"Images {start}..{start + len(images) - 1} contain NaN or infinite values."
        )


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
        multiple_of: int. Cut a last, smaller batch to a multiple of this
            (data parallel training on JAX needs a batch that divides among
            the devices); a batch of fewer images is skipped. Defaults to 1.
        process: `(index, count)`. Multi-host training: every process reads
            only its part of each (global) batch, the `index`-th of `count`
            equal contiguous slices; `multiple_of` must then be a multiple of
            `count`. Defaults to `(0, 1)`: the whole batch.
        wrap_last: bool. Complete a last, smaller batch with the first images
            of the set, so that every batch has `batch_size` images: a
            compiled training step is then traced and compiled for one batch
            shape only (a second shape costs a second compilation, 10-20 s
            on a GPU). Only when the set holds at least `batch_size` images;
            `drop_remainder` and `multiple_of` then cut nothing. Defaults to
            `False`.
        **kwargs: passed to `PyDataset` (`workers`, `use_multiprocessing`,
            `max_queue_size`).
    """

    def __init__(
        self,
        images,
        batch_size=64,
        shuffle=True,
        seed=0,
        drop_remainder=False,
        multiple_of=1,
        process=(0, 1),
        wrap_last=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if len(images) == 0:
            raise ValueError("`images` is empty: expected at least one image.")
        if batch_size < 1:
            raise ValueError(f"Expected batch_size >= 1, received {batch_size}.")
        self.images = images
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        if multiple_of < 1 or self.batch_size % multiple_of:
            raise ValueError(
                f"Expected batch_size ({batch_size}) to be a multiple of "
                f"multiple_of ({multiple_of})."
            )
        index, count = process
        if count < 1 or not 0 <= index < count or multiple_of % count:
            raise ValueError(
                f"Invalid process={process!r}: expected (index, count) with "
                f"0 <= index < count and multiple_of ({multiple_of}) a multiple "
                "of count."
            )
        if len(images) < multiple_of:
            raise ValueError(
                f"{len(images)} image(s) are fewer than multiple_of ({multiple_of}): "
                "no batch would divide among the devices."
            )
        self.process = (int(index), int(count))
        self.wrap_last = bool(wrap_last) and len(images) >= self.batch_size
        last = 0 if self.wrap_last else len(images) % self.batch_size
        # A last batch smaller than `multiple_of` is dropped.
        self.drop_remainder = drop_remainder or (0 < last < multiple_of)
        self._last_size = last - last % multiple_of if last else self.batch_size
        self.data_range = value_range_of(images.dtype)
        self._rng = np.random.default_rng(seed)
        self._order = np.arange(len(self))
        self.on_epoch_end()

    def __len__(self):
        n = len(self.images) / self.batch_size
        return max(1, math.floor(n)) if self.drop_remainder else math.ceil(n)

    def _bounds(self, index):
        """First image and size of batch `index` (in this epoch's order)."""
        block = int(self._order[index])
        size = (
            self._last_size
            if block == math.ceil(len(self.images) / self.batch_size) - 1
            else self.batch_size
        )
        return block * self.batch_size, size

    def _local_bounds(self, index):
        """`_bounds`, narrowed to this process's slice of the batch."""
        start, size = self._bounds(index)
        rank, count = self.process
        size //= count
        return start + rank * size, size

    def _segments(self, start, size):
        """The `(first, stop)` row ranges of `size` images from row `start`,
        continued from the set's first row past its end (`wrap_last`)."""
        total = len(self.images)
        start %= total
        if start + size <= total:
            return [(start, start + size)]
        return [(start, total), (0, start + size - total)]

    def __getitem__(self, index):
        start, size = self._local_bounds(index)
        parts = [self.images[a:b] for a, b in self._segments(start, size)]
        batch = as_float_images(parts[0] if len(parts) == 1 else np.concatenate(parts),
                                self.data_range)
        if self.images.dtype.kind == "f":
            _check_finite(batch, start)
        return batch

    def on_epoch_end(self):
        if self.shuffle:
            self._rng.shuffle(self._order)


class DeviceImageBatches(ImageBatches):
    """`ImageBatches` sliced from a copy of the set on the device (JAX).

    Same arguments and the same batches, in the same order, as
    `ImageBatches`; the set is uploaded once (`UPLOAD_BLOCK` images at a
    time, so the host never holds more than one block beside the source) in
    its own dtype, checked for NaN, and every batch is a jitted slice and
    scale on the device. Under a `keras.distribution` the set is replicated
    on its devices and each batch is laid out for it. Needs the JAX backend.
    """

    UPLOAD_BLOCK = 65536

    def __init__(self, images, *args, **kwargs):  # `ImageBatches`' arguments
        import jax

        super().__init__(images, *args, **kwargs)
        distribution = keras.distribution.distribution()
        sharding = None
        if distribution is not None:  # the set replicated on every device
            sharding = keras.distribution.TensorLayout(
                [None] * 4, distribution.device_mesh
            ).backend_layout
        blocks = []
        for start in range(0, len(images), self.UPLOAD_BLOCK):
            block = np.asarray(images[start : start + self.UPLOAD_BLOCK])
            if block.dtype.kind == "f":
                _check_finite(block, start)
            if block.ndim == 3:
                block = block[..., None]
            blocks.append(jax.device_put(block, sharding))
        self.device_images = blocks[0] if len(blocks) == 1 else jax.numpy.concatenate(blocks)
        del blocks
        data_range = np.float32(self.data_range)

        def take(stack, start, size, wrapped):
            # `wrapped` rows continue from the set's first one (`wrap_last`).
            batch = jax.lax.dynamic_slice_in_dim(stack, start, size - wrapped)
            if wrapped:
                batch = jax.numpy.concatenate([batch, stack[:wrapped]])
            return batch.astype("float32") / data_range  # as `as_float_images`

        self._take = jax.jit(take, static_argnums=(2, 3))

    def __getitem__(self, index):
        start, size = self._bounds(index)
        _, *continued = self._segments(start, size)
        wrapped = continued[0][1] if continued else 0
        # A tuple: Keras takes a bare array only from NumPy.
        return (self._take(self.device_images, start, size, wrapped),)
