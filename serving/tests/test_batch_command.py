"""The batch command `python -m keras_congeal_serving align`, end to end."""

import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
from PIL import Image

from keras_congeal_serving.__main__ import main
from keras_congeal_serving.testing import expected_translation, translation_matrices

ERROR_PREFIX = "keras-congeal-serving: error: "


def run(capsys, *args):
    code = main(["align", *map(str, args), "--no-progress"])
    return code, capsys.readouterr().err


def assert_nothing_written(parent, output):
    assert not output.exists()
    leftovers = [p.name for p in parent.iterdir() if p.name.startswith(".")]
    assert not leftovers, leftovers


def save_pngs(folder, images, names):
    folder.mkdir()
    for image, name in zip(images, names, strict=True):
        Image.fromarray(image).save(folder / name)


def test_npy_end_to_end(grey_model, digits, tmp_path, capsys):
    np.save(tmp_path / "digits.npy", digits)
    output = tmp_path / "out"
    code, err = run(
        capsys, grey_model, tmp_path / "digits.npy", "--output", output, "--batch-size", "2"
    )
    assert code == 0, err
    assert sorted(os.listdir(output)) == ["aligned.npy", "report.json", "transforms.npy"]
    aligned = np.load(output / "aligned.npy")
    assert aligned.dtype == np.uint8
    np.testing.assert_array_equal(aligned, expected_translation(digits, (1, 0)))
    transforms = np.load(output / "transforms.npy")
    assert transforms.dtype == np.float64
    np.testing.assert_array_equal(transforms, translation_matrices((1, 0), 5))
    report = json.loads((output / "report.json").read_text())
    assert report["count"] == 5 and report["shape"] == [5, 8, 8]
    assert report["providers"] == ["CPUExecutionProvider"]
    assert report["model"]["metadata"]["image_height"] == 8
    assert report["seconds"] > 0 and report["images_per_second"] > 0
    assert "aligned 5 images" in err
    assert_nothing_written(tmp_path, tmp_path / "nothing")  # no temporary directory left


def test_float_npy_gives_float32(grey_model, digits, tmp_path, capsys):
    images = (digits / 255.0)[..., None]  # float64 (N, H, W, 1)
    np.save(tmp_path / "f.npy", images)
    code, err = run(capsys, grey_model, tmp_path / "f.npy", "--output", tmp_path / "out")
    assert code == 0, err
    aligned = np.load(tmp_path / "out" / "aligned.npy")
    assert aligned.dtype == np.float32 and aligned.shape == (5, 8, 8, 1)
    np.testing.assert_allclose(aligned, expected_translation(images, (1, 0)), atol=1e-6)


def test_hdf5_with_key_is_read_lazily(grey_model, digits, tmp_path, capsys):
    with h5py.File(tmp_path / "data.h5", "w") as f:
        f.create_dataset("train/images", data=digits, chunks=(2, 8, 8))
        f.create_dataset("train/labels", data=np.arange(5))
    code, err = run(
        capsys,
        grey_model,
        tmp_path / "data.h5",
        "--key",
        "train/images",
        "--output",
        tmp_path / "out",
        "--batch-size",
        "2",
    )
    assert code == 0, err
    np.testing.assert_array_equal(
        np.load(tmp_path / "out" / "aligned.npy"), expected_translation(digits, (1, 0))
    )
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["input"]["key"] == "train/images"


def test_npz_member_is_streamed(grey_model, digits, tmp_path, capsys):
    np.savez_compressed(tmp_path / "data.npz", images=digits, labels=np.arange(5))
    code, err = run(
        capsys,
        grey_model,
        tmp_path / "data.npz",
        "--key",
        "images",
        "--output",
        tmp_path / "out",
        "--batch-size",
        "3",
    )
    assert code == 0, err
    np.testing.assert_array_equal(
        np.load(tmp_path / "out" / "aligned.npy"), expected_translation(digits, (1, 0))
    )


