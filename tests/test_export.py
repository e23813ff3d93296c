"""ONNX export: graph structure, metadata, onnxruntime parity with Keras, CLI.

Runs only with KERAS_BACKEND=tensorflow and tf2onnx, onnx and onnxruntime
installed; otherwise the module is skipped.
"""

import functools
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

if keras.backend.backend() != "tensorflow":
    pytest.skip("ONNX export needs KERAS_BACKEND=tensorflow", allow_module_level=True)
tf = pytest.importorskip("tensorflow")
pytest.importorskip("tf2onnx")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from keras_congeal import export  # noqa: E402
from keras_congeal.export import _tf_ops, contract, verify  # noqa: E402
from keras_congeal.export import onnx as export_graph  # noqa: E402
from keras_congeal.models import Congealer  # noqa: E402
from keras_congeal.ops import geometry, resize, sampling  # noqa: E402
from tests.conftest import REPO  # noqa: E402

MNIST = (28, 28, 1)
LFW = (64, 64, 3)
TRANSFORMS = ("translation", "similarity", "affine", "homography")
# Written out here, not read from `contract`: a key renamed there fails this test.
CONTRACT_KEYS = {
    "keras_congeal.format_version", "keras_congeal.version", "keras_congeal.image_height",
    "keras_congeal.image_width", "keras_congeal.channels", "keras_congeal.transform",
    "keras_congeal.value_range", "keras_congeal.any_size", "keras_congeal.input_name",
}


def _np(x):
    return keras.ops.convert_to_numpy(x)


@functools.cache
def congealer(preset, transform, shape):
    """A Table-1 Congealer whose (zero-initialised) regressors are perturbed.

    The regressors start at zero, i.e. every stage warps by the identity; small
    random weights make every stage (and the final warp) a real warp.
    """
    model = Congealer.from_preset(preset, reference=np.zeros(shape), transform=transform)
    model.build((None,) + shape)
    rng = np.random.default_rng(sum(map(ord, transform)))
    for fusion in model.aligner.fusions:
        kernel, bias = fusion.regressor.kernel, fusion.regressor.bias
        kernel.assign(rng.normal(0.0, 0.01, kernel.shape).astype("float32"))
        bias.assign(rng.normal(0.0, 0.05, bias.shape).astype("float32"))
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """`exported(preset, transform, **options)` -> (congealer, onnx path), cached."""
    cache = {}
    directory = tmp_path_factory.mktemp("onnx")

    def get(preset, transform, **options):
        key = (preset, transform, tuple(sorted(options.items())))
        if key not in cache:
            model = congealer(preset, transform, MNIST if preset == "mnist" else LFW)
            path = directory / f"{preset}_{transform}_{len(cache)}.onnx"
            result = export.export_onnx(model, path, **options)
            cache[key] = (model, path, result)
        return cache[key]

    return get


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _run(path, images):
    aligned, transforms = _session(path).run(["aligned", "transforms"], {"images": images})
    return aligned, transforms


def _assert_transforms_close(actual, expected, rtol=1e-4):
    scale = np.max(np.abs(expected), axis=(1, 2), keepdims=True)
    assert np.max(np.abs(actual - expected) / scale) <= rtol


# === Parity with Keras ===

CASES = [("mnist", t) for t in TRANSFORMS] + [("lfw", "affine")]


@pytest.mark.parametrize("preset,transform", CASES)
def test_parity_with_keras(exported, preset, transform):
    model, path, result = exported(preset, transform)
    rng = np.random.default_rng(1)
    for batch in (1, 37):
        images = rng.random((batch,) + model.image_shape, dtype=np.float32)
        aligned, transforms = _run(path, images)
        expected = model.align(images)
        assert aligned.shape == images.shape and aligned.dtype == np.float32
        assert transforms.shape == (batch, 3, 3) and transforms.dtype == np.float32
        # The warps are not the identity.
        assert np.abs(expected["transforms"] - np.eye(3)).max() > 0.1
        assert np.abs(expected["aligned"] - images).max() > 0.1
        assert np.abs(aligned - expected["aligned"]).max() <= 1e-4
        _assert_transforms_close(transforms, expected["transforms"])
    # The export verified itself against Keras too.
    assert result.parity and all(
        v["aligned_max_abs_diff"] <= 1e-4 for v in result.parity.values()
    )


