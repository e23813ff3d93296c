"""`keras_congeal.datasets`: batches read lazily from arrays, memory maps and
HDF5 datasets, checked against slices of hand-made arrays."""

import h5py
import keras
import numpy as np
import pytest

from keras_congeal.datasets import DeviceImageBatches, ImageBatches, as_float_images

# Ten 2x3 grey images whose every pixel tells its image: image i is all i.
COUNTING = np.repeat(np.arange(10, dtype=np.uint8), 6).reshape(10, 2, 3)


def _batches(dataset):
    """The batches of one epoch, as NumPy arrays."""
    return [np.asarray(dataset[i]) for i in range(len(dataset))]


def _image_ids(batch):
    """Which images of `COUNTING` (times 255) a batch holds, in order."""
    return [int(round(float(v))) for v in np.asarray(batch)[:, 0, 0, 0] * 255.0]


class _RecordingArray:
    """An array-like that records the slices read from it."""

    def __init__(self, array):
        self.array = array
        self.shape, self.dtype = array.shape, array.dtype
        self.reads = []

    def __len__(self):
        return len(self.array)

    def __getitem__(self, key):
        self.reads.append((key.start, key.stop))
        return self.array[key]


# === as_float_images ===


def test_as_float_images_scales_and_adds_the_channel_axis():
    grey = np.array([[[0, 51], [255, 102]]], np.uint8)
    out = as_float_images(grey)
    assert out.shape == (1, 2, 2, 1) and out.dtype == np.float32
    np.testing.assert_array_equal(out[..., 0], np.float32([[[0.0, 0.2], [1.0, 0.4]]]))
    rgb = np.full((2, 1, 1, 3), 65535, np.uint16)
    np.testing.assert_array_equal(as_float_images(rgb), np.ones((2, 1, 1, 3), np.float32))
    floats = np.array([[[0.25]]], np.float64)
    np.testing.assert_array_equal(as_float_images(floats), [[[[0.25]]]])
    # An explicit range wins over the dtype's.
    np.testing.assert_array_equal(as_float_images(np.array([[[50]]], np.uint8), 100.0), [[[[0.5]]]])


# === ImageBatches: contiguous batches, lazily read ===


