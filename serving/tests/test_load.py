"""The soak script `benchmarks/bench_load.py`, shortened: 64 clients, good and hostile
requests, no 5xx, flat memory, healthy afterwards (the README's 60 s numbers come from
the same script)."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.http

SCRIPT = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "bench_load.py")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_64_clients_mixing_good_and_malformed_requests(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            SCRIPT,
            "--clients",
            "64",
            "--duration",
            "3",
            "--output",
            str(tmp_path / "load.json"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "load.json").read_text())
    assert report["server_errors"] == 0 and not report["unexpected"], report
    assert report["after"] == {"health": 200, "ready": 200, "align": 200}
    assert all(report["checks"].values()), report["checks"]
    # Every kind of request was sent, the hostile ones included.
    assert set(report["by_kind"]) >= {"good_png", "bomb_header", "large_pngs", "float_0_255"}
    assert all(sum(counts.values()) > 0 for counts in report["by_kind"].values()), report
    assert report["good_requests"] > 0