@pytest.mark.parametrize("preset,transform", CASES)
def test_graph_has_one_gridsample_per_warp(exported, preset, transform):
    model, path, result = exported(preset, transform)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    ops = [node.op_type for node in proto.graph.node]
    # Stages 2..K warp inside the aligner, plus the final warp.
    assert ops.count("GridSample") == model.aligner.num_stages
    assert "GatherND" not in ops and "GatherElements" not in ops
    assert result.op_counts["GridSample"] == model.aligner.num_stages
    assert proto.opset_import[0].version == 17
    (image,) = proto.graph.input
    assert image.name == "images"
    dims = image.type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].dim_value  # dynamic batch
    assert [d.dim_value for d in dims[1:]] == list(model.image_shape)
    assert [o.name for o in proto.graph.output] == ["aligned", "transforms"]


def test_metadata(exported):
    _, path, _ = exported("mnist", "homography")
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert set(props) == CONTRACT_KEYS
    assert set(props) == {contract.METADATA_PREFIX + key for key in contract.METADATA_KEYS}
    assert props["keras_congeal.format_version"] == "1"
    assert props["keras_congeal.version"] == __import__("keras_congeal").__version__
    assert (props["keras_congeal.image_height"], props["keras_congeal.image_width"]) == ("28", "28")
    assert props["keras_congeal.channels"] == "1"
    assert props["keras_congeal.transform"] == "homography"
    assert props["keras_congeal.value_range"] == "0,1"
    assert props["keras_congeal.any_size"] == "false"
    assert props["keras_congeal.input_name"] == "images"


def test_any_size_rescales_the_transforms(exported):
    model, path, _ = exported("mnist", "homography", any_size=True)
    proto = onnx.load(str(path))
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["keras_congeal.any_size"] == "true"
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [bool(d.dim_param) for d in dims] == [True, True, True, False]
    rng = np.random.default_rng(2)
    small = rng.random((3,) + MNIST, dtype=np.float32)
    # At the training size: the same graph as without --any-size.
    aligned, transforms = _run(path, small)
    expected = model.align(small)
    assert np.abs(aligned - expected["aligned"]).max() <= 1e-4
    _assert_transforms_close(transforms, expected["transforms"])
    # An (almost) 2x larger copy: 55 = 2 * 28 - 1 pixels, upsampled with the
    # align-corners map. The graph shrinks it back with the antialiasing
    # filter (`ops.resize.resize_antialiased`) and predicts from that copy.
    big_size = (55, 55)
    upsample = geometry.delta_to_pixel_matrix(keras.ops.zeros((3, 3, 3)), MNIST[:2], big_size)
    big = _np(sampling.warp(small, upsample, big_size))
    aligned, transforms = _run(path, big)
    assert aligned.shape == big.shape
    params = model.aligner(resize.resize_antialiased(big, MNIST[:2]))
    expected_transforms = model.pixel_transforms(params, big_size, big_size)
    _assert_transforms_close(transforms, expected_transforms)
    expected_aligned = _np(sampling.warp(big, expected_transforms.astype("float32")))
    assert np.abs(aligned - expected_aligned).max() <= 1e-4
    # A non-proportional size runs too (checked against Keras by the export).
    aligned, transforms = _run(path, rng.random((2, 40, 33, 1), dtype=np.float32))
    assert aligned.shape == (2, 40, 33, 1) and np.all(np.isfinite(transforms))


def test_gather_sampler_fallback(exported):
    model, path, result = exported("mnist", "similarity", sampler="gather")
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "GridSample" not in ops
    images = np.random.default_rng(3).random((37,) + MNIST, dtype=np.float32)
    aligned, transforms = _run(path, images)
    expected = model.align(images)
    assert np.abs(aligned - expected["aligned"]).max() <= 1e-4
    _assert_transforms_close(transforms, expected["transforms"])


