"""Tests of `benchmarks.baselines._common.measured_run`."""

import time
import tracemalloc

import numpy as np
import pytest

from benchmarks.baselines._common import measured_run


def test_measured_run_times_the_block_and_traces_its_peak():
    with measured_run(trace_memory=True) as cost:
        assert cost == {"seconds": None, "peak_memory_bytes": None}
        block = np.ones(2_000_000, dtype=np.uint8)  # 2 MB, traced by NumPy
        del block
        time.sleep(0.02)
    assert cost["seconds"] >= 0.02
    assert cost["peak_memory_bytes"] >= 2_000_000
    assert not tracemalloc.is_tracing()
    with measured_run() as cost:
        np.ones(2_000_000, dtype=np.uint8)
    assert cost["peak_memory_bytes"] is None and cost["seconds"] > 0


def test_measured_run_stops_tracing_when_the_block_raises():
    with pytest.raises(ValueError), measured_run(trace_memory=True) as cost:
        raise ValueError("broken")
    assert not tracemalloc.is_tracing()
    assert cost["seconds"] is None
