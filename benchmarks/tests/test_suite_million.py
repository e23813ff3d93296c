"""A tiny run of `benchmarks.million`: streamed generation into a `.npy` file,
training from it, chunked alignment, and resuming from `--work-dir`; the file
reader (`NpyRows`) and the per-phase memory figures (`MemoryPeaks`)."""

import json

import numpy as np
import pytest

from benchmarks import common, million

try:
    MNIST = common.resolve_mnist()
except FileNotFoundError:
    MNIST = None

pytestmark = pytest.mark.skipif(MNIST is None, reason="mnist.npz not found")


def test_million_streams_and_resumes(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(million, "BLOCK", 48)  # several generation/alignment blocks
    work, out = tmp_path / "work", tmp_path / "m.json"
    args = ["--n", "120", "--batch-size", "32", "--work-dir", str(work), "--output", str(out)]
    assert million.main(args + ["--epochs", "1"]) == 0
    data = json.loads(out.read_text())
    assert data["schema"] == million.SCHEMA and data["config"]["n"] == 120
    assert data["summary"]["images"] == 120 and data["epochs_run_in_this_process"] == 1
    assert data["summary"]["apsnr_before"] > 0 and 0 < data["summary"]["ink_kept"] < 2
    memory = data["memory"]
    assert memory["image_stack_bytes"] == 120 * 28 * 28
    # 4 steps of 32 (the last one of 24): the first timed apart.
    assert data["steps_run_in_this_process"] == 4
    assert 0 < data["train_first_step_seconds"] < data["train_seconds"]
    assert data["train_steady_images_per_second"] > 0
    assert set(memory["phases"]) == {"imports", "generation", "training", "alignment"}
    assert memory["generation_workers"]["count"] >= 1
    if memory["peak_anon_bytes"] is not None:  # Linux
        for phase in memory["phases"].values():
            assert 0 < phase["anon_bytes"] <= phase["rss_bytes"] <= memory["peak_bytes"]
    assert json.loads((work / "progress.json").read_text())["blocks_done"] == 3
    images = np.load(work / "images.npy")
    assert images.shape == (120, 28, 28) and images.dtype == np.uint8 and images.any()
    assert "N = 120" in capsys.readouterr().out

    # A second call with more epochs reuses the generated set and resumes
    # training after the finished epoch.
    mtime = (work / "images.npy").stat().st_mtime_ns
    assert million.main(args + ["--epochs", "2"]) == 0
    data = json.loads(out.read_text())
    assert data["epochs_run_in_this_process"] == 1 and len(data["history"]["loss"]) == 1
    assert (work / "images.npy").stat().st_mtime_ns == mtime


def test_million_blocks_are_reproducible(tmp_path, monkeypatch):
    from keras_congeal.data.mnist import load_mnist

    monkeypatch.setattr(million, "BLOCK", 50)
    (x, y), _ = load_mnist(MNIST)
    sources = x[y == 3]
    args = million._parser().parse_args(["--n", "100", "--workers", "2"])
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    whole.mkdir()
    resumed.mkdir()
    million.generate(sources, args, whole, lambda message: None)
    first = np.load(whole / "images.npy")
    assert first.shape == (100, 28, 28) and first[-1].any()

    # A run killed after its first block: block 1 on disk, block 2 empty.
    stale = np.zeros_like(first)
    stale[:50] = first[:50]
    np.save(resumed / "images.npy", stale)
    progress = dict(common.read_json(whole / "progress.json"), blocks_done=1)
    common.write_json_atomic(resumed / "progress.json", progress)
    messages = []
    _, workers = million.generate(sources, args, resumed, messages.append)
    assert messages[0] == "resuming generation after block 1" and len(workers) == 1
    np.testing.assert_array_equal(first, np.load(resumed / "images.npy"))

    # One worker makes the same images as several.
    single = tmp_path / "single"
    single.mkdir()
    one_worker = million._parser().parse_args(["--n", "100", "--workers", "1"])
    million.generate(sources, one_worker, single, messages.append)
    np.testing.assert_array_equal(first, np.load(single / "images.npy"))

    # Another configuration in the same directory starts over.
    other = million._parser().parse_args(["--n", "100", "--seed", "1"])
    million.generate(sources, other, resumed, messages.append)
    assert not np.array_equal(first, np.load(resumed / "images.npy"))


def test_million_bad_arguments():
    for bad in (
        ["--n", "0"],
        ["--epochs", "0"],
        ["--digit", "12"],
        ["--protocol", "emnist"],
        ["--workers", "0"],
        ["--train-steps", "0"],
    ):
        with pytest.raises(SystemExit):
            million.main(bad)


@pytest.mark.parametrize("dtype,shape", [(np.uint8, (37, 5, 4)), (np.float32, (37, 5, 4, 3))])
def test_npy_rows_reads_like_the_array(tmp_path, dtype, shape):
    array = np.random.default_rng(0).integers(0, 200, shape).astype(dtype)
    path = tmp_path / "a.npy"
    np.save(path, array)
    rows = million.NpyRows(path)
    assert (len(rows), rows.shape, rows.dtype, rows.ndim) == (37, shape, array.dtype, len(shape))
    assert rows.nbytes == array.nbytes
    for key in (
        0,
        36,
        -1,
        -37,
        slice(None),
        slice(3, 11),
        slice(30, 99),
        slice(5, 2),
        slice(-4, None),
        slice(1, 30, 7),
        slice(None, None, -3),
        np.array([4, 5, 6, 20, 2, 3, 3, 36]),
        np.array([], int),
        [-1, 0],
        np.arange(37) % 3 == 0,
    ):
        np.testing.assert_array_equal(rows[key], array[key], err_msg=repr(key))
    np.testing.assert_array_equal(np.asarray(rows), array)
    for bad in (37, -38, np.array([0, 37])):
        with pytest.raises(IndexError):
            rows[bad]
    with pytest.raises(TypeError):
        rows[np.array([0.5])]
    with pytest.raises(ValueError, match="read-only"):
        rows[0:1] = array[:1]
    rows.close()


def test_npy_rows_writes_contiguous_rows(tmp_path):
    path = tmp_path / "w.npy"
    np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(10, 3, 2)).flush()
    rows = million.NpyRows(path, writable=True)
    block = np.arange(24, dtype=np.uint8).reshape(4, 3, 2)
    rows[5:9] = block
    expected = np.zeros((10, 3, 2), np.uint8)
    expected[5:9] = block
    np.testing.assert_array_equal(np.load(path), expected)
    with pytest.raises(ValueError, match="expected 2 rows"):
        rows[0:2] = block
    with pytest.raises(TypeError):
        rows[0:4:2] = block[:2]
    with pytest.raises(ValueError, match="C-order"):
        np.save(tmp_path / "f.npy", np.asfortranarray(np.zeros((4, 3, 2))))
        million.NpyRows(tmp_path / "f.npy")


