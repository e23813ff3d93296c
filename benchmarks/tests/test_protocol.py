"""Tests of the shared protocol runner (`benchmarks/protocol.py`) on a toy
protocol, and of the protocol scripts' tables from hand-made results."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import common, lfw, mnist_protocols, protocol

REPO = Path(__file__).resolve().parents[2]


class Toy(protocol.Protocol):
    """Cells `a` in `--values`: the methods scale the same vector of ones by `a`."""

    module = "benchmarks.tests.test_protocol"
    schema = "keras_congeal.toy/1"
    methods = ("one", "two", "three")
    default_methods = ("one", "two")
    data_name = "toy"
    measures = {"total": "sum of the aligned values"}

    def __init__(self, record_failures=False, fail=(), interrupt=()):
        self.record_failures = record_failures
        self.fail = set(fail)  # (value, method) that raise ValueError
        self.interrupt = set(interrupt)  # (value, method) that raise KeyboardInterrupt
        self.calls = []
        self.prepared = []

    def add_arguments(self, parser):
        parser.add_argument("--values", type=float, nargs="+", default=[1.0, 2.0])
        parser.add_argument("--size", type=int, default=3)

    def name(self, args):
        return "toy"

    def open_data(self, args):
        return "in memory"

    def config(self, args):
        return {"size": args.size}

    def run_fields(self, args, data):
        return {"values": args.values}

    def cells(self, args, data, images):
        for value in args.values:
            yield protocol.Cell(
                name=f"value {value:g}",
                key=lambda method, v=value: f"value{v:g}/{method}",
                prepare=lambda v=value: self._prepare(v, args.size),
            )

    def _prepare(self, value, size):
        self.prepared.append(value)
        return {"value": value}, {"x": np.full(size, value), "value": value}

    def run_method(self, method, inputs, args):
        self.calls.append((inputs["value"], method))
        if (inputs["value"], method) in self.interrupt:
            raise KeyboardInterrupt
        if (inputs["value"], method) in self.fail:
            raise ValueError("broken")
        factor = self.methods.index(method) + 1
        return {"aligned": inputs["x"] * factor, "transforms": None, "extra": {"factor": factor}}

    def measure(self, inputs, key, output):
        return {"total": float(output["aligned"].sum())}, {key: output["aligned"]}

    def failed_measures(self, inputs):
        return {"total": None}

    def describe(self, entry):
        return f"value {entry['value']:g} {entry['method']} total {entry['total']}"

    def tables(self, results, methods):
        rows = [
            [key, e["method"], common.fmt(e["total"])]
            for key, e in sorted(results.items())
            if e["method"] in methods
        ]
        return common.markdown_table(["key", "method", "total"], rows)


def _run(toy, tmp_path, *argv):
    return toy.main([*argv, "--output-dir", str(tmp_path)])


def _results(tmp_path):
    return json.loads((tmp_path / "toy.json").read_text())


# === The runner ===


def test_a_run_writes_the_results_images_and_tables(tmp_path, capsys):
    toy = Toy()
    assert _run(toy, tmp_path) == 0
    data = _results(tmp_path)
    assert data["schema"] == Toy.schema and data["config"] == {"size": 3}
    assert data["measures"] == Toy.measures and "finished" in data
    assert len(data["runs"]) == 1 and data["runs"][0]["values"] == [1.0, 2.0]
    assert data["runs"][0]["command"].startswith("python -m benchmarks.tests.test_protocol")
    results = data["results"]
    assert sorted(results) == ["value1/one", "value1/two", "value2/one", "value2/two"]
    # Entries: the cell's fields, the method, the measures, the time, the extra.
    entry = results["value2/two"]
    assert list(entry) == ["value", "method", "total", "seconds", "max_rss_bytes", "factor"]
    assert entry["total"] == 2.0 * 2 * 3 and entry["factor"] == 2
    with np.load(tmp_path / "toy_images.npz") as images:
        np.testing.assert_array_equal(images["value2/two"], [4.0, 4.0, 4.0])
    tables = (tmp_path / "toy_tables.md").read_text()
    assert tables == Toy().tables(results, Toy.methods) + "\n"
    assert "| value2/two | two | 12.00 |" in capsys.readouterr().out
    # Nothing but the outputs in the folder (the atomic writers leave no temporary).
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "toy.json",
        "toy_images.npz",
        "toy_tables.md",
    ]


def test_resume_skips_the_finished_cells(tmp_path, capsys):
    assert _run(Toy(), tmp_path, "--values", "1") == 0
    first = _results(tmp_path)["results"]
    toy = Toy()
    assert (
        _run(toy, tmp_path, "--values", "1", "2", "--methods", "one", "two", "three", "--resume")
        == 0
    )
    # Cell 1 runs only its new method; cell 2 everything; no input is prepared
    # for a cell whose methods are all done.
    assert toy.calls == [(1.0, "three"), (2.0, "one"), (2.0, "two"), (2.0, "three")]
    data = _results(tmp_path)
    assert len(data["runs"]) == 2 and len(data["results"]) == 6
    assert {k: data["results"][k] for k in first} == first
    toy = Toy()
    assert _run(toy, tmp_path, "--values", "1", "2", "--resume") == 0
    assert toy.calls == [] and toy.prepared == []
    assert "value 1: done, skipped" in capsys.readouterr().err
    # The report covers the whole file: method three too, which this run did not ask for.
    assert "| value2/three | three |" in (tmp_path / "toy_tables.md").read_text()


def test_a_killed_run_resumes_where_it_stopped(tmp_path):
    toy = Toy(interrupt={(2.0, "two")})
    with pytest.raises(KeyboardInterrupt):
        _run(toy, tmp_path)
    # Every entry finished before the kill is in a valid file; no report yet.
    data = _results(tmp_path)
    assert sorted(data["results"]) == ["value1/one", "value1/two", "value2/one"]
    assert "finished" not in data and not (tmp_path / "toy_tables.md").exists()
    with np.load(tmp_path / "toy_images.npz") as images:
        assert sorted(images.files) == ["value1/one", "value1/two", "value2/one"]
    toy = Toy()
    assert _run(toy, tmp_path, "--resume") == 0
    assert toy.calls == [(2.0, "two")]
    data = _results(tmp_path)
    assert sorted(data["results"]) == ["value1/one", "value1/two", "value2/one", "value2/two"]
    assert [e["total"] for _, e in sorted(data["results"].items())] == [3.0, 6.0, 6.0, 12.0]
    with np.load(tmp_path / "toy_images.npz") as images:
        assert len(images.files) == 4  # the resumed run keeps the earlier images


def test_without_resume_the_file_starts_again(tmp_path):
    assert _run(Toy(), tmp_path, "--methods", "three") == 0
    toy = Toy()
    assert _run(toy, tmp_path, "--values", "1") == 0
    data = _results(tmp_path)
    assert len(data["runs"]) == 1 and sorted(data["results"]) == ["value1/one", "value1/two"]


def test_failures_are_recorded_and_retried_on_request(tmp_path, capsys):
    toy = Toy(record_failures=True, fail={(1.0, "two")})
    assert _run(toy, tmp_path) == 0
    results = _results(tmp_path)["results"]
    assert results["value1/two"]["status"] == "failed: ValueError: broken"
    assert results["value1/two"]["total"] is None
    assert results["value1/one"]["status"] == "ok"
    assert "value 1 two             failed: ValueError: broken" in capsys.readouterr().err
    toy = Toy(record_failures=True)
    assert _run(toy, tmp_path, "--resume") == 0
    assert toy.calls == []
    # --retry-failed alone would start the file afresh: refused, the file kept.
    before = (tmp_path / "toy.json").read_text()
    with pytest.raises(SystemExit) as exit_info:
        _run(toy, tmp_path, "--retry-failed")
    assert exit_info.value.code == 2 and toy.calls == []
    assert "--retry-failed needs --resume" in capsys.readouterr().err
    assert (tmp_path / "toy.json").read_text() == before
    assert _run(toy, tmp_path, "--resume", "--retry-failed") == 0
    assert toy.calls == [(1.0, "two")]
    assert _results(tmp_path)["results"]["value1/two"]["status"] == "ok"
    # Without record_failures an error stops the run, and there is no --retry-failed.
    with pytest.raises(ValueError, match="broken"):
        _run(Toy(fail={(1.0, "one")}), tmp_path / "strict")
    with pytest.raises(SystemExit):
        _run(Toy(), tmp_path, "--retry-failed")


def test_resume_refuses_another_config_and_bad_files(tmp_path, capsys):
    assert _run(Toy(), tmp_path) == 0
    before = (tmp_path / "toy.json").read_text()
    with pytest.raises(SystemExit):
        _run(Toy(), tmp_path, "--size", "4", "--resume")
    assert "cannot resume" in capsys.readouterr().err
    assert (tmp_path / "toy.json").read_text() == before
    (tmp_path / "toy.json").write_text('{"results": {"value1/one": ')  # not JSON
    with pytest.raises(SystemExit):
        _run(Toy(), tmp_path, "--resume")
    assert "not a JSON file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _run(Toy(), tmp_path, "--report-only")
    assert "not a JSON file" in capsys.readouterr().err


@pytest.mark.parametrize(
    "bad", [["--methods", "four"], ["--epochs", "0"], ["--rasl-max-iter", "0"]]
)
def test_common_options_are_checked(bad, tmp_path):
    with pytest.raises(SystemExit):
        _run(Toy(), tmp_path, *bad)
    assert not list(tmp_path.iterdir())


def test_methods_are_run_in_the_protocols_order(tmp_path):
    toy = Toy()
    assert _run(toy, tmp_path, "--values", "1", "--methods", "three", "one") == 0
    assert toy.calls == [(1.0, "one"), (1.0, "three")]


def test_report_only_rebuilds_the_tables_from_the_file(tmp_path):
    results = {
        "value5/one": {"value": 5.0, "method": "one", "total": 15.0},
        "value5/three": {"value": 5.0, "method": "three", "total": 45.0},
    }
    (tmp_path / "toy.json").write_text(json.dumps({"results": results}))
    assert _run(Toy(), tmp_path, "--report-only", "--methods", "one", "three") == 0
    assert (tmp_path / "toy_tables.md").read_text() == (
        "| key | method | total |\n|---|---|---|\n| value5/one | one | 15.00 |\n"
        "| value5/three | three | 45.00 |\n"
    )
    # --report-only shows --methods (default: the protocol's default methods).
    assert _run(Toy(), tmp_path, "--report-only") == 0
    assert "three" not in (tmp_path / "toy_tables.md").read_text()
    with pytest.raises(SystemExit):
        _run(Toy(), tmp_path / "empty", "--report-only")


# === Merging the parts of a run ===


def _images(folder):
    with np.load(folder / "toy_images.npz") as images:
        return {k: images[k] for k in images.files}


def _merge(*argv):
    return Toy().main(["--merge", *map(str, argv)])


def test_merge_gives_the_union_of_the_parts(tmp_path, capsys):
    whole, part1, part2, merged = (tmp_path / n for n in ("whole", "p1", "p2", "merged"))
    assert _run(Toy(), whole, "--values", "1", "2") == 0
    assert _run(Toy(), part1, "--values", "1") == 0
    assert _run(Toy(), part2, "--values", "2", "--methods", "one", "two", "three") == 0
    assert _run(Toy(), whole, "--values", "2", "--methods", "three", "--resume") == 0
    capsys.readouterr()
    assert _merge(part1, part2, "--output-dir", merged) == 0
    data, parts = _results(merged), [_results(part1), _results(part2)]
    assert data["results"] == {**parts[0]["results"], **parts[1]["results"]}
    assert data["schema"] == Toy.schema and data["config"] == {"size": 3}
    assert data["measures"] == Toy.measures and "finished" in data
    # The parts' runs, then the merge's.
    assert data["runs"][:2] == [parts[0]["runs"][0], parts[1]["runs"][0]]
    assert data["runs"][2]["merged"] == [
        common.portable_path(p / "toy.json") for p in (part1, part2)
    ]
    assert data["runs"][2]["command"].startswith("python -m benchmarks.tests.test_protocol --merge")
    # The same entries, images and tables as one run over both parts.
    expected = _results(whole)["results"]
    assert sorted(data["results"]) == sorted(expected)
    assert {k: e["total"] for k, e in data["results"].items()} == {
        k: e["total"] for k, e in expected.items()
    }
    images, expected_images = _images(merged), _images(whole)
    assert sorted(images) == sorted(expected_images)
    for key, image in images.items():
        np.testing.assert_array_equal(image, expected_images[key])
    tables = (merged / "toy_tables.md").read_text()
    assert tables == (whole / "toy_tables.md").read_text()
    assert "| value2/three | three | 18.00 |" in tables
    assert capsys.readouterr().out == tables
    # Merging again over the merged file with --resume changes no entry (equal
    # duplicates are no conflict); without --resume the file is replaced.
    assert _merge(part1, part2, "--output-dir", merged, "--resume") == 0
    assert _results(merged)["results"] == data["results"] and len(_results(merged)["runs"]) == 6
    assert _merge(part1, "--output-dir", merged) == 0
    assert _results(merged)["results"] == parts[0]["results"]
    assert sorted(_images(merged)) == ["value1/one", "value1/two"]


def test_merge_with_resume_includes_the_existing_file(tmp_path):
    part1, out = tmp_path / "p1", tmp_path / "out"
    assert _run(Toy(), part1, "--values", "1") == 0
    assert _run(Toy(), out, "--values", "3") == 0
    existing = _results(out)
    assert _merge(part1, "--output-dir", out, "--resume") == 0
    data = _results(out)
    assert data["results"] == {**existing["results"], **_results(part1)["results"]}
    assert data["runs"][:2] == [existing["runs"][0], _results(part1)["runs"][0]]
    assert sorted(_images(out)) == ["value1/one", "value1/two", "value3/one", "value3/two"]
    assert "| value3/two | two | 18.00 |" in (out / "toy_tables.md").read_text()


def _refused(capsys, tmp_path, *argv):
    """Runs a merge that must fail: returns its error line; checks nothing was written."""
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(SystemExit) as exit_info:
        _merge(*argv)
    assert exit_info.value.code == 2
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_merge_refuses_mismatched_and_conflicting_files(tmp_path, capsys):
    part1, part2, out = tmp_path / "p1", tmp_path / "p2", tmp_path / "out"
    assert _run(Toy(), part1, "--values", "1") == 0
    assert _run(Toy(), part2, "--values", "2", "--size", "4") == 0
    assert _run(Toy(), out, "--values", "3") == 0
    capsys.readouterr()
    error = _refused(capsys, tmp_path, part1, part2, "--output-dir", out)
    assert error.endswith(
        f"--merge: {part2 / 'toy.json'} was written with config {{'size': 4}}, "
        f"{part1 / 'toy.json'} with {{'size': 3}}"
    )
    # With --resume the existing file is an input, and must match too.
    assert _run(Toy(), part2, "--values", "2") == 0
    (out / "toy.json").write_text(json.dumps({**_results(out), "config": {"size": 5}}))
    capsys.readouterr()
    error = _refused(capsys, tmp_path, part1, part2, "--output-dir", out, "--resume")
    assert f"--merge: {part1 / 'toy.json'} was written with config {{'size': 3}}" in error
    # Another schema, a missing file, a file that is not JSON.
    schema = {**_results(part2), "schema": "keras_congeal.other/1"}
    (tmp_path / "p3").mkdir()
    (tmp_path / "p3" / "toy.json").write_text(json.dumps(schema))
    error = _refused(capsys, tmp_path, part1, tmp_path / "p3", "--output-dir", out)
    assert error.endswith("has schema 'keras_congeal.other/1', expected 'keras_congeal.toy/1'")
    error = _refused(capsys, tmp_path, part1, tmp_path / "none", "--output-dir", out)
    assert error.endswith(f"--merge: {tmp_path / 'none' / 'toy.json'} does not exist")
    (tmp_path / "p3" / "toy.json").write_text("{")
    assert "is not a JSON file" in _refused(capsys, tmp_path, tmp_path / "p3", "--output-dir", out)
    # A key in two files with another entry, or another image.
    conflict = _results(part1)
    conflict["results"]["value1/one"]["total"] = 99.0
    (tmp_path / "p3" / "toy.json").write_text(json.dumps(conflict))
    error = _refused(capsys, tmp_path, part1, tmp_path / "p3", "--output-dir", out)
    assert error.endswith(
        f"--merge: {tmp_path / 'p3' / 'toy.json'}: its entry 'value1/one' differs from "
        "that of an earlier file"
    )
    (tmp_path / "p3" / "toy.json").write_text(json.dumps(_results(part1)))
    images = {**_images(part1), "value1/two": np.zeros(3)}
    np.savez(tmp_path / "p3" / "toy_images.npz", **images)
    error = _refused(capsys, tmp_path, part1, tmp_path / "p3", "--output-dir", out)
    assert error.endswith("its image 'value1/two' differs from that of an earlier file")
    # --merge is no --report-only.
    assert "exclude each other" in _refused(capsys, tmp_path, part1, "--report-only")


# === Resuming files written before a setting existed ===


def test_recorded_congeal_settings_take_the_defaults_of_later_settings():
    from keras_congeal.settings import CongealSettings

    current = CongealSettings().to_dict()
    older = {k: v for k, v in current.items() if k not in ("precision", "min_steps")}
    config = {"n": 10, "congeal_settings": older}
    assert protocol.read_congeal_config(config) == {"n": 10, "congeal_settings": current}
    # A recorded value that differs stays different.
    changed = {**older, "learning_rate": 0.5}
    assert (
        protocol.read_congeal_config({"congeal_settings": changed})["congeal_settings"][
            "learning_rate"
        ]
        == 0.5
    )
    # Settings this code cannot read are compared as written.
    unknown = {"congeal_settings": {**older, "removed_setting": 1}}
    assert protocol.read_congeal_config(unknown) == unknown
    assert protocol.read_congeal_config({"n": 1}) == {"n": 1}


def test_a_file_without_a_later_setting_resumes(tmp_path):
    from keras_congeal.settings import CongealSettings

    path = tmp_path / "old.json"
    current = CongealSettings().to_dict()
    older = {k: v for k, v in current.items() if k != "precision"}
    path.write_text(
        json.dumps(
            {
                "schema": "s/1",
                "config": {"congeal_settings": older},
                "runs": [{}],
                "results": {"a": {"x": 1}},
            }
        )
    )
    store = common.ResultStore(
        path,
        "s/1",
        {"congeal_settings": current},
        {"n": 2},
        resume=True,
        read_config=protocol.read_congeal_config,
    )
    assert store.done("a") and len(store.data["runs"]) == 2
    assert store.data["config"] == {"congeal_settings": older}  # kept as written
    with pytest.raises(ValueError, match="cannot resume"):
        common.ResultStore(path, "s/1", {"congeal_settings": current}, {}, resume=True)
    bf16 = {**current, "precision": "mixed_bfloat16"}
    with pytest.raises(ValueError, match="cannot resume"):
        common.ResultStore(
            path,
            "s/1",
            {"congeal_settings": bf16},
            {},
            resume=True,
            read_config=protocol.read_congeal_config,
        )


def test_a_file_from_before_the_schedule_resumes_only_at_the_constant_rate(tmp_path):
    # Runs written before `learning_rate_schedule` existed trained at a
    # constant rate: the cosine default must not continue them.
    from keras_congeal.settings import CongealSettings

    path = tmp_path / "old.json"
    current = CongealSettings().to_dict()
    assert current["learning_rate_schedule"] == "cosine"
    older = {k: v for k, v in current.items() if k != "learning_rate_schedule"}
    path.write_text(json.dumps({"schema": "s/1", "config": {"congeal_settings": older},
                                "runs": [], "results": {"a": {"x": 1}}}))
    constant = {**current, "learning_rate_schedule": "constant"}
    store = common.ResultStore(path, "s/1", {"congeal_settings": constant}, {}, resume=True,
                               read_config=protocol.read_congeal_config)
    assert store.done("a")
    with pytest.raises(ValueError, match="cannot resume"):
        common.ResultStore(path, "s/1", {"congeal_settings": current}, {}, resume=True,
                           read_config=protocol.read_congeal_config)


# === The scripts' tables from hand-made results ===


def _mnist_entry(digit, sigma, method, apsnr, ink, scale, status="ok", **extra):
    return {
        "digit": digit,
        "sigma": sigma,
        "method": method,
        "status": status,
        "apsnr": apsnr,
        "ink_kept": ink,
        "content_scale_median": scale,
        "images": 10,
        "images_kept": 10 if apsnr is not None else None,
        "seconds": 2.0,
        **extra,
    }


def test_mnist_tables_from_hand_made_results():
    results = {
        "digit3/sigma0.2/input": _mnist_entry(3, 0.2, "input", 10.0, 1.0, 1.0),
        "digit8/sigma0.2/input": _mnist_entry(8, 0.2, "input", 12.0, 1.0, 1.0),
        "digit3/sigma0.2/rasl-affine": _mnist_entry(
            3, 0.2, "rasl-affine", 14.0, 0.9, 0.8, capped=True
        ),
        "digit8/sigma0.2/rasl-affine": _mnist_entry(
            8, 0.2, "rasl-affine", None, None, None, status="failed: ValueError: x"
        ),
    }
    text = mnist_protocols.tables(results, list(mnist_protocols.METHODS))
    assert "| 0.2 | input | 3 8 | 11.00 | 1.00 | 1.00 | 10/10 | 2.0 |" in text
    assert (
        "| 0.2 | rasl-affine | 3 | 14.00* (capped) (1 failed) | 0.90 | 0.80 | 10/10 | 2.0 |" in text
    )
    assert "| input | 10.00 (1.00, 1.00) | 12.00 (1.00, 1.00) |" in text
    assert "| rasl-affine | 14.00 (0.90, 0.80) | failed |" in text
    assert "kc-D" not in text


def test_lfw_tables_from_hand_made_results():
    def entry(subject, method, apsnr, error, **extra):
        return {
            "subject": subject,
            "init": 0.0,
            "method": method,
            "images": 20,
            "apsnr": apsnr,
            "landmark_error_percent": error,
            "content_scale_median": 1.0,
            "seconds": 3.0,
            **extra,
        }

    results = {
        "Tony_Blair/init0/input": entry("Tony_Blair", "input", 14.0, 9.0),
        "George_W_Bush/init0/input": entry("George_W_Bush", "input", 16.0, 7.0),
        "Tony_Blair/init0/keras_congeal": entry(
            "Tony_Blair",
            "keras_congeal",
            15.5,
            4.0,
            epochs=5,
            steps=10,
            trajectory=[{"step": 0, "landmark_error": 9.0}, {"step": 10, "landmark_error": 4.0}],
        ),
    }
    text = lfw.tables(results, ["input", "keras_congeal"])
    # Table 2's subject order, whatever the results' order.
    assert text.index("| George_W_Bush | 0 | input |") < text.index("| Tony_Blair | 0 | input |")
    assert (
        "| Tony_Blair | 0 | keras_congeal | 20 | 15.50 | 4.00 | 1.000 | 3.0 | "
        "5 ep / 10 steps | 0:9.0 10:4.0 |"
    ) in text
    assert "| 0 | input | 2 | 15.00 | 8.00 | 1.000 | 6.0 |" in text
    assert "| VJ | input (here) | 7.00% | - | - | 9.00% |" in text
    assert "| VJ | Proposed (paper) | 2.67% | 1.86% | 2.24% | 2.39% |" in text


# === Through the command line ===


def _mnist_protocols(*argv):
    """`python -m benchmarks.mnist_protocols *argv` in a subprocess, finished."""
    command = [sys.executable, "-m", "benchmarks.mnist_protocols", *map(str, argv)]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_report_only_through_a_subprocess(tmp_path):
    results = {"digit3/sigma0.1/input": _mnist_entry(3, 0.1, "input", 10.0, 1.0, 1.0)}
    (tmp_path / "mnist_protocols_quick.json").write_text(json.dumps({"results": results}))
    done = _mnist_protocols("--quick", "--report-only", "--output-dir", tmp_path)
    assert done.returncode == 0, done.stderr
    assert "| 0.1 | input | 3 | 10.00 | 1.00 | 1.00 | 10/10 | 2.0 |" in done.stdout
    assert (tmp_path / "mnist_protocols_quick_tables.md").read_text() == done.stdout
    # A missing results file: one line naming it, exit 2, nothing written.
    done = _mnist_protocols("--quick", "--report-only", "--output-dir", tmp_path / "none")
    assert done.returncode == 2 and not (tmp_path / "none").exists()
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .endswith(
            f"--report-only: {tmp_path / 'none' / 'mnist_protocols_quick.json'} does not exist"
        )
    )


def test_merge_through_a_subprocess(tmp_path):
    def part(folder, digit, apsnr, config):
        folder.mkdir()
        data = {
            "schema": mnist_protocols.SCHEMA,
            "config": config,
            "runs": [{"command": f"python -m benchmarks.mnist_protocols --digits {digit}"}],
            "results": {
                f"digit{digit}/sigma0.2/input": _mnist_entry(digit, 0.2, "input", apsnr, 1.0, 1.0)
            },
        }
        (folder / "mnist_protocols_quick.json").write_text(json.dumps(data))

    part(tmp_path / "d3", 3, 10.0, {"mode": "quick", "n": 10})
    part(tmp_path / "d8", 8, 12.0, {"mode": "quick", "n": 10})
    done = _mnist_protocols(
        "--quick", "--merge", tmp_path / "d3", tmp_path / "d8", "--output-dir", tmp_path / "out"
    )
    assert done.returncode == 0, done.stderr
    assert "| 0.2 | input | 3 8 | 11.00 | 1.00 | 1.00 | 10/10 | 2.0 |" in done.stdout
    assert (tmp_path / "out" / "mnist_protocols_quick_tables.md").read_text() == done.stdout
    merged = json.loads((tmp_path / "out" / "mnist_protocols_quick.json").read_text())
    assert len(merged["runs"]) == 3 and len(merged["results"]) == 2
    # Parts run with another --n: one line naming the file, exit 2, nothing written.
    part(tmp_path / "n20", 8, 12.0, {"mode": "quick", "n": 20})
    done = _mnist_protocols(
        "--quick", "--merge", tmp_path / "d3", tmp_path / "n20", "--output-dir", tmp_path / "none"
    )
    assert done.returncode == 2 and not (tmp_path / "none").exists()
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .endswith(
            f"--merge: {tmp_path / 'n20' / 'mnist_protocols_quick.json'} was written with config "
            f"{{'n': 20}}, {tmp_path / 'd3' / 'mnist_protocols_quick.json'} with {{'n': 10}}"
        )
    )


def test_tables_mark_erased_and_infinite_entries():
    # Hand-made entries: digit 1 erased to black (APSNR "inf" as the JSON
    # writes it), digit 9 erased to 2% of the ink, digit 3 healthy.
    def entry(digit, apsnr, ink):
        return {"digit": digit, "sigma": 0.3, "method": "kc-D+C", "status": "ok",
                "apsnr": apsnr, "ink_kept": ink, "content_scale_median": 1.0,
                "seconds": 1.0, "images": 10, "images_kept": 10}

    results = {f"digit{d}/sigma0.3/kc-D+C": entry(d, a, i)
               for d, a, i in ((1, "inf", 0.0), (3, 15.0, 0.9), (9, 29.0, 0.02))}
    rows = mnist_protocols.summary_rows(results, [0.3], ["kc-D+C"])
    assert rows[0]["apsnr"] == pytest.approx(22.0)  # (15 + 29) / 2: inf left out
    assert rows[0]["erased"] == 2 and rows[0]["not_finite"] == 1
    text = mnist_protocols.tables(results, ["kc-D+C"])
    assert "| 22.00 (2 erased) (1 inf, not averaged) |" in text
    assert protocol.mean_of([1.0, None, "nan", float("inf"), 3.0]) == 2.0
