"""Tests of the command line `python -m keras_congeal congeal|align`.

Training runs are tiny (64 images or fewer, one or two epochs) and shared
where they can be: one demo run serves the output, report and `align` tests.
"""

import contextlib
import dataclasses
import io
import json
import os
import subprocess
import sys

import h5py
import keras
import numpy as np
import pytest
from PIL import Image

from keras_congeal.cli import SETTING_FLAGS, main
from keras_congeal.data import load_demo
from keras_congeal.metrics import apsnr
from keras_congeal.presets import preset_settings
from keras_congeal.training import CongealSettings
from tests.conftest import REPO

CONGEAL_FILES = {"aligned.npy", "transforms.npy", "report.json", "model.keras", "settings.json",
                 "mean_variance.png", "samples.png", "reference.png"}
ALIGN_FILES = CONGEAL_FILES - {"model.keras", "settings.json"}
TINY = ["--epochs", "1", "--batch-size", "32", "--quiet"]


def run(argv):
    """Runs `main(argv)` in-process: `(exit status, stdout, stderr)`."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exit_:
            code = exit_.code
    return code, out.getvalue(), err.getvalue()


def assert_one_line_error(code, err, match, status=1):
    assert code == status, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("keras-congeal: error: "), err
    assert match in lines[0], err


def assert_rewarp(inputs, aligned, transforms, atol):
    """Each aligned image equals its input warped by its matrix, with an
    independent bilinear warp (scikit-image), where the point falls inside."""
    from skimage.transform import ProjectiveTransform, warp

    inputs = np.asarray(inputs, np.float64)
    aligned = np.asarray(aligned, np.float64)
    if inputs.ndim == 3:
        inputs, aligned = inputs[..., None], aligned[..., None]
    height, width = inputs.shape[1:3]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    points = np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)])
    compared = 0
    for image, result, matrix in zip(inputs, aligned, transforms, strict=True):
        u, v, w = matrix @ points
        u, v = (u / w).reshape(height, width), (v / w).reshape(height, width)
        inside = (u >= 0) & (u <= width - 1) & (v >= 0) & (v <= height - 1)
        for c in range(image.shape[-1]):
            expected = warp(image[..., c], ProjectiveTransform(matrix=matrix), order=1,
                            mode="constant", cval=0.0, preserve_range=True)
            np.testing.assert_allclose(result[..., c][inside], expected[inside], atol=atol)
        compared += inside.sum()
    assert compared > 0.5 * inputs.shape[0] * height * width  # most pixels were checked


def _demo_images(n):
    return load_demo()["images"][:n]


# === Arguments and help ===


def test_every_setting_has_a_flag_and_its_default_in_help():
    assert set(SETTING_FLAGS) == {f.name for f in dataclasses.fields(CongealSettings)}
    code, out, _ = run(["congeal", "--help"])
    assert code == 0
    text = " ".join(out.split())
    defaults = CongealSettings()
    faces = preset_settings("lfw")
    for name, flag in SETTING_FLAGS.items():
        assert flag in text
        value = getattr(defaults, name)
        if name in faces:
            assert f"(default: {value}; lfw: {faces[name]})" in text, name
        elif value is not None:
            assert f"(default: {value})" in text, name


def test_entry_points():
    from keras_congeal import __main__

    assert __main__.main is main
    code, out, _ = run(["--version"])
    assert code == 0 and out.startswith("keras-congeal ")


@pytest.mark.parametrize("argv,match", [
    (["--epochs", "0"], "invalid --epochs 0"),
    (["--learning-rate", "-1"], "invalid --learning-rate -1.0"),
    (["--limit", "0"], "--limit must be >= 1"),
    (["--transform", "shear"], "argument --transform: invalid choice: 'shear'"),
    (["--key", "images"], "--key needs an INPUT file"),
    (["--align-batch-size", "0"], "--align-batch-size must be >= 1"),
])
def test_bad_arguments(tmp_path, argv, match):
    code, _, err = run(["congeal", "--output", tmp_path / "out", *argv])
    assert_one_line_error(code, err, match, status=2)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("flag", ["--align-batch-size", "--batch-size"])
def test_align_batch_size_has_congeals_name_and_keeps_its_first(tmp_path, flag):
    np.save(tmp_path / "x.npy", _demo_images(8))
    code, _, err = run(["align", tmp_path / "model.keras", tmp_path / "x.npy",
                        "--output", tmp_path / "out", flag, "0"])
    assert_one_line_error(code, err, "--align-batch-size must be >= 1", status=2)
    assert not (tmp_path / "out").exists()


# === Bad inputs: one line, non-zero exit, nothing written ===


def _bad_input(tmp_path, case):
    """Creates the input of `case`; returns the extra command-line arguments."""
    images = _demo_images(8)
    if case == "missing":
        return [tmp_path / "missing.npy"]
    if case == "unreadable":
        np.save(tmp_path / "cut.npy", images)
        with open(tmp_path / "cut.npy", "r+b") as f:
            f.truncate(1000)
        return [tmp_path / "cut.npy"]
    if case in ("non_image", "mixed_sizes", "empty_folder"):
        folder = tmp_path / "set"
        folder.mkdir()
        if case != "empty_folder":
            for i, image in enumerate(images[:3]):
                Image.fromarray(image).save(folder / f"{i}.png")
        if case == "non_image":
            (folder / "readme.txt").write_text("not an image")
        if case == "mixed_sizes":
            Image.fromarray(np.zeros((30, 28), np.uint8)).save(folder / "9.png")
        return [folder]
    if case == "wrong_key":
        with h5py.File(tmp_path / "set.h5", "w") as f:
            f.create_dataset("train/images", data=images)
            f.create_dataset("labels", data=np.arange(8))
        return [tmp_path / "set.h5", "--key", "images"]
    if case == "empty":
        np.save(tmp_path / "empty.npy", images[:0])
        return [tmp_path / "empty.npy"]
    if case == "nan":
        floats = images.astype(np.float32) / 255
        floats[6, 3, 3] = np.nan
        np.save(tmp_path / "nan.npy", floats)
        return [tmp_path / "nan.npy"]
    if case == "beyond_one":
        np.save(tmp_path / "f.npy", images.astype(np.float32))
        return [tmp_path / "f.npy"]
    if case == "too_small":
        np.save(tmp_path / "small.npy", images[:, :10, :10])
        return [tmp_path / "small.npy"]
    if case == "key_on_npy":
        np.save(tmp_path / "x.npy", images)
        return [tmp_path / "x.npy", "--key", "images"]
    np.save(tmp_path / "x.npy", images)
    if case == "reference_index":
        return [tmp_path / "x.npy", "--reference", "8"]
    if case == "reference_missing":
        return [tmp_path / "x.npy", "--reference", tmp_path / "nope.png"]
    if case == "reference_size":
        Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "ref.png")
        return [tmp_path / "x.npy", "--reference", tmp_path / "ref.png"]
    raise ValueError(case)


@pytest.mark.parametrize("case,match", [
    ("missing", "missing.npy: no such file or directory"),
    ("unreadable", "cut.npy: cannot read the .npy array"),
    ("non_image", "readme.txt: not a PNG or JPEG file"),
    ("mixed_sizes", "9.png: 28x30 pixels, but 0.png is 28x28: all images must have one size"),
    ("wrong_key", "no dataset 'images'; available: labels, train/images"),
    ("empty", "no images"),
    ("empty_folder", "no PNG or JPEG files"),
    ("nan", "image 6 contains NaN or infinite values"),
    ("beyond_one", "float images must lie in [0, 1]"),
    ("too_small", "smaller than this aligner needs (13x13"),
    ("key_on_npy", "--key applies to .npz and HDF5 files"),
    ("reference_index", "--reference 8: out of range for 8 images"),
    ("reference_missing", "nope.png: no such image file"),
    ("reference_size", "ref.png: 20x20 pixels, but the images are 28x28"),
])
def test_bad_input_writes_nothing(tmp_path, case, match):
    argv = _bad_input(tmp_path, case)
    before = sorted(os.listdir(tmp_path))
    code, _, err = run(["congeal", *argv, "--output", tmp_path / "out", *TINY])
    assert_one_line_error(code, err, match)
    assert sorted(os.listdir(tmp_path)) == before  # neither out/ nor out.partial/


def test_existing_outputs_are_refused(tmp_path):
    np.save(tmp_path / "x.npy", _demo_images(8))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("keep me")
    code, _, err = run(["congeal", tmp_path / "x.npy", "-o", tmp_path / "out", *TINY])
    assert_one_line_error(code, err, "already exists; pass --overwrite")
    (tmp_path / "new.partial").mkdir()
    code, _, err = run(["congeal", tmp_path / "x.npy", "-o", tmp_path / "new", *TINY])
    assert_one_line_error(code, err, "an unfinished run is there; pass --resume")
    code, _, err = run(["congeal", tmp_path, "-o", tmp_path, "--overwrite", *TINY])
    assert_one_line_error(code, err, "refusing to write over the input")
    assert sorted(os.listdir(tmp_path)) == ["new.partial", "out", "x.npy"]
    assert os.listdir(tmp_path / "out") == ["mine.txt"]
    assert os.listdir(tmp_path / "new.partial") == []


def test_error_is_one_line_in_a_real_process(tmp_path):
    # In a fresh interpreter, loading the backend (TensorFlow prints start-up
    # lines on stderr) must not add lines to the error.
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "keras_congeal", "congeal", str(tmp_path / "missing.npy"),
         "--output", str(tmp_path / "out")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"keras-congeal: error: {tmp_path / 'missing.npy'}: no such file or directory"
    ]
    assert os.listdir(tmp_path) == []


# === The demo, with a trained model shared by the tests below ===


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    code, stdout, err = run(["congeal", "--output", out, "--limit", 64, *TINY])
    assert code == 0, err
    return out, stdout


@pytest.mark.slow
def test_demo_outputs(demo_run):
    out, stdout = demo_run
    assert set(os.listdir(out)) == CONGEAL_FILES
    assert not os.path.exists(f"{out}.partial")
    aligned = np.load(out / "aligned.npy")
    transforms = np.load(out / "transforms.npy")
    assert aligned.shape == (64, 28, 28) and aligned.dtype == np.uint8
    assert transforms.shape == (64, 3, 3) and transforms.dtype == np.float64
    assert_rewarp(_demo_images(64), aligned, transforms, atol=1.0)
    for name in ("mean_variance.png", "samples.png", "reference.png"):
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.width >= 2 * 28
    for text in ("APSNR", "oracle", "ink kept", "scale", "time", str(out),
                 "see reference.png; choose another with --reference"):
        assert text in stdout


def test_shipped_model_has_no_optimizer_state(demo_run):
    # Adam's moments stay in the resumable checkpoint, not in model.keras.
    import zipfile

    out, _ = demo_run
    with zipfile.ZipFile(out / "model.keras") as archive, \
            archive.open("model.weights.h5") as weights, h5py.File(weights) as f:
        assert "optimizer" not in f
        config = json.loads(archive.read("config.json"))
    assert config["class_name"] == "Congealer"
    size = os.path.getsize(out / "model.keras")
    parameters = sum(w.size for w in
                     keras.saving.load_model(out / "model.keras", compile=False).get_weights())
    assert size < 4.5 * parameters * 1.05  # float32 weights (+ the file's overhead)


@pytest.mark.slow
def test_demo_report(demo_run):
    out, _ = demo_run
    report = json.loads((out / "report.json").read_text())
    settings = json.loads((out / "settings.json").read_text())
    # The resolved settings: what "auto" chose is written out.
    assert settings == CongealSettings(epochs=1, batch_size=32, preset="mnist",
                                       code_size=16).to_dict()
    assert report["settings"] == settings and report["preset"] == settings["preset"]
    assert report["images"] == 64 and report["image_shape"] == [28, 28, 1]
    assert report["dtype"] == "uint8" and report["input"]["kind"] == "demo"
    assert report["backend"] == keras.backend.backend()
    assert report["keras_congeal_version"] == __import__("keras_congeal").__version__
    assert report["apsnr_before"] == pytest.approx(apsnr(_demo_images(64)), abs=1e-9)
    assert report["apsnr_after"] == pytest.approx(apsnr(np.load(out / "aligned.npy")), abs=1e-9)
    assert 0 < report["ink_kept"] < 2
    assert report["content_scale_p05"] <= report["content_scale_median"] \
        <= report["content_scale_p95"]
    assert set(report["oracle"]) == {"apsnr", "ink_kept", "apsnr_originals"}
    assert report["oracle"]["apsnr"] > report["apsnr_before"]
    assert set(report["seconds"]) >= {"training", "aligning", "total"}
    assert report["epochs"] == 1 and report["resumed_from_epoch"] is None
    assert report["preset"] == "mnist" and isinstance(report["reference_index"], int)
    [epoch] = report["history"]
    assert epoch["epoch"] == 1 and {"loss", "apsnr", "ink_kept", "scale"} <= set(epoch)
    assert set(report["files"]) == CONGEAL_FILES


@pytest.mark.slow
def test_align_command_reproduces_congeal(demo_run, tmp_path):
    out, _ = demo_run
    np.save(tmp_path / "x.npy", _demo_images(64))
    code, stdout, err = run(["align", out / "model.keras", tmp_path / "x.npy",
                             "-o", tmp_path / "aligned", "--quiet", "--batch-size", 20])
    assert code == 0, err
    assert set(os.listdir(tmp_path / "aligned")) == ALIGN_FILES
    aligned = np.load(tmp_path / "aligned" / "aligned.npy")
    expected = np.load(out / "aligned.npy")
    assert aligned.shape == expected.shape and aligned.dtype == np.uint8
    assert np.abs(aligned.astype(int) - expected).max() <= 1
    np.testing.assert_allclose(np.load(tmp_path / "aligned" / "transforms.npy"),
                               np.load(out / "transforms.npy"), atol=1e-5)
    report = json.loads((tmp_path / "aligned" / "report.json").read_text())
    assert report["command"] == "align" and report["model"] == str(out / "model.keras")
    assert "training" not in report["seconds"] and "APSNR" in stdout
    assert report["batch_size"] == 20


@pytest.mark.slow
def test_align_command_on_a_folder_keeps_file_names(demo_run, tmp_path):
    out, _ = demo_run
    folder = tmp_path / "pngs"
    folder.mkdir()
    names = [f"digit_{i:02d}.png" for i in range(10)]
    for name, image in zip(names, _demo_images(10), strict=True):
        Image.fromarray(image).save(folder / name)
    code, _, err = run(["align", out / "model.keras", folder, "-o", tmp_path / "res", "--quiet"])
    assert code == 0, err
    assert set(os.listdir(tmp_path / "res")) == ALIGN_FILES | {"filenames.json"}
    assert json.loads((tmp_path / "res" / "filenames.json").read_text()) == names
    aligned = np.load(tmp_path / "res" / "aligned.npy")
    assert aligned.shape == (10, 28, 28)
    assert np.abs(aligned.astype(int) - np.load(out / "aligned.npy")[:10]).max() <= 1


@pytest.mark.slow
def test_align_command_bad_inputs(demo_run, tmp_path):
    out, _ = demo_run
    np.save(tmp_path / "rgb.npy", np.zeros((4, 28, 28, 3), np.uint8))
    np.save(tmp_path / "x.npy", _demo_images(4))
    cases = [
        ([out / "model.keras", tmp_path / "rgb.npy"], "images are 28x28x3 (height x width x "
                                                       "channels), but"),
        ([tmp_path / "none.keras", tmp_path / "x.npy"], "none.keras: no such model file"),
        ([tmp_path / "x.npy", tmp_path / "x.npy"], "x.npy: cannot load it as a Keras model"),
    ]
    for argv, match in cases:
        code, _, err = run(["align", *argv, "-o", tmp_path / "res", "--quiet"])
        assert_one_line_error(code, err, match)
        assert sorted(os.listdir(tmp_path)) == ["rgb.npy", "x.npy"]


# === Other inputs, --resume and --overwrite ===


@pytest.mark.slow
def test_resume_after_a_kill_and_overwrite(tmp_path, monkeypatch):
    images = (_demo_images(48)[..., None] / 255.0).astype(np.float32)
    with h5py.File(tmp_path / "set.h5", "w") as f:
        f.create_dataset("set/images", data=images, chunks=(16, 28, 28, 1))
        f.create_dataset("labels", data=np.arange(48))
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("an older result")
    argv = ["congeal", tmp_path / "set.h5", "--key", "set/images", "-o", out, "--epochs", 2,
            "--batch-size", 32, "--quiet", "--overwrite"]

    # Killed (Ctrl-C) right after the first epoch's backup.
    save_epoch = keras.callbacks.BackupAndRestore.on_epoch_end

    def killed(self, epoch, logs=None):
        save_epoch(self, epoch, logs)
        raise KeyboardInterrupt

    monkeypatch.setattr(keras.callbacks.BackupAndRestore, "on_epoch_end", killed)
    code, _, err = run(argv)
    assert code == 130 and "--resume" in err
    monkeypatch.undo()
    assert os.listdir(out) == ["old.txt"]  # the old result is untouched
    partial = tmp_path / "out.partial"
    assert {"settings.json", "backup", "history.jsonl"} <= set(os.listdir(partial))

    code, _, err = run(argv)
    assert_one_line_error(code, err, "pass --resume to continue it")
    code, _, err = run([*argv, "--resume", "--epochs", 3])
    assert_one_line_error(code, err, "--epochs 3 (was 2)")
    code, _, err = run([*argv, "--resume", "--limit", 40])
    assert_one_line_error(code, err, "--resume: the input differs")

    epochs_run = []
    monkeypatch.setattr(keras.callbacks.BackupAndRestore, "on_epoch_begin",
                        lambda self, epoch, logs=None: epochs_run.append(epoch))
    code, _, err = run([*argv, "--resume"])
    assert code == 0, err
    assert epochs_run == [1]  # only the second epoch ran
    assert not partial.exists()
    assert set(os.listdir(out)) == CONGEAL_FILES  # replaced, no scratch files left
    report = json.loads((out / "report.json").read_text())
    assert report["resumed_from_epoch"] == 1
    assert [entry["epoch"] for entry in report["history"]] == [1, 2]
    assert report["input"]["kind"] == "hdf5" and report["input"]["key"] == "set/images"
    aligned = np.load(out / "aligned.npy")
    assert aligned.shape == (48, 28, 28, 1) and aligned.dtype == np.float32
    assert_rewarp(images, aligned, np.load(out / "transforms.npy"), atol=1e-4)


@pytest.mark.slow
def test_congeal_rgb_folder(tmp_path):
    digits = _demo_images(40)
    folder = tmp_path / "pngs"
    folder.mkdir()
    names = [f"{i:03d}.png" for i in range(40)]
    for name, digit in zip(names, digits, strict=True):
        Image.fromarray(np.stack([digit, digit // 2, 255 - digit], axis=-1)).save(folder / name)
    # Colour images: --preset auto chooses lfw (photographs) and its settings.
    code, stdout, err = run(["congeal", folder, "-o", tmp_path / "out", "--reference", 3,
                             "--transform", "similarity", "--min-steps", "0", *TINY])
    assert code == 0, err
    out = tmp_path / "out"
    assert set(os.listdir(out)) == CONGEAL_FILES | {"filenames.json"}
    assert json.loads((out / "filenames.json").read_text()) == names
    aligned = np.load(out / "aligned.npy")
    assert aligned.shape == (40, 28, 28, 3) and aligned.dtype == np.uint8
    inputs = np.stack([np.asarray(Image.open(folder / name)) for name in names])
    assert_rewarp(inputs, aligned, np.load(out / "transforms.npy"), atol=1.0)
    report = json.loads((out / "report.json").read_text())
    assert report["reference_index"] == 3 and report["settings"]["transform"] == "similarity"
    assert report["image_shape"] == [28, 28, 3] and report["oracle"] is None
    assert report["preset"] == "lfw"
    assert report["settings"]["distortion_features"] == "local-contrast"
    assert "RGB images" in stdout


def test_ctrl_c_in_fit_is_held_to_the_step_end_and_a_second_stops_at_once():
    # The hold of `congeal`'s training (README: "during training it takes effect
    # at the end of the running step (a second Ctrl-C stops at once)").
    import signal

    from keras_congeal.cli._train_and_align import _interrupts_held_in_fit, _StopAtStepEnd

    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        with _interrupts_held_in_fit() as received:
            stop = _StopAtStepEnd(received)
            stop.on_train_batch_begin(0)  # no Ctrl-C yet: the step runs
            signal.raise_signal(signal.SIGINT)  # held: the step goes on
            assert received == [signal.SIGINT]
            stop.on_train_batch_begin(1)  # ... and the next one stops
    assert signal.getsignal(signal.SIGINT) is before
    with pytest.raises(KeyboardInterrupt):
        with _interrupts_held_in_fit():
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)  # the second: at once
            pytest.fail("the second Ctrl-C did not interrupt")
    assert signal.getsignal(signal.SIGINT) is before
    # A Ctrl-C held to the end of a block without a step end still interrupts.
    with pytest.raises(KeyboardInterrupt):
        with _interrupts_held_in_fit():
            signal.raise_signal(signal.SIGINT)
