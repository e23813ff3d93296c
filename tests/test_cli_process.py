"""The command line as a user runs it: the installed entry point in a real
process, its real stderr, and the input checked before any framework loads.

The CI runs this file on TensorFlow (`make test-tensorflow`) and on JAX
(`make test-jax`); the processes started here use the suite's backend.
"""

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import keras
import numpy as np
import pytest

from keras_congeal.cli._frameworks import framework_logs_filtered, start_up_noise
from keras_congeal.io import images as io
from tests.conftest import REPO


def entry_point():
    """The installed `keras-congeal` script (else `python -m keras_congeal`)."""
    script = shutil.which("keras-congeal", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "keras_congeal"]


def user_env(pythonpath=()):
    """The environment of a user's shell: this suite's backend, the repository on
    PYTHONPATH, and no TF_CPP_MIN_LOG_LEVEL (importing Keras here set it to 1)."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return {**env, "PYTHONPATH": os.pathsep.join([*map(str, pythonpath), str(REPO)]),
            "KERAS_BACKEND": keras.backend.backend()}


def keras_congeal(args, cwd, pythonpath=(), timeout=180, program=None):
    """Runs `keras-congeal ARGS` (or `program ARGS`, a list) in a real process."""
    env = user_env(pythonpath)
    return subprocess.run([*(program or entry_point()), *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=timeout)


def congeal(args, cwd, pythonpath=(), timeout=180):
    return keras_congeal(["congeal", *args], cwd, pythonpath, timeout)


def png_header(path, width, height, grey=True):
    """A PNG whose header claims `width x height` pixels; its data is a few bytes."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0 if grey else 2, 0, 0, 0)
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                           + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


@pytest.fixture
def no_frameworks(tmp_path):
    """A PYTHONPATH entry on which importing keras, tensorflow or jax ends the
    process with status 3: a command that reaches them did not check first."""
    fake = tmp_path / "fake_frameworks"
    for name in ("keras", "tensorflow", "jax"):
        (fake / name).mkdir(parents=True)
        (fake / name / "__init__.py").write_text(
            f"import sys\nsys.stderr.write('{name} imported\\n')\nsys.exit(3)\n")
    return fake


def _one_line(result, match):
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("keras-congeal: error: "), result.stderr
    assert match in lines[0], result.stderr


def test_one_pixel_images_one_line_on_the_real_stderr(tmp_path):
    # Loads the framework (the size check needs the network): on JAX, absl's
    # and oneDNN's start-up lines used to precede the error.
    np.save(tmp_path / "one.npy", np.zeros((4, 1, 1), np.uint8))
    result = congeal(["one.npy", "-o", "out"], cwd=tmp_path)
    _one_line(result, "one.npy: Images of 1x1 pixels are smaller than this aligner needs")
    assert os.listdir(tmp_path) == ["one.npy"]


def _bomb(tmp_path):
    folder = tmp_path / "bomb"
    folder.mkdir()
    png_header(folder / "huge.png", 30000, 30000)
    return folder, "huge.png: its header claims 900,000,000 pixels; at most 67,108,864"


def _folder_budget(tmp_path):
    # 40 images of 8000 x 8000 (each within the per-image budget): 2.4 GiB decoded.
    folder = tmp_path / "big"
    folder.mkdir()
    for i in range(40):
        png_header(folder / f"{i:02d}.png", 8000, 8000)
    return folder, "40 images of 8000x8000 decode to 2.38 GiB; a folder is decoded in memory"


def _one_image_too_large(tmp_path):
    folder = tmp_path / "large"
    folder.mkdir()
    png_header(folder / "a.png", 10000, 9000)  # over our budget, under PIL's
    return folder, "a.png: 10000x9000 pixels (90,000,000) in one image; at most 67,108,864"