def test_in_order_batches_are_the_slices():
    dataset = ImageBatches(COUNTING, batch_size=4, shuffle=False)
    batches = _batches(dataset)
    assert len(dataset) == 3 and [len(b) for b in batches] == [4, 4, 2]
    assert [_image_ids(b) for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    for batch, start in zip(batches, (0, 4, 8), strict=True):
        np.testing.assert_array_equal(
            batch, COUNTING[start : start + 4, ..., None].astype(np.float32) / 255.0
        )
        assert batch.dtype == np.float32


def test_each_batch_reads_only_its_slice():
    source = _RecordingArray(COUNTING)
    dataset = ImageBatches(source, batch_size=3, shuffle=False)
    assert source.reads == []  # nothing read up front
    dataset[2]
    assert source.reads == [(6, 9)]
    dataset[3]
    assert source.reads == [(6, 9), (9, 10)]  # the last batch: one image


def test_memmap_and_hdf5_give_the_same_batches(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (7, 4, 5, 3), dtype=np.uint8)
    np.save(tmp_path / "x.npy", rgb)
    expected = _batches(ImageBatches(rgb, batch_size=3, shuffle=True, seed=5))
    memmap = np.load(tmp_path / "x.npy", mmap_mode="r")
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f.create_dataset("images", data=rgb)
    with h5py.File(tmp_path / "x.h5", "r") as f:
        for source in (memmap, f["images"]):
            got = _batches(ImageBatches(source, batch_size=3, shuffle=True, seed=5))
            assert len(got) == len(expected) == 3
            for a, b in zip(got, expected, strict=True):
                assert a.shape[1:] == (4, 5, 3)
                np.testing.assert_array_equal(a, b)


# === Shuffling ===


def test_shuffled_epochs_visit_every_image_once():
    dataset = ImageBatches(COUNTING, batch_size=2, shuffle=True, seed=3)
    orders = []
    for _ in range(3):
        batches = _batches(dataset)
        ids = [_image_ids(b) for b in batches]
        # Blocks stay contiguous: (0, 1), (2, 3), ...
        assert all(batch == [batch[0], batch[0] + 1] and batch[0] % 2 == 0 for batch in ids)
        assert sorted(i for batch in ids for i in batch) == list(range(10))
        orders.append([batch[0] for batch in ids])
        dataset.on_epoch_end()
    assert len({tuple(order) for order in orders}) > 1  # a new order per epoch
    assert any(order != list(range(0, 10, 2)) for order in orders)


def test_the_seed_fixes_the_order():
    def first_epoch(seed):
        return [_image_ids(b) for b in _batches(ImageBatches(COUNTING, 2, seed=seed))]

    assert first_epoch(7) == first_epoch(7)
    assert len({tuple(map(tuple, first_epoch(s))) for s in range(5)}) > 1


def test_unshuffled_order_stays_across_epochs():
    dataset = ImageBatches(COUNTING, batch_size=4, shuffle=False)
    first = _batches(dataset)
    dataset.on_epoch_end()
    for a, b in zip(first, _batches(dataset), strict=True):
        np.testing.assert_array_equal(a, b)


# === Remainders, multiples, processes ===


def test_drop_remainder_skips_the_last_smaller_batch():
    dataset = ImageBatches(COUNTING, batch_size=4, shuffle=True, seed=0, drop_remainder=True)
    assert len(dataset) == 2
    for _ in range(4):
        ids = sorted(i for b in _batches(dataset) for i in _image_ids(b))
        assert ids == list(range(8))
        dataset.on_epoch_end()


def test_multiple_of_cuts_the_last_batch():
    # 10 images, batches of 4: the last (2 images) is cut to a multiple of 4: dropped.
    assert [len(b) for b in _batches(ImageBatches(COUNTING, 4, False, multiple_of=4))] == [4, 4]
    # 10 images, batches of 6: the last (4) stays; of 7 images, 1 is cut from it.
    assert [len(b) for b in _batches(ImageBatches(COUNTING, 6, False, multiple_of=2))] == [6, 4]
    seven = ImageBatches(COUNTING[:7], 4, False, multiple_of=2)
    assert [_image_ids(b) for b in _batches(seven)] == [[0, 1, 2, 3], [4, 5]]


def test_processes_read_equal_slices_of_each_batch():
    per_process = [
        _batches(ImageBatches(COUNTING, 4, True, seed=2, multiple_of=2, process=(rank, 2)))
        for rank in range(2)
    ]
    whole = _batches(ImageBatches(COUNTING, 4, True, seed=2, multiple_of=2))
    assert len(per_process[0]) == len(per_process[1]) == len(whole) == 3
    for first, second, batch in zip(*per_process, whole, strict=True):
        assert len(first) == len(second) == len(batch) // 2
        np.testing.assert_array_equal(np.concatenate([first, second]), batch)


# === Errors ===


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"images": COUNTING[:0]}, "`images` is empty"),
        ({"batch_size": 0}, "batch_size >= 1, received 0"),
        ({"batch_size": 5, "multiple_of": 2}, r"batch_size \(5\) to be a multiple of multiple_of"),
        ({"batch_size": 4, "multiple_of": 0}, "multiple_of"),
        ({"batch_size": 4, "multiple_of": 4, "process": (2, 2)}, r"Invalid process=\(2, 2\)"),
        ({"batch_size": 4, "multiple_of": 2, "process": (0, 4)}, "multiple of count"),
        # One image, two devices: the only batch would hold no image.
        ({"images": COUNTING[:1], "batch_size": 4, "multiple_of": 2},
         r"1 image\(s\) are fewer than multiple_of \(2\)"),
    ],
)
def test_bad_arguments(kwargs, match):
    kwargs = {"images": COUNTING, **kwargs}
    with pytest.raises(ValueError, match=match):
        ImageBatches(**kwargs)


