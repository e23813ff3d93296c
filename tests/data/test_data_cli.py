"""The `data` command (`keras_congeal.cli.data`), run in-process on a tiny
synthetic MNIST; its entry points in a real process."""

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from keras_congeal.cli import data as cli
from keras_congeal.data import load_mnist, mnist_digit_indices, perspective_perturbation, perturb


def _run(*args):
    return cli.COMMAND.main([str(a) for a in args] + ["--quiet"])


def test_mnist_writes_images_transforms_originals(fake_mnist, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    code = _run(
        "mnist", "--digit", 3, "--n", 32, "--sigma", 0.2, "--seed", 1, "--mnist", fake_mnist,
        "--output", out / "x.npy", "--transforms", out / "t.npy", "--originals", out / "o.h5",
        "--chunk-size", 8,
    )
    assert code == 0
    assert sorted(os.listdir(out)) == ["o.h5", "t.npy", "x.npy"]  # no temporary left
    images, matrices = np.load(out / "x.npy"), np.load(out / "t.npy")
    with h5py.File(out / "o.h5") as f:
        originals = f["originals"][:]
    (x_train, y_train), _ = load_mnist(fake_mnist)
    np.testing.assert_array_equal(originals, x_train[mnist_digit_indices(y_train, 3, 32, 1)])
    expected, expected_matrices = perspective_perturbation(originals, 0.2, seed=1)
    assert images.shape == (32, 28, 28) and images.dtype == np.uint8
    np.testing.assert_array_equal(matrices, expected_matrices)
    assert np.abs(images.astype(int) - expected).max() <= 1


def test_sigma_zero_is_plain_mnist(fake_mnist, tmp_path):
    assert _run("mnist", "--digit", 0, "--n", 5, "--split", "test", "--mnist", fake_mnist,
                "--output", tmp_path / "x.h5", "--transforms", tmp_path / "t.npy") == 0
    with h5py.File(tmp_path / "x.h5") as f:
        images = f["images"][:]
    (_, _), (x_test, y_test) = load_mnist(fake_mnist)
    np.testing.assert_array_equal(images, x_test[mnist_digit_indices(y_test, 0, 5, 0)])
    np.testing.assert_array_equal(np.load(tmp_path / "t.npy"), np.tile(np.eye(3), (5, 1, 1)))


def test_affnist_and_infimnist(fake_mnist, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_CONGEAL_DATA", str(fake_mnist))
    assert _run("affnist", "--digit", 2, "--n", 32, "--output", tmp_path / "a.npy",
                "--originals", tmp_path / "ao.npy") == 0
    assert np.load(tmp_path / "a.npy").shape == (32, 40, 40)
    assert np.load(tmp_path / "ao.npy").shape == (32, 40, 40)  # padded sources
    # More images than the 40 sources of the digit: sources are reused.
    assert _run("infimnist", "--digit", 5, "--n", 100, "--output", tmp_path / "i.npy",
                "--originals", tmp_path / "io.npy", "--transforms", tmp_path / "it.npy",
                "--chunk-size", 8) == 0
    images, originals = np.load(tmp_path / "i.npy"), np.load(tmp_path / "io.npy")
    assert images.shape == (100, 28, 28) and images.dtype == np.uint8
    assert len(np.unique(originals.reshape(100, -1), axis=0)) <= 40


def test_refuses_to_overwrite(fake_mnist, tmp_path, capsys):
    target = tmp_path / "x.npy"
    target.write_bytes(b"keep me")
    args = ["mnist", "--digit", 1, "--n", 4, "--mnist", fake_mnist, "--output", target]
    with pytest.raises(SystemExit) as exit_info:
        _run(*args)
    assert exit_info.value.code != 0
    assert target.read_bytes() == b"keep me"
    assert sorted(os.listdir(tmp_path)) == ["fake_data", "x.npy"]
    err = capsys.readouterr().err
    assert "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert _run(*args, "--overwrite") == 0
    assert np.load(target).shape == (4, 28, 28)


@pytest.mark.parametrize(
    "args, message",
    [
        (["mnist", "--digit", 11, "--n", 4], "--digit"),
        (["mnist", "--digit", 1, "--n", 0], "--n"),
        (["mnist", "--digit", 1, "--n", 41], "exceeds the 40 images"),
        (["mnist", "--digit", 1, "--n", 4, "--sigma", -0.1], "--sigma"),
        (["affnist", "--digit", 1, "--n", 4, "--sigma", 0.1], "mnist only"),
        (["mnist", "--digit", 1, "--n", 4, "--mnist", "MISSING"], "MNIST not found"),
        (["mnist", "--digit", 1, "--n", 4, "--transforms", "t.txt"], ".npy"),
        (["pnist", "--digit", 1, "--n", 4], "invalid choice"),
    ],
)
def test_bad_arguments_write_nothing(fake_mnist, tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.setenv("KERAS_CONGEAL_DATA", str(fake_mnist))
    monkeypatch.chdir(tmp_path)
    args = [str(fake_mnist / "MISSING") if a == "MISSING" else a for a in args]
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(SystemExit) as exit_info:
        _run(*args, "--output", "x.npy")
    assert exit_info.value.code != 0
    assert sorted(os.listdir(tmp_path)) == before
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_missing_mnist_without_env(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("KERAS_CONGEAL_DATA", raising=False)
    with pytest.raises(SystemExit):
        _run("mnist", "--digit", 1, "--n", 4, "--output", tmp_path / "x.npy")
    assert "KERAS_CONGEAL_DATA" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_failure_midway_leaves_nothing(fake_mnist, tmp_path, monkeypatch):
    def failing(images, sigma, seed, chunk_size):
        yield np.zeros((chunk_size, 28, 28), np.uint8), np.zeros((chunk_size, 3, 3))
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(perturb, "iter_perspective_perturbation", failing)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(RuntimeError, match="disk on fire"):
        _run("mnist", "--digit", 1, "--n", 20, "--chunk-size", 8, "--mnist", fake_mnist,
             "--output", out / "x.npy", "--transforms", out / "t.h5")
    assert os.listdir(out) == []


def test_module_entry_point(tmp_path):
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-m", "keras_congeal.data", "mnist", "--digit", "12", "--n", "1",
         "--output", str(tmp_path / "x.npy")],
        cwd=root, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr  # no framework start-up lines
    assert lines[0].startswith("python -m keras_congeal.data: error: --digit")
    assert os.listdir(tmp_path) == []


def test_subcommand_and_module_write_the_same_files(fake_mnist, tmp_path):
    # `keras-congeal data` and `python -m keras_congeal.data`, in real processes.
    from tests.test_cli_process import keras_congeal

    args = ["mnist", "--digit", 4, "--n", 12, "--sigma", 0.1, "--seed", 3, "--mnist",
            fake_mnist, "--chunk-size", 5, "--quiet"]
    written = {}
    for name, command in (("sub", None), ("module", [sys.executable, "-m",
                                                     "keras_congeal.data"])):
        out = tmp_path / name
        out.mkdir()
        files = ["--output", out / "x.npy", "--transforms", out / "t.h5"]
        argv = [*args, *files] if command else ["data", *args, *files]
        result = keras_congeal(argv, cwd=tmp_path, program=command)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip().endswith("t.h5"), result.stdout
        with h5py.File(out / "t.h5") as f:
            written[name] = np.load(out / "x.npy"), f["transforms"][:]
    (x_train, y_train), _ = load_mnist(fake_mnist)
    expected, matrices = perspective_perturbation(
        x_train[mnist_digit_indices(y_train, 4, 12, 3)], 0.1, seed=3)
    for images, transforms in written.values():
        np.testing.assert_array_equal(transforms, matrices)
        assert images.shape == (12, 28, 28) and np.abs(images.astype(int) - expected).max() <= 1
    np.testing.assert_array_equal(written["sub"][0], written["module"][0])


def test_chunk_size_help_shows_the_generators_default(capsys):
    with pytest.raises(SystemExit):
        cli.COMMAND.main(["--help"])
    assert f"CHUNK_SIZE, {perturb.CHUNK_SIZE})" in " ".join(capsys.readouterr().out.split())