@pytest.mark.parametrize("make", [_bomb, _folder_budget, _one_image_too_large])
def test_pixel_budgets_before_decoding_and_before_the_framework(tmp_path, no_frameworks, make):
    folder, match = make(tmp_path)
    result = congeal([folder, "-o", tmp_path / "out"], cwd=tmp_path,
                     pythonpath=[no_frameworks], timeout=60)
    _one_line(result, match)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_bad_inputs_are_reported_before_the_framework_loads(tmp_path, no_frameworks):
    np.save(tmp_path / "f.npy", np.full((4, 8, 8), 3.0, np.float32))
    for argv, match in [
        (["missing.npy"], "missing.npy: no such file or directory"),
        (["f.npy"], "float images must lie in [0, 1]"),
    ]:
        _one_line(congeal([*argv, "-o", "out"], cwd=tmp_path, pythonpath=[no_frameworks],
                          timeout=60), match)
    # A good input does reach the framework (the fake one exits with 3).
    np.save(tmp_path / "ok.npy", np.zeros((4, 28, 28), np.uint8))
    result = congeal(["ok.npy", "-o", "out"], cwd=tmp_path, pythonpath=[no_frameworks])
    assert result.returncode == 3 and "keras imported" in result.stderr


# === Start-up noise ===

_NOISE = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796083639.634832    7676 port.cc:153] oneDNN custom operations are on. You "
    "may see slightly different numerical results due to floating-point round-off errors.",
    "E0000 00:00:1796083639.634832    7676 port.cc:153] oneDNN custom operations are on.",
    "W0000 00:00:1796083639.634832    7676 cpu_feature_guard.cc:1] This TensorFlow binary is "
    "optimized to use available CPU instructions.",
    "2026-11-30 10:00:00.123456: I tensorflow/core/util/port.cc:113] oneDNN custom operations",
    "E0000 00:00:1796083639.6 1 cuda_dnn.cc:8310] Unable to register cuDNN factory: Attempting "
    "to register factory for plugin cuDNN when one has already been registered",
]
_REAL = [
    "E0000 00:00:1796083639.634832    7676 some_kernel.cc:42] Could not open /data/x: "
    "permission denied",
    "Traceback (most recent call last):",
    "F0000 00:00:1796083639.634832    7676 check.cc:1] Check failed: a == b",
]


def test_start_up_noise_is_told_from_real_errors():
    assert [line for line in _NOISE if not start_up_noise(line)] == []
    assert [line for line in _REAL if start_up_noise(line)] == []


def test_framework_logs_filtered_keeps_real_errors(capfd):
    text = "\n".join(_NOISE[:3] + _REAL[:1] + _NOISE[3:] + _REAL[1:]) + "\n"
    with framework_logs_filtered():
        os.write(2, text.encode())
    assert capfd.readouterr().err.splitlines() == _REAL
    with pytest.raises(RuntimeError), framework_logs_filtered():  # a failure: all of it
        os.write(2, text.encode())
        raise RuntimeError
    assert capfd.readouterr().err == text


# === Which files of a folder are images; .npz unpacking budget ===