# === The TensorFlow warp that becomes GridSample ===


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_projective_warp_matches_the_keras_sampler(transform):
    rng = np.random.default_rng(4)
    images = rng.random((3, 11, 14, 2), dtype=np.float32)
    params = rng.normal(0.0, 0.2, (3, geometry.num_params(transform))).astype("float32")
    delta = geometry.params_to_delta(params, transform)
    matrices = geometry.delta_to_pixel_matrix(delta, (11, 14), (9, 12))
    expected = _np(sampling.warp(images, matrices, (9, 12)))
    actual = _tf_ops.projective_warp(images, matrices, (9, 12)).numpy()
    assert np.abs(actual - expected).max() <= 1e-5


def test_warp_swap_is_restored():
    with pytest.raises(RuntimeError):
        with export_graph._gridsample_warps():
            assert sampling.current_warp() is _tf_ops.projective_warp
            raise RuntimeError
    assert sampling.current_warp() is sampling.warp


def test_failed_verification_leaves_no_file(tmp_path, monkeypatch):
    model = congealer("mnist", "translation", MNIST)
    reference = verify.keras_reference

    def wrong(congealer, images):
        aligned, transforms = reference(congealer, images)
        return aligned + 1e-3, transforms

    monkeypatch.setattr(verify, "keras_reference", wrong)
    path = tmp_path / "aligner.onnx"
    with pytest.raises(export.ExportError, match="verification failed"):
        export.export_onnx(model, path)
    assert list(tmp_path.iterdir()) == []


def test_option_errors(tmp_path):
    model = congealer("mnist", "translation", MNIST)
    with pytest.raises(ValueError, match="opset=15"):
        export.export_onnx(model, tmp_path / "a.onnx", opset=15)
    with pytest.raises(ValueError, match="sampler"):
        export.export_onnx(model, tmp_path / "a.onnx", sampler="nearest")
    (tmp_path / "b.onnx").write_bytes(b"old")
    with pytest.raises(export.ExportError, match="already exists"):
        export.export_onnx(model, tmp_path / "b.onnx")
    assert (tmp_path / "b.onnx").read_bytes() == b"old"


def test_triton_config_dims():
    text = export.triton_config("faces", (64, 48, 3), any_size=True)
    assert 'platform: "onnxruntime_onnx"' in text and "max_batch_size: 256" in text
    assert "dynamic_batching" in text and "dims: [ -1, -1, 3 ]" in text
    assert "dims: [ 3, 3 ]" in text and text.count("TYPE_FP32") == 3
    fixed = export.triton_config("faces", (64, 48, 3), any_size=False, batch=8)
    assert "max_batch_size: 0" in fixed and "dynamic_batching" not in fixed
    assert "dims: [ 8, 64, 48, 3 ]" in fixed and "dims: [ 8, 3, 3 ]" in fixed


# === Command line ===


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "congealer.keras"
    congealer("mnist", "affine", MNIST).save(path)
    return path


