"""Smoke tests of `python -m benchmarks.mnist_protocols` (tiny runs, real MNIST)."""

import json

import pytest

pytest.importorskip("rasl")

from benchmarks import common, mnist_protocols  # noqa: E402

try:
    MNIST = common.resolve_mnist()
except FileNotFoundError:  # pragma: no cover - depends on the machine
    MNIST = None

pytestmark = pytest.mark.skipif(MNIST is None, reason="mnist.npz not found")

ARGS = ["--quick", "--digits", "3", "--sigmas", "0.2", "--n", "40", "--epochs", "1",
        "--rasl-max-iter", "2"]
ENTRY_KEYS = {"digit", "sigma", "n", "method", "images", "images_kept", "apsnr", "apsnr_all",
              "ink_kept", "content_scale_median", "seconds", "images_sha1",
              "perturbation_seed"}


def _load(tmp_path):
    return json.loads((tmp_path / "mnist_protocols_quick.json").read_text())


def test_protocol_schema_resume_and_report(tmp_path, monkeypatch, capsys):
    methods = ["input", "oracle", "rasl-euclidean", "lsc-affine", "kc-D"]
    out = ["--output-dir", str(tmp_path)]
    assert mnist_protocols.main(ARGS + ["--methods", *methods] + out) == 0
    data = _load(tmp_path)
    assert data["schema"] == mnist_protocols.SCHEMA
    assert data["config"]["n"] == 40 and data["config"]["congeal_settings"]["epochs"] == 1
    assert data["config"]["congeal_epochs_overridden"] is True
    run = data["runs"][0]
    assert {"command", "machine", "versions", "keras"} <= set(run)
    assert run["machine"]["cpu_count"] >= 1 and run["keras"]["backend"]
    results = data["results"]
    assert sorted(results) == sorted(f"digit3/sigma0.2/{m}" for m in methods)
    for entry in results.values():
        assert ENTRY_KEYS <= set(entry)
        assert entry["images"] == 40
    # The same images for every method.
    assert len({e["images_sha1"] for e in results.values()}) == 1
    assert results["digit3/sigma0.2/input"]["ink_kept"] == pytest.approx(1.0)
    rasl = results["digit3/sigma0.2/rasl-euclidean"]
    assert rasl["num_kept"] == rasl["images_kept"] and "kept images only" in rasl["note"]
    assert rasl["iterations"] <= 2
    assert results["digit3/sigma0.2/kc-D"]["settings"]["objective"] == "D"
    assert (tmp_path / "mnist_protocols_quick_sigma0.2.png").stat().st_size > 0
    assert (tmp_path / "mnist_protocols_quick_images.npz").exists()
    assert "Averaged over digits" in (tmp_path / "mnist_protocols_quick_tables.md").read_text()
    assert "| 0.2 | kc-D | 3 |" in capsys.readouterr().out
    assert all(e["status"] == "ok" for e in results.values())

    # --resume skips every finished entry and runs only the new method.
    calls = []
    identity = mnist_protocols.RUNNERS["input"]

    def fake(name):
        def run(x, matrices, args):
            calls.append(name)
            return identity(x, matrices, args)

        return run

    fakes = {name: fake(name) for name in mnist_protocols.METHODS}
    monkeypatch.setattr(mnist_protocols, "RUNNERS", {**mnist_protocols.RUNNERS, **fakes})
    assert mnist_protocols.main(ARGS + ["--methods", *methods, "rasl-affine", "--resume"]
                                + out) == 0
    assert calls == ["rasl-affine"]
    data = _load(tmp_path)
    assert len(data["runs"]) == 2 and len(data["results"]) == len(methods) + 1
    assert data["results"]["digit3/sigma0.2/kc-D"] == results["digit3/sigma0.2/kc-D"]

    # A method that raises is recorded as failed, and the run goes on.
    def broken(x, matrices, args):
        raise FloatingPointError("boom")

    monkeypatch.setitem(mnist_protocols.RUNNERS, "kc-C", broken)
    assert mnist_protocols.main(ARGS + ["--methods", "kc-C", "--resume"] + out) == 0
    failed = _load(tmp_path)["results"]["digit3/sigma0.2/kc-C"]
    assert failed["status"].startswith("failed: FloatingPointError") and failed["apsnr"] is None
    printed = capsys.readouterr().out
    assert "| kc-C | failed |" in printed
    # The report of a resumed run covers the whole file, not only its methods.
    assert "| 0.2 | kc-D | 3 |" in printed and "| rasl-affine |" in printed
    monkeypatch.setitem(mnist_protocols.RUNNERS, "kc-C", fakes["kc-C"])
    assert mnist_protocols.main(ARGS + ["--methods", "kc-C", "--resume"] + out) == 0
    assert calls == ["rasl-affine"]  # skipped: failed entries rerun only on request
    assert mnist_protocols.main(ARGS + ["--methods", "kc-C", "--resume", "--retry-failed"]
                                + out) == 0
    assert calls == ["rasl-affine", "kc-C"]
    assert _load(tmp_path)["results"]["digit3/sigma0.2/kc-C"]["status"] == "ok"

    # A different configuration (here the subset seed) cannot resume the same
    # file; RASL's iteration cap is per entry, so changing it may resume.
    with pytest.raises(SystemExit):
        mnist_protocols.main(ARGS + ["--seed", "5", "--methods", "input", "--resume"] + out)
    assert mnist_protocols.main(ARGS[:-1] + ["5", "--methods", "input", "--resume"] + out) == 0
    # --report-only rebuilds the tables from the file.
    assert mnist_protocols.main(["--quick", "--report-only"] + out) == 0


def test_protocol_learning_rate_schedule_goes_into_the_config(tmp_path):
    out = ["--output-dir", str(tmp_path)]
    assert mnist_protocols.main(ARGS + ["--methods", "input"] + out) == 0
    assert _load(tmp_path)["config"]["congeal_settings"]["learning_rate_schedule"] == "cosine"
    assert mnist_protocols.main(ARGS + ["--methods", "input", "--learning-rate-schedule",
                                        "constant"] + out) == 0
    assert _load(tmp_path)["config"]["congeal_settings"]["learning_rate_schedule"] == "constant"


@pytest.mark.parametrize("bad", [
    ["--digits", "12"], ["--sigmas", "1.5"], ["--methods", "magic"], ["--n", "1"],
    ["--epochs", "0"], ["--learning-rate-schedule", "step"],
])
def test_protocol_bad_arguments(bad, tmp_path):
    with pytest.raises(SystemExit):
        mnist_protocols.main(["--quick", "--output-dir", str(tmp_path), *bad])


def test_protocol_needs_a_mode():
    with pytest.raises(SystemExit):
        mnist_protocols.main(["--digits", "3"])
