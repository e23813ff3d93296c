"""Smoke tests of `python -m benchmarks.scalability` (child processes, tiny N)."""

import json

import pytest

pytest.importorskip("rasl")

from benchmarks import common, scalability  # noqa: E402

try:
    MNIST = common.resolve_mnist()
except FileNotFoundError:  # pragma: no cover
    MNIST = None

pytestmark = pytest.mark.skipif(MNIST is None, reason="mnist.npz not found")


def test_scalability_baselines_memory_and_budget(tmp_path, capsys):
    out = ["--output-dir", str(tmp_path)]
    args = ["--quick", "--ns", "30", "60", "--methods", "lsc", "rasl",
            "--rasl-iterations", "1"]
    assert scalability.main(args + out) == 0
    data = json.loads((tmp_path / "scalability_quick.json").read_text())
    assert data["schema"] == scalability.SCHEMA
    assert "keras" not in data["runs"][0]  # the parent stays free of Keras
    for key in ("lsc/n30", "lsc/n60", "rasl/n30", "rasl/n60"):
        entry = data["results"][key]
        assert entry["status"] == "ok", entry
        assert entry["peak_rss_bytes"] > 0 and entry["vm_hwm_bytes"] > 0
        assert entry["seconds"] > 0 and entry["n"] == int(key.split("/n")[1])
        # VmHWM is the child's own peak, whatever its parent (here pytest,
        # which may hold Keras and data) weighed at fork; ru_maxrss includes it.
        assert entry["vm_hwm_bytes"] < 2 * 2**30
        assert entry["peak_rss_bytes"] >= entry["vm_hwm_bytes"] - 2**20
        assert scalability.peak_memory(entry) == entry["vm_hwm_bytes"]
    assert data["results"]["rasl/n60"]["iterations"] == 1
    assert (tmp_path / "scalability_quick.png").exists()
    assert "| lsc | 60 |" in capsys.readouterr().out

    # Resume: nothing reruns; a tiny budget stops the next N.
    assert scalability.main(args[:2] + ["30", "60", "90"] + args[4:] +
                            ["--resume", "--budget-s", "1e-9"] + out) == 0
    data = json.loads((tmp_path / "scalability_quick.json").read_text())
    assert len(data["runs"]) == 2
    assert "lsc/n90" not in data["results"]
    assert "stopped before N=90" in data["stopped"]["lsc"]


def test_scalability_keras_congeal_worker(tmp_path):
    out = ["--output-dir", str(tmp_path)]
    assert scalability.main(["--quick", "--ns", "40", "--methods", "keras_congeal",
                             "--epochs", "1"] + out) == 0
    entry = json.loads((tmp_path / "scalability_quick.json").read_text())["results"][
        "keras_congeal/n40"]
    assert entry["status"] == "ok", entry
    assert len(entry["epoch_seconds"]) == 1 and entry["work_unit"] == "epoch"
    assert entry["keras"]["backend"]
    assert entry["peak_rss_above_import_bytes"] > 0


def test_scalability_bad_arguments(tmp_path):
    with pytest.raises(SystemExit):
        scalability.main(["--ns", "100"])  # no mode
    with pytest.raises(SystemExit):
        scalability.main(["--quick", "--methods", "magic", "--output-dir", str(tmp_path)])
