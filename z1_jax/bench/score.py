"""`z1 bench score`: sandboxed HumanEval scoring against plain, unisolated subprocesses."""

from __future__ import annotations

import time


def bench_score(workers: int | None = None) -> list[dict]:
  """Sandboxed scoring of the 164 HumanEval canonical solutions, against running the same
  (trusted) programs as plain subprocesses without isolation, same worker count."""
  import concurrent.futures as cf
  import os
  import subprocess

  from z1_jax.eval.benchmarks import load_benchmark
  from z1_jax.eval.sandbox import Limits, _default_python
  from z1_jax.eval.score import Scorer

  problems = load_benchmark("humaneval")
  workers = workers or os.cpu_count() or 1
  samples = [{"task_id": p.id, "completion": p.tests["canonical_solution"]} for p in problems]
  scorer = Scorer(problems, Limits(), workers=workers)
  start = time.perf_counter()
  _, summary = scorer.score(samples, progress=False)
  sandboxed_s = time.perf_counter() - start
  scorer.close()

  def plain(p):
    program = (p.tests["prompt"] + p.tests["canonical_solution"] + "\n" + p.tests["test"] +
               f"\ncheck({p.tests['entry_point']})\n")
    return subprocess.run([_default_python(), "-c", program], capture_output=True).returncode

  start = time.perf_counter()
  with cf.ThreadPoolExecutor(workers) as pool:
    codes = list(pool.map(plain, problems))
  plain_s = time.perf_counter() - start
  return [{"impl": "z1-jax sandboxed (bwrap + limits)", "samples": len(samples),
           "passed": summary["passed"], "workers": workers, "seconds": sandboxed_s},
          {"impl": "plain subprocess, no isolation (reference)", "samples": len(samples),
           "passed": codes.count(0), "workers": workers, "seconds": plain_s},
          {"impl": "ratio", "sandbox_overhead": sandboxed_s / plain_s}]