def test_png_folder(grey_model, digits, tmp_path, capsys):
    names = ["b.png", "a.png", "c.png", "e.png", "d.png"]
    save_pngs(tmp_path / "images", digits, names)
    code, err = run(
        capsys, grey_model, tmp_path / "images", "--output", tmp_path / "out", "--batch-size", "2"
    )
    assert code == 0, err
    filenames = json.loads((tmp_path / "out" / "filenames.json").read_text())
    assert filenames == sorted(names)
    order = [names.index(n) for n in filenames]
    aligned = np.load(tmp_path / "out" / "aligned.npy")
    # Grey folders give (N, H, W), like `python -m keras_congeal congeal`.
    assert aligned.shape == (5, 8, 8) and aligned.dtype == np.uint8
    np.testing.assert_array_equal(aligned, expected_translation(digits[order], (1, 0)))


def test_rgb_folder_with_jpeg(rgb_model, tmp_path, capsys):
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, size=(2, 8, 8, 3), dtype=np.uint8)
    save_pngs(tmp_path / "images", images, ["a.png", "b.jpg"])
    code, err = run(capsys, rgb_model, tmp_path / "images", "--output", tmp_path / "out")
    assert code == 0, err
    aligned = np.load(tmp_path / "out" / "aligned.npy")
    assert aligned.shape == (2, 8, 8, 3)
    np.testing.assert_array_equal(aligned[:1], expected_translation(images[:1], (0, 1)))


def test_mixed_sizes_with_any_size_model(any_size_model, tmp_path, capsys):
    small = np.arange(40, dtype=np.uint8).reshape(5, 8)
    large = np.arange(120, dtype=np.uint8).reshape(10, 12)
    save_pngs(tmp_path / "images", [small, large], ["small.png", "large.png"])
    code, err = run(capsys, any_size_model, tmp_path / "images", "--output", tmp_path / "out")
    assert code == 0, err
    assert sorted(os.listdir(tmp_path / "out" / "aligned")) == ["large.png", "small.png"]
    out = np.asarray(Image.open(tmp_path / "out" / "aligned" / "small.png"))
    np.testing.assert_array_equal(out, expected_translation(small[None], (1, 0))[0])
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["aligned"] == "aligned/" and report["count"] == 2


def _nan_array(path):
    images = np.zeros((5, 8, 8), np.float32)
    images[4, 0, 0] = np.nan  # in the last chunk: earlier chunks were already written
    np.save(path, images)


@pytest.mark.parametrize(
    "make_input, extra, message",
    [
        (lambda p: None, [], "no such file or directory"),
        (lambda p: p.write_text("hello"), [], "not a .npy, .npz or HDF5 file"),
        (lambda p: np.save(p, np.zeros((3, 9, 8), np.uint8)), [], "9x8 .* takes 8x8"),
        (lambda p: np.save(p, np.zeros((3, 8, 8, 3), np.uint8)), [], "3 channel"),
        (lambda p: np.save(p, np.zeros((0, 8, 8), np.uint8)), [], "empty"),
        (lambda p: np.save(p, np.zeros((3, 8, 8), np.int32)), [], "unsupported dtype"),
        (_nan_array, ["--batch-size", "2"], "image 4 contains NaN"),
        (lambda p: np.save(p, np.zeros((3, 8, 8), np.uint8)), ["--key", "x"], "--key"),
        (lambda p: np.savez(p, a=np.zeros((3, 8, 8), np.uint8)), ["--key", "b"], "no array 'b'"),
        (
            lambda p: np.savez(p, a=np.zeros((1, 8, 8)), b=np.zeros((1, 8, 8))),
            [],
            "choose one with --key",
        ),
    ],
)
def test_bad_array_input(grey_model, tmp_path, capsys, make_input, extra, message):
    path = tmp_path / "input.bin"
    make_input(path)
    if path.with_suffix(".bin.npy").exists():  # np.save appends .npy
        path.with_suffix(".bin.npy").rename(path)
    if path.with_suffix(".bin.npz").exists():
        path.with_suffix(".bin.npz").rename(path)
    output = tmp_path / "sub" / "out"
    code, err = run(capsys, grey_model, path, "--output", output, *extra)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(ERROR_PREFIX), err
    assert __import__("re").search(message, lines[0]), lines[0]
    assert_nothing_written(tmp_path, output)
    assert not (tmp_path / "sub").exists()