@pytest.mark.skipif(not million._memory_status(), reason="needs Linux /proc/self/status")
def test_memory_peaks_tell_anonymous_from_file_backed(tmp_path):
    """A memory-mapped read shows as file-backed memory; positional reads and
    allocations as anonymous memory, freed with the array."""
    size = 64 * 2**20
    path = tmp_path / "big.npy"
    np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(64, 2**20))[:] = 1
    memory = million.MemoryPeaks(interval=0.005).start()
    with memory.phase("pread"):
        rows = million.NpyRows(path)
        total = 0
        for start in range(0, 64, 8):
            total += int(rows[start : start + 8].sum(dtype=np.int64))
        rows.close()
    # The map and the array stay alive to the end of their phase, where the
    # last sample is taken.
    with memory.phase("mmap"):
        mapped = np.load(path, mmap_mode="r")
        total += int(mapped.sum(dtype=np.int64))
    del mapped
    with memory.phase("allocate"):
        block = np.ones(size, np.uint8)
    del block
    memory.stop()
    assert total == 2 * size
    pread, mmap, allocate = (memory.phases[k] for k in ("pread", "mmap", "allocate"))
    assert mmap["file_bytes"] >= pread["file_bytes"] + 0.9 * size
    assert mmap["anon_bytes"] < pread["anon_bytes"] + 0.1 * size
    assert allocate["anon_bytes"] >= pread["anon_bytes"] + 0.9 * size
    assert allocate["file_bytes"] < pread["file_bytes"] + 0.1 * size
    # The exact high-water mark: at least what was resident at the phase's
    # end, and about one array more than the pread phase.
    assert allocate["rss_bytes"] >= allocate["anon_bytes"] + allocate["file_bytes"] - 2**20
    assert allocate["rss_bytes"] < pread["rss_bytes"] + 1.5 * size


def test_step_counter_stops_after_the_limit_and_keeps_steps_asynchronous():
    import keras

    counter = million._step_counter(limit=3)
    # No batch-end hook: Keras need not wait for each step's losses.
    assert type(counter).on_train_batch_end is keras.callbacks.Callback.on_train_batch_end
    counter.set_model(keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)]))
    counter.model.stop_training = False  # as fit sets it
    for step in range(3):
        assert not counter.model.stop_training
        counter.on_train_batch_begin(step)
    assert counter.steps == 3 and counter.model.stop_training  # after the third step
    assert counter.second_step_began is not None


@pytest.mark.parametrize("measure_threads", [1, 3])
def test_align_streamed_measures_every_image_once(measure_threads):
    # A stand-in model whose alignment is known: the pipeline's merged meters
    # equal one meter fed every block in order (a last, shorter block too).
    from keras_congeal.metrics import AlignmentMeter

    class HalvingModel:
        def align(self, images, batch_size):
            assert images.dtype == np.uint8 and len(images) <= batch_size
            floats = images[..., None].astype("float32") / 255.0
            scales = 1.0 + np.arange(len(images))[:, None, None] % 3
            return {"aligned": floats * 0.5, "transforms": np.eye(3) * scales}

    images = np.random.default_rng(0).integers(0, 256, size=(70, 5, 4), dtype=np.uint8)
    meter, seconds = million.align_streamed(
        HalvingModel(), images, 16, log=lambda message: None, measure_threads=measure_threads
    )
    expected = AlignmentMeter()
    for first in range(0, 70, 16):
        block = images[first : first + 16]
        result = HalvingModel().align(block, 16)
        expected.update(block[..., None] / 255.0, result["aligned"], result["transforms"])
    summary, want = meter.summary(), expected.summary()
    assert summary["images"] == 70 and summary["ink_kept"] == pytest.approx(0.5, rel=1e-6)
    for key, value in want.items():
        assert summary[key] == pytest.approx(value, rel=1e-6), key
    assert seconds["measure_threads"] == measure_threads and seconds["align"] > 0