def test_folder_image_names(tmp_path):
    digit = np.arange(64, dtype=np.uint8).reshape(8, 8)
    from PIL import Image

    for name in ("..png", ".a.png", "b.PNG", "c.jpeg"):
        Image.fromarray(digit).save(tmp_path / name, format="JPEG" if "jp" in name else "PNG")
    (tmp_path / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (tmp_path / "._b.PNG").write_bytes(b"\0\5\26\7 AppleDouble resource fork")
    (tmp_path / "sub").mkdir()
    with io.open_images(tmp_path) as source:
        assert source.filenames == ["..png", ".a.png", "b.PNG", "c.jpeg"]
        assert source.images.shape == (4, 8, 8)


def test_compressed_npz_member_budget(tmp_path, monkeypatch):
    np.savez_compressed(tmp_path / "z.npz", images=np.zeros((64, 28, 28), np.uint8))
    monkeypatch.setattr(io, "MAX_UNPACKED_BYTES", 64 * 28 * 28 - 1)  # the member is larger
    monkeypatch.setattr(io.tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    with pytest.raises(io.InputError, match=r"z\.npz\[images\]: a compressed array of .* "
                       r"unpacked; at most .* re-save it uncompressed"):
        io.open_images(tmp_path / "z.npz")
    assert os.listdir(tmp_path / "tmp") == []  # nothing unpacked
    monkeypatch.setattr(io, "MAX_UNPACKED_BYTES", 1 << 30)
    with io.open_images(tmp_path / "z.npz") as source:
        assert source.images.shape == (64, 28, 28)


# === Ctrl-C ===


def _interrupt_when(process, ready, timeout=120):
    """Sends SIGINT to `process` once `ready()` holds; returns its (rc, stderr)."""
    import signal
    import time

    deadline = time.monotonic() + timeout
    while not ready() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=timeout)
    return process.returncode, err


def _interrupted_run(tmp_path, moment):
    """Starts a tiny `congeal`, sends SIGINT at `moment`: `(argv, env, rc, stderr)`."""
    from keras_congeal.data import load_demo

    np.save(tmp_path / "x.npy", load_demo()["images"][:32])
    argv = [*entry_point(), "congeal", "x.npy", "-o", "out", "--epochs", "3",
            "--batch-size", "16", "--quiet"]
    env = user_env()
    history = tmp_path / "out.partial" / "history.jsonl"
    ready = {
        "set-up": lambda: (tmp_path / "out.partial").exists(),
        # Right after an epoch's log line: the backup of that epoch is being written.
        "checkpoint": lambda: history.exists() and history.read_text().count("\n") >= 1,
    }[moment]
    process = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    code, err = _interrupt_when(process, ready)
    if code == 0:
        pytest.skip(f"the run ended before the signal ({moment})")
    return argv, env, code, err


@pytest.mark.slow
def test_ctrl_c_while_a_checkpoint_is_written_exits_130_and_resumes(tmp_path):
    # A Ctrl-C that cut latest.weights.h5 in half left a .partial that --resume
    # could not load; on JAX a Ctrl-C once ended in SIGSEGV.
    argv, env, code, err = _interrupted_run(tmp_path, "checkpoint")
    assert code == 130, err[-3000:]
    assert "--resume" in err and "Traceback" not in err, err[-3000:]
    result = subprocess.run([*argv, "--resume"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert {"model.keras", "aligned.npy", "report.json"} <= set(os.listdir(tmp_path / "out"))


def test_ctrl_c_during_set_up_exits_130(tmp_path):
    _, _, code, err = _interrupted_run(tmp_path, "set-up")
    assert code == 130, err[-3000:]
    assert len(err.splitlines()) == 1 and "interrupted" in err, err


def test_preset_lfw_uses_the_face_settings(tmp_path):
    # `congeal FACES --preset lfw`, nothing else: the face defaults of
    # keras_congeal.presets, said in the summary and written to settings.json.
    from keras_congeal.presets import preset_settings

    rng = np.random.default_rng(0)
    np.save(tmp_path / "faces.npy", rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8))
    done = congeal(["faces.npy", "--preset", "lfw", "--output", "out", "--min-steps", "4",
                    "--epochs", "1", "--batch-size", "8", "--quiet"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # a normal --quiet run: no framework log line either
    settings = json.loads((tmp_path / "out" / "settings.json").read_text())
    expected = {**preset_settings("lfw"), "min_steps": 4, "epochs": 1, "batch_size": 8}
    assert {k: settings[k] for k in expected} == expected
    assert settings["preset"] == "lfw"
    assert "lfw preset, similarity, D, 2 epochs" in done.stdout
    assert "local-contrast vs batch-mean" in done.stdout
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["epochs"] == 2  # 12 images in batches of 8: 2 steps an epoch, 4 steps


def test_devices_flag_errors_are_one_line(tmp_path):
    bad = congeal(["--output", tmp_path / "out", "--devices", "two"], tmp_path)
    assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1, bad.stderr
    assert "--devices" in bad.stderr and "'all' or an integer >= 1" in bad.stderr
    # More devices than the machine has (the tests run with one CPU device).
    many = congeal(["--output", tmp_path / "out", "--devices", "64"], tmp_path)
    _one_line(many, "--devices 64: only 1 local device(s) found")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


# === The export and data commands: checked before any framework loads ===


def _export_and_data_errors(tmp_path):
    """`(arguments, exit status, message)` of bad export and data commands."""
    model = tmp_path / "model.keras"
    model.write_bytes(b"not read: the output is checked first")
    (tmp_path / "taken.onnx").write_bytes(b"keep me")
    return [
        (["export", "missing.keras", "out.onnx"], 1,
         "missing.keras: no such model file"),
        (["export", model, "taken.onnx"], 1, "already exists"),
        (["export", model, "out.onnx", "--batch", "0"], 2,
         "argument --batch: expected 'dynamic' or a positive integer, got '0'"),
        (["export", model, "out.onnx", "--triton-name", "x"], 2,
         "--triton-name needs --triton-repo"),
        (["data", "mnist", "--digit", "12", "--n", "1", "--output", "x.npy"], 2,
         "--digit must be in 0..9, received 12"),
        (["data", "affnist", "--digit", "1", "--n", "4", "--sigma", "0.1",
          "--output", "x.npy"], 2, "--sigma applies to mnist only, not affnist"),
        (["data", "mnist", "--digit", "1", "--n", "4", "--output", "x.txt"], 2,
         "'x.txt' (images) must end with one of .npy, .h5, .hdf5"),
        (["data", "mnist", "--digit", "1", "--n", "4", "--mnist", "missing",
          "--output", "x.npy"], 2, "cannot read MNIST: MNIST not found at"),
    ]


def test_export_and_data_subcommands_report_errors_in_one_line(tmp_path, no_frameworks):
    for argv, status, message in _export_and_data_errors(tmp_path):
        before = sorted(os.listdir(tmp_path))
        result = keras_congeal(argv, cwd=tmp_path, pythonpath=[no_frameworks], timeout=60)
        assert result.returncode == status, (argv, result.stderr)
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("keras-congeal: error: "), result.stderr
        assert message in lines[0], (argv, result.stderr)
        assert sorted(os.listdir(tmp_path)) == before, argv


@pytest.mark.parametrize("command, program", [
    ("export", ["-m", "keras_congeal.export"]),
    ("data", ["-m", "keras_congeal.data"]),
])
def test_old_entry_points_give_the_same_errors_under_their_own_name(tmp_path, command,
                                                                      program, no_frameworks):
    name = "keras-congeal-export" if command == "export" else "python -m keras_congeal.data"
    for argv, status, message in _export_and_data_errors(tmp_path):
        if argv[0] != command:
            continue
        result = keras_congeal(argv[1:], cwd=tmp_path, program=[sys.executable, *program],
                               pythonpath=[no_frameworks], timeout=60)
        assert result.returncode == status, (argv, result.stderr)
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"{name}: error: "), result.stderr
        assert message in lines[0], (argv, result.stderr)


def test_subcommand_help_lists_every_command(tmp_path, no_frameworks):
    result = keras_congeal(["--help"], cwd=tmp_path, pythonpath=[no_frameworks], timeout=60)
    assert result.returncode == 0, result.stderr
    for command in ("congeal", "align", "export", "data"):
        assert f"\n    {command} " in result.stdout, result.stdout
    for command, flag in (("export", "--triton-repo"), ("data", "--transforms")):
        result = keras_congeal([command, "--help"], cwd=tmp_path, pythonpath=[no_frameworks],
                               timeout=60)
        assert result.returncode == 0 and flag in result.stdout, result.stderr