def test_bad_hdf5_key(grey_model, digits, tmp_path, capsys):
    with h5py.File(tmp_path / "data.h5", "w") as f:
        f["images"] = digits
        f["labels"] = np.arange(5)
    code, err = run(
        capsys, grey_model, tmp_path / "data.h5", "--key", "imgs", "--output", tmp_path / "out"
    )
    assert code == 1 and "no dataset 'imgs'" in err and "images" in err
    assert_nothing_written(tmp_path, tmp_path / "out")


def _truncated_png(folder):
    """Header fine (it passes the up-front scan), pixel data cut: fails mid-run."""
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(folder / "z.png")
    data = (folder / "z.png").read_bytes()
    (folder / "z.png").write_bytes(data[:60])


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda d: (d / "a.png").write_bytes(b"not really a png"), "not a PNG or JPEG image"),
        (lambda d: (d / "notes.txt").write_text("x"), "not a PNG or JPEG file"),
        (lambda d: Image.new("L", (9, 8)).save(d / "z.png"), "9 .* takes 8x8|8x9"),
        (lambda d: Image.new("RGB", (8, 8)).save(d / "z.png"), "colour"),
        (lambda d: Image.new("I;16", (8, 8)).save(d / "z.png"), "unsupported image mode"),
        (_truncated_png, "z.png: cannot decode image"),
    ],
)
def test_bad_folder(grey_model, tmp_path, capsys, setup, message):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("L", (8, 8)).save(folder / "good.png")
    setup(folder)
    code, err = run(capsys, grey_model, folder, "--output", tmp_path / "out")
    assert code == 1, err
    assert len(err.strip().splitlines()) == 1
    assert __import__("re").search(message, err), err
    assert_nothing_written(tmp_path, tmp_path / "out")


def test_empty_folder(grey_model, tmp_path, capsys):
    (tmp_path / "images").mkdir()
    code, err = run(capsys, grey_model, tmp_path / "images", "--output", tmp_path / "out")
    assert code == 1 and "no PNG or JPEG files" in err


def test_missing_model(tmp_path, digits, capsys):
    np.save(tmp_path / "d.npy", digits)
    code, err = run(
        capsys, tmp_path / "nope.onnx", tmp_path / "d.npy", "--output", tmp_path / "out"
    )
    assert code == 1 and "no such model file" in err
    assert_nothing_written(tmp_path, tmp_path / "out")


