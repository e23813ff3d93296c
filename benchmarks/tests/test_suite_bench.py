"""Smoke tests of `benchmarks.bench_training` and `benchmarks.bench_onnx`."""

import json

import pytest

from benchmarks import bench_training


def test_bench_training_schema(tmp_path, capsys):
    path = tmp_path / "training.json"
    assert bench_training.main(["--batch-sizes", "4", "--steps", "1", "--warmup", "1",
                                "--objective", "D", "--loops", "on-batch",
                                "--output", str(path)]) == 0
    data = json.loads(path.read_text())
    assert data["schema"] == bench_training.SCHEMA
    assert data["settings"]["objective"] == "D" and data["image_shape"] == [28, 28, 1]
    assert [r["loop"] for r in data["results"]] == ["on-batch"]
    for r in data["results"]:
        assert r["status"] == "ok" and r["images_per_second"] > 0 and r["batch_size"] == 4
    assert data["run"]["keras"]["backend"] and data["run"]["machine"]["cpu_count"]
    assert "images/s" in capsys.readouterr().out


def test_bench_training_bad_arguments():
    with pytest.raises(SystemExit):
        bench_training.main(["--steps", "0"])
    with pytest.raises(SystemExit):
        bench_training.main(["--objective", "E"])
    with pytest.raises(SystemExit):
        bench_training.main(["--loops", "scan"])


def test_bench_onnx_schema(tmp_path):
    pytest.importorskip("tf2onnx")
    pytest.importorskip("onnxruntime")
    import keras

    if keras.backend.backend() != "tensorflow":
        pytest.skip("the ONNX export needs the TensorFlow backend")
    from benchmarks import bench_onnx

    path = tmp_path / "onnx.json"
    assert bench_onnx.main(["--batch", "4", "--repeats", "2", "--warmup", "1",
                            "--output", str(path)]) == 0
    data = json.loads(path.read_text())
    assert data["schema"] == bench_onnx.SCHEMA
    runtimes = [r["runtime"] for r in data["results"]]
    assert runtimes == ["onnxruntime", "keras align", "keras predict"]
    assert data["results"][0]["providers"][-1] == "CPUExecutionProvider"
    assert data["export"]["op_counts"].get("GridSample", 0) >= 1
    assert all(r["images_per_second"] > 0 for r in data["results"])
    assert max(v["aligned_max_abs_diff"] for v in data["export"]["parity"].values()) < 1e-4


def test_run_record_carries_no_absolute_paths(tmp_path, monkeypatch):
    from benchmarks import common

    monkeypatch.chdir(tmp_path)
    (tmp_path / "work").mkdir()
    assert common.portable_path(tmp_path / "work" / "a.npz") == "work/a.npz"
    assert common.portable_path(tmp_path.parent / "data") == "../data"
    assert common.portable_path("/opt/somewhere/deep/x.json") == ".../deep/x.json"
    record = common.run_record(
        ["--output-dir", str(tmp_path / "out"), "--mnist", "/opt/data/mnist.npz", "--n", "5"],
        with_keras=False, module="benchmarks.mnist_protocols")
    assert record["command"] == (
        "python -m benchmarks.mnist_protocols --output-dir out --mnist .../data/mnist.npz --n 5")
    assert str(tmp_path) not in json.dumps(record)


def test_run_record_says_when_the_tracked_tree_differs_from_the_commit(tmp_path, monkeypatch):
    import subprocess

    from benchmarks import common

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", "code.py")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    monkeypatch.setattr(common, "REPO", tmp_path)
    (tmp_path / "untracked.txt").write_text("ignored by the flag")
    clean = common.run_record([], with_keras=False)
    assert clean["git_tree_modified"] is False and len(clean["git_commit"]) == 40
    (tmp_path / "code.py").write_text("x = 2\n")
    assert common.run_record([], with_keras=False)["git_tree_modified"] is True
    monkeypatch.setattr(common, "REPO", tmp_path / "not-a-repository")
    record = common.run_record([], with_keras=False)
    assert record["git_commit"] is None and record["git_tree_modified"] is None


def test_bench_convs_variants_agree_with_the_convolution(tmp_path):
    # Every variant of a shape computes the same gradients as Keras' NHWC
    # convolution (float32: to rounding); shifted only where it applies.
    import keras

    if keras.backend.backend() != "jax":
        pytest.skip("bench_convs times JAX functions")
    from benchmarks import bench_convs

    path = tmp_path / "convs.json"
    assert bench_convs.main(["--batch-size", "3", "--steps", "1", "--warmup", "1",
                             "--dtypes", "float32", "--shapes", "aligner conv0", "up1",
                             "--output", str(path)]) == 0
    data = json.loads(path.read_text())
    assert data["run"]["command"].startswith("python -m benchmarks.bench_convs")
    rows = {(r["shape"], r["implementation"]): r for r in data["rows"]}
    assert set(rows) == {
        ("aligner conv0 7x7 1->4", "conv"), ("aligner conv0 7x7 1->4", "conv_nchw"),
        ("aligner conv0 7x7 1->4", "patches"), ("aligner conv0 7x7 1->4", "shifted"),
        ("decoder up1 2x2 100->400", "conv"), ("decoder up1 2x2 100->400", "conv_nchw"),
        ("decoder up1 2x2 100->400", "patches"),
    }
    for (_, implementation), row in rows.items():
        assert row["ms"] > 0
        if implementation != "conv":
            assert row["relative_error_vs_conv"] < 1e-4, row


def test_bench_training_device_loop_and_flops(tmp_path):
    import keras

    if keras.backend.backend() != "jax":
        pytest.skip("the device loop and the FLOP count are JAX's")
    path = tmp_path / "training.json"
    assert bench_training.main(["--batch-sizes", "4", "--steps", "1", "--warmup", "1",
                                "--objective", "D", "--loops", "device", "--flops",
                                "--matmul-size", "64", "--output", str(path)]) == 0
    data = json.loads(path.read_text())
    assert data["flops_per_image"] > 1e5 and data["matmul_flops_per_second"] > 0
    (entry,) = data["results"]
    assert entry["loop"] == "device" and entry["status"] == "ok"
    assert 0 < entry["fraction_of_matmul_rate"]
