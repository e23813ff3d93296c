"""Peer methods run side by side with keras_congeal in the benchmarks.

* `run_rasl`: RASL through the PyPI package `rasl==0.1.0`, with two guards
  (see `benchmarks.baselines.rasl_baseline`).
* `run_lsc`: least-squares congealing (inverse-compositional Gauss-Newton
  toward a reference), in NumPy (see `benchmarks.baselines.lsc`).

Both take an (N, H, W) stack and return the same dict: `aligned`,
`transforms` (pixel `src_from_dst`, the project's convention), `kept_mask`,
`seconds`, `iterations`, `peak_memory_bytes`, `max_rss_bytes`, `method`,
`info`. Neither imports Keras; `rasl` is imported only when `run_rasl` runs.
"""

from benchmarks.baselines.lsc import run_lsc
from benchmarks.baselines.rasl_baseline import run_rasl

__all__ = ["run_lsc", "run_rasl"]