def test_existing_output_and_overwrite(grey_model, digits, tmp_path, capsys):
    np.save(tmp_path / "d.npy", digits)
    output = tmp_path / "out"
    output.mkdir()
    (output / "old.txt").write_text("previous result")
    code, err = run(capsys, grey_model, tmp_path / "d.npy", "--output", output)
    assert code == 1 and "--overwrite" in err
    assert (output / "old.txt").read_text() == "previous result"
    # A failing run with --overwrite leaves the old result alone.
    np.save(tmp_path / "bad.npy", np.zeros((2, 3, 3), np.uint8))
    code, err = run(capsys, grey_model, tmp_path / "bad.npy", "--output", output, "--overwrite")
    assert code == 1 and (output / "old.txt").exists()
    code, err = run(capsys, grey_model, tmp_path / "d.npy", "--output", output, "--overwrite")
    assert code == 0, err
    assert sorted(os.listdir(output)) == ["aligned.npy", "report.json", "transforms.npy"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_refuses_to_overwrite_the_input(grey_model, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("L", (8, 8)).save(folder / "a.png")
    code, err = run(capsys, grey_model, folder, "--output", folder, "--overwrite")
    assert code == 1 and "refusing" in err
    assert (folder / "a.png").exists()


def test_module_entry_point_in_a_subprocess(grey_model, digits, tmp_path):
    np.save(tmp_path / "d.npy", digits)
    ok = subprocess.run(
        [
            sys.executable,
            "-m",
            "keras_congeal_serving",
            "align",
            grey_model,
            str(tmp_path / "d.npy"),
            "--output",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "out" / "aligned.npy").exists()
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "keras_congeal_serving",
            "align",
            grey_model,
            str(tmp_path / "missing.npy"),
            "--output",
            str(tmp_path / "out2"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines() == [
        f"{ERROR_PREFIX}{tmp_path / 'missing.npy'}: no such file or directory"
    ]
    assert not (tmp_path / "out2").exists()


def test_usage_errors(capsys):
    with pytest.raises(SystemExit) as info:
        main(["align", "m.onnx", "x.npy"])  # no --output
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["align", "m.onnx", "x.npy", "--output", "o", "--batch-size", "0"])
    assert info.value.code == 2


def run_module(*args, umask=None):
    """`python -m keras_congeal_serving align ARGS` in a subprocess (optionally under a umask)."""
    return subprocess.run(
        [sys.executable, "-m", "keras_congeal_serving", "align", *map(str, args), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=None if umask is None else (lambda: os.umask(umask)),
    )


def test_decompression_bomb_in_a_folder_is_one_line(grey_model, tmp_path, bomb_png):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("L", (8, 8)).save(folder / "a.png")
    (folder / "b.png").write_bytes(bomb_png(30000, 30000))
    result = run_module(grey_model, folder, "--output", tmp_path / "out")
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(ERROR_PREFIX), result.stderr
    assert "b.png" in lines[0] and "900000000 pixels" in lines[0], lines[0]
    assert_nothing_written(tmp_path, tmp_path / "out")


@pytest.mark.parametrize(
    "sizes, options, message",
    [
        # Headers claim 5000x5000 (no pixel data): refused from the header, never decoded.
        ([(8, 8), (5000, 5000)], [], "b.png: 5000x5000 image has 25000000 pixels; at most"),
        ([(8, 8), (8, 8)], ["--max-image-pixels", "63"], "a.png: 8x8 image has 64 pixels"),
        ([(8, 8), (8, 8), (8, 8)], ["--max-set-pixels", "150"], "192 pixels in all"),
    ],
)
def test_decoded_pixel_caps_per_image_and_per_set(
    any_size_model, tmp_path, bomb_png, capsys, sizes, options, message
):
    folder = tmp_path / "images"
    folder.mkdir()
    for name, (width, height) in zip("abc"[: len(sizes)], sizes, strict=True):
        if width * height > 10**6:
            (folder / f"{name}.png").write_bytes(bomb_png(width, height))
        else:
            Image.new("L", (width, height)).save(folder / f"{name}.png")
    code, err = run(capsys, any_size_model, folder, "--output", tmp_path / "out", *options)
    assert code == 1, err
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert_nothing_written(tmp_path, tmp_path / "out")


def test_float_images_scaled_0_255_are_refused(grey_model, digits, tmp_path):
    """The same rule and message as `python -m keras_congeal congeal` (keras_congeal/io.py)."""
    np.save(tmp_path / "f.npy", digits.astype(np.float32))  # 0..255 as float
    result = run_module(grey_model, tmp_path / "f.npy", "--output", tmp_path / "out")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0] == (
        f"{ERROR_PREFIX}{tmp_path / 'f.npy'}: float images must lie in [0, 1], found values in "
        f"[{digits.min():g}, {digits.max():g}]; rescale them (e.g. divide by 255) or pass uint8"
    )
    assert_nothing_written(tmp_path, tmp_path / "out")
    # Within the tolerance of 1e-3 (rounding errors) it passes.
    np.save(tmp_path / "ok.npy", (digits / 255.0 * 1.0005 - 0.0002).astype(np.float32))
    result = run_module(grey_model, tmp_path / "ok.npy", "--output", tmp_path / "out")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_outputs_follow_the_umask(grey_model, digits, tmp_path, umask):
    np.save(tmp_path / "d.npy", digits)
    result = run_module(grey_model, tmp_path / "d.npy", "--output", tmp_path / "out", umask=umask)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o777 & ~umask
    for name in ("aligned.npy", "transforms.npy", "report.json"):
        assert (tmp_path / "out" / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