def test_cli_exports_and_writes_a_triton_repo(saved_model, tmp_path, capsys):
    out = tmp_path / "aligner.onnx"
    code = export.main([
        str(saved_model), str(out), "--batch", "4", "--triton-repo", str(tmp_path / "repo"),
        "--triton-name", "digits",
    ])
    assert code == 0, capsys.readouterr().err
    assert "verified 28x28/batch4" in capsys.readouterr().out
    proto = onnx.load(str(out))
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 4
    config = (tmp_path / "repo" / "digits" / "config.pbtxt").read_text()
    assert 'name: "digits"' in config and "dims: [ 4, 28, 28, 1 ]" in config
    assert (tmp_path / "repo" / "digits" / "1" / "model.onnx").read_bytes() == out.read_bytes()
    # Refuses to overwrite, then overwrites when asked.
    assert export.main([str(saved_model), str(out)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert export.main([str(saved_model), str(out), "--overwrite", "--no-verify"]) == 0
    assert onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim[0].dim_param


def test_outputs_follow_the_umask(tmp_path):
    # One rule for every output: the umask (m.onnx used to be 0600).
    old = os.umask(0o027)
    try:
        export.export_onnx(congealer("mnist", "affine", MNIST), tmp_path / "m.onnx",
                           verify=False, triton_repo=tmp_path / "repo", triton_name="m")
    finally:
        os.umask(old)
    for path in [tmp_path / "m.onnx", tmp_path / "repo/m/config.pbtxt",
                 tmp_path / "repo/m/1/model.onnx"]:
        assert oct(path.stat().st_mode & 0o777) == oct(0o640), path
    assert sorted(os.listdir(tmp_path)) == ["m.onnx", "repo"]  # no temporary file left


def test_cli_errors(tmp_path, capsys):
    def error(argv):
        assert export.main(argv) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("keras-congeal-export: error:")
        return err

    out = str(tmp_path / "out.onnx")
    assert "missing.keras: no such model file" in error([str(tmp_path / "missing.keras"), out])
    garbage = tmp_path / "garbage.keras"
    garbage.write_bytes(b"not a zip file")
    assert "garbage.keras: not a .keras model" in error([str(garbage), out])
    other = tmp_path / "dense.keras"
    keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]).save(other)
    assert "not a keras_congeal Congealer" in error([str(other), out])
    assert not (tmp_path / "out.onnx").exists()
    for argv in (
        [str(other), out, "--opset", "15"],
        [str(other), out, "--batch", "0"],
        [str(other), out, "--triton-name", "x"],
    ):
        with pytest.raises(SystemExit) as exit_info:
            export.main(argv)
        assert exit_info.value.code == 2
    capsys.readouterr()


def test_module_entry_point_reports_a_missing_file(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "keras_congeal.export", str(tmp_path / "none.keras"),
         str(tmp_path / "out.onnx")],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().endswith(f"{tmp_path / 'none.keras'}: no such model file")


def test_subcommand_exports_in_a_real_process(saved_model, tmp_path):
    # `keras-congeal export`: the same command as `python -m keras_congeal.export`.
    from tests.test_cli_process import keras_congeal

    result = keras_congeal(["export", saved_model, "aligner.onnx", "--batch", "2",
                            "--triton-repo", "repo"], cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "verified 28x28/batch2" in result.stdout
    assert sorted(os.listdir(tmp_path)) == ["aligner.onnx", "repo"]
    images = np.random.default_rng(0).random((2, *MNIST), dtype=np.float32)
    aligned, transforms = _run(tmp_path / "aligner.onnx", images)
    expected = congealer("mnist", "affine", MNIST).align(images)
    np.testing.assert_allclose(aligned, expected["aligned"], atol=1e-4)
    _assert_transforms_close(transforms, expected["transforms"])


@pytest.mark.parametrize("program", ["subcommand", "module"])
def test_bad_model_is_one_line_without_start_up_noise(tmp_path, program):
    # A model that fails only once TensorFlow has loaded: TensorFlow's start-up
    # lines (absl's preamble, oneDNN's notice) were printed before the error.
    from tests.test_cli_process import keras_congeal

    (tmp_path / "m.keras").write_text("not a zip")
    command = None if program == "subcommand" else [sys.executable, "-m", "keras_congeal.export"]
    argv = ["m.keras", "a.onnx"] if command else ["export", "m.keras", "a.onnx"]
    result = keras_congeal(argv, cwd=tmp_path, program=command)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "m.keras: not a .keras model" in lines[0]
    assert sorted(os.listdir(tmp_path)) == ["m.keras"]


def test_the_former_export_cli_module_still_runs_and_says_it_moved(tmp_path):
    from keras_congeal.export import cli

    with pytest.warns(DeprecationWarning, match="keras-congeal export"):
        with pytest.raises(SystemExit) as raised:
            cli.main(["--help"])
    assert raised.value.code == 0
    proc = subprocess.run(
        [sys.executable, "-m", "keras_congeal.export.cli", str(tmp_path / "none.keras"),
         str(tmp_path / "out.onnx")],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 1 and "none.keras: no such model file" in proc.stderr
    assert not (tmp_path / "out.onnx").exists()
