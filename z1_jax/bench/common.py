"""Shared helpers of the speed benchmarks: timing and printing result rows.

Every `z1 bench ...` command prints the z1-jax figure and the reference measured in the same
run (this machine is shared and noisy: compare ratios, not absolute figures). The benchmark
modules live outside the runtime path: nothing under `z1_jax` imports `z1_jax.bench`.
"""

from __future__ import annotations

import json
import statistics
import time


def median_time(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def print_rows(rows: list[dict], as_json: bool) -> None:
  for row in rows:
    if as_json:
      print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}))
    else:
      print("  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in row.items()))
