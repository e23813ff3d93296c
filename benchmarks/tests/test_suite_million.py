"""A tiny run of `benchmarks.million`: streamed generation into a memory map,
training from it, chunked alignment, and resuming from `--work-dir`."""

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
    assert data["memory"]["image_stack_bytes"] == 120 * 28 * 28
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
    first, _ = million.generate(sources, args, whole, lambda message: None)

    # A run killed after its first block: block 1 on disk, block 2 empty.
    stale = np.zeros_like(first)
    stale[:50] = first[:50]
    np.save(resumed / "images.npy", stale)
    progress = dict(common.read_json(whole / "progress.json"), blocks_done=1)
    common.write_json_atomic(resumed / "progress.json", progress)
    messages = []
    second, _ = million.generate(sources, args, resumed, messages.append)
    assert messages[0] == "resuming generation after block 1"
    np.testing.assert_array_equal(first, second)

    # One worker makes the same images as several.
    single = tmp_path / "single"
    single.mkdir()
    one_worker = million._parser().parse_args(["--n", "100", "--workers", "1"])
    alone, _ = million.generate(sources, one_worker, single, messages.append)
    np.testing.assert_array_equal(first, alone)

    # Another configuration in the same directory starts over.
    other = million._parser().parse_args(["--n", "100", "--seed", "1"])
    third, _ = million.generate(sources, other, resumed, messages.append)
    assert not np.array_equal(first, third)


def test_million_bad_arguments():
    for bad in (["--n", "0"], ["--epochs", "0"], ["--digit", "12"], ["--protocol", "emnist"],
                ["--workers", "0"]):
        with pytest.raises(SystemExit):
            million.main(bad)
