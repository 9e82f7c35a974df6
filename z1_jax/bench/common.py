"""Shared helpers of the speed benchmarks: timing and printing result rows.

Every `z1 bench ...` command prints the z1-jax figure and the reference measured in the same
run (this machine is shared and noisy: compare ratios, not absolute figures). The benchmark
modules live outside the runtime path: nothing under `z1_jax` imports `z1_jax.bench`.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time


def median_time(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def machine() -> dict:
  """The CPU's widest vector ISA, its cores and the load: CPU ratios differ by machine."""
  flags = ""
  try:
    with open("/proc/cpuinfo") as f:
      flags = next((line for line in f if line.startswith("flags")), "")
  except OSError:
    pass
  names = set(flags.split())
  isa = next((n for n, f in (("AVX-512", "avx512f"), ("AVX2", "avx2"), ("AVX", "avx"),
                             ("SSE4.2", "sse4_2")) if f in names), platform.machine())
  return {"cpu_isa": isa, "cpus": os.cpu_count(), "loadavg": round(os.getloadavg()[0], 2)}


def print_rows(rows: list[dict], as_json: bool) -> None:
  rows = [*rows, {"impl": "machine", **machine()}]
  for row in rows:
    if as_json:
      print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}))
    else:
      print("  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in row.items()))