def test_unsupported_dtype():
    with pytest.raises(ValueError, match="Unsupported image dtype int32"):
        ImageBatches(COUNTING.astype(np.int32))


def test_nan_is_reported_with_the_batch_images():
    images = np.zeros((6, 2, 2), np.float32)
    images[4, 1, 0] = np.nan
    dataset = ImageBatches(images, batch_size=3, shuffle=False)
    np.testing.assert_array_equal(dataset[0], np.zeros((3, 2, 2, 1)))
    with pytest.raises(ValueError, match=r"Images 3\.\.5 contain NaN or infinite values"):
        dataset[1]


# === DeviceImageBatches (JAX) ===


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="DeviceImageBatches is JAX's")
def test_device_batches_equal_the_host_batches(monkeypatch):
    # Uploaded in blocks of 3 images: the blocks are put back together.
    monkeypatch.setattr(DeviceImageBatches, "UPLOAD_BLOCK", 3)
    rgb = np.random.default_rng(1).integers(0, 256, (10, 2, 3, 3), dtype=np.uint8)
    for images in (rgb, COUNTING):
        host = ImageBatches(images, 4, True, seed=9, multiple_of=2)
        device = DeviceImageBatches(images, 4, True, seed=9, multiple_of=2)
        assert str(device.device_images.dtype) == "uint8"  # uploaded as it is
        for _ in range(2):
            for a, (b,) in zip(
                _batches(host), [device[i] for i in range(len(device))], strict=True
            ):
                np.testing.assert_allclose(np.asarray(b), a, rtol=0, atol=1e-7)
            host.on_epoch_end()
            device.on_epoch_end()


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="DeviceImageBatches is JAX's")
def test_device_batches_refuse_nan():
    images = np.zeros((4, 2, 2), np.float32)
    images[1, 0, 0] = np.inf
    with pytest.raises(ValueError, match="contain NaN or infinite values"):
        DeviceImageBatches(images, 2)


# === wrap_last ===


def test_wrap_last_completes_the_last_batch_from_the_start():
    # 10 images, batches of 4: the last is images 8, 9 then 0, 1.
    dataset = ImageBatches(COUNTING, 4, False, wrap_last=True)
    assert [_image_ids(b) for b in _batches(dataset)] == [
        [0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 1]]
    # Shuffled, every image is in every epoch and every batch is full.
    shuffled = ImageBatches(COUNTING, 4, True, seed=3, wrap_last=True)
    for _ in range(3):
        batches = _batches(shuffled)
        assert [len(b) for b in batches] == [4, 4, 4]
        assert set(i for b in batches for i in _image_ids(b)) == set(range(10))
        shuffled.on_epoch_end()
    # Fewer images than a batch: one smaller batch, as without wrapping.
    assert [len(b) for b in _batches(ImageBatches(COUNTING[:3], 4, False, wrap_last=True))] == [3]


def test_wrap_last_with_processes_reads_slices_of_the_wrapped_batch():
    # Batches of 6 of 10 images: the last is 6..9, 0, 1; its halves 6, 7, 8 and 9, 0, 1.
    halves = [_batches(ImageBatches(COUNTING, 6, False, multiple_of=2, process=(rank, 2),
                                    wrap_last=True)) for rank in range(2)]
    assert [_image_ids(b) for b in halves[0]] == [[0, 1, 2], [6, 7, 8]]
    assert [_image_ids(b) for b in halves[1]] == [[3, 4, 5], [9, 0, 1]]


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="DeviceImageBatches is JAX's")
def test_device_batches_wrap_like_the_host_batches():
    for shuffle in (False, True):
        host = ImageBatches(COUNTING, 4, shuffle, seed=5, wrap_last=True)
        device = DeviceImageBatches(COUNTING, 4, shuffle, seed=5, wrap_last=True)
        for a, (b,) in zip(_batches(host), [device[i] for i in range(len(device))], strict=True):
            np.testing.assert_allclose(np.asarray(b), a, rtol=0, atol=1e-7)
