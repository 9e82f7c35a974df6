"""Scoring completions for a benchmark: per-sample verdicts, pass@k, and `z1 score`."""

from __future__ import annotations

import collections
import concurrent.futures as cf
import os
from math import comb
from pathlib import Path

from tqdm.auto import tqdm

from z1_jax.data.sources import DataError, jsonl_records
from z1_jax.eval.answers import score_math, score_mc
from z1_jax.eval.benchmarks import Problem
from z1_jax.eval.code import run_tests
from z1_jax.eval.sandbox import Limits, Sandbox

ID_FIELDS = ("task_id", "question_id", "id", "problem_id")


def pass_at_k(n: int, c: int, k: int) -> float:
  """Unbiased estimator 1 - C(n-c, k) / C(n, k) (n samples, c correct)."""
  if n - c < k:
    return 1.0
  return 1.0 - comb(n - c, k) / comb(n, k)


def read_samples(path: str | os.PathLike) -> list[dict]:
  path = Path(path)
  if not path.exists():
    raise FileNotFoundError(f"samples file not found: {path}")
  if path.is_dir():
    raise DataError(f"{path} is a directory; expected a JSONL file of samples")
  rows = [row for _, row in jsonl_records(path)]
  if not rows:
    raise DataError(f"{path}: no samples (empty file)")
  return rows


def _sample_id(row: dict, where: str) -> str:
  for key in ID_FIELDS:
    if key in row:
      return str(row[key])
  raise ValueError(f"{where}: no id field (one of {ID_FIELDS})")


class Scorer:
  """Scores completions; code runs in the sandbox, math under a deadline in worker threads."""

  def __init__(self, problems: list[Problem], limits: Limits = Limits(), workers: int | None = None,
               math_timeout_s: float = 10.0, allow_unsandboxed: bool = False):
    self.problems = {p.id: p for p in problems}
    self.workers = workers or os.cpu_count() or 1
    self.math_timeout_s = math_timeout_s
    needs_code = any(p.kind == "code" for p in problems)
    self.sandbox = Sandbox(limits, allow_unsandboxed=allow_unsandboxed) if needs_code else None
    self._math_pool = cf.ThreadPoolExecutor(self.workers, thread_name_prefix="z1-math")

  def score_one(self, problem: Problem, completion: str) -> dict:
    if problem.kind == "code":
      passed, error = run_tests(self.sandbox, problem, completion)
      return {"passed": passed, "error": error}
    fn = score_math if problem.kind == "math" else score_mc
    try:
      passed, extracted, error = self._math_pool.submit(fn, problem.answer, completion).result(
          timeout=self.math_timeout_s)
    except cf.TimeoutError:
      passed, extracted, error = False, None, "timeout"
    return {"passed": passed, "error": error, "extracted": extracted}

  def score(self, samples: list[dict], source: str = "samples", progress: bool = True):
    """Per-row verdicts in input order, and a summary with pass@k."""
    jobs = []
    for i, row in enumerate(samples):
      where = f"{source}: row {i}"
      sid = _sample_id(row, where)
      if sid not in self.problems:
        raise ValueError(f"{where}: id {sid!r} is not a problem of this benchmark")
      if not isinstance(row.get("completion"), str):
        raise ValueError(f"{where}: 'completion' missing or not a string")
      jobs.append((sid, row["completion"]))
    results: list[dict | None] = [None] * len(jobs)
    pool = cf.ThreadPoolExecutor(self.workers, thread_name_prefix="z1-score")
    try:
      futures = {pool.submit(self.score_one, self.problems[sid], c): i
                 for i, (sid, c) in enumerate(jobs)}
      for fut in tqdm(cf.as_completed(futures), total=len(futures), desc="score", unit="sample",
                      disable=not progress):
        i = futures[fut]
        results[i] = {"id": jobs[i][0], **fut.result()}
    except BaseException:
      # Ctrl-C or an error: drop the queued samples instead of running them all first.
      pool.shutdown(wait=False, cancel_futures=True)
      raise
    pool.shutdown()
    return results, summarize(results)

  def close(self):
    self._math_pool.shutdown(wait=False, cancel_futures=True)


def summarize(results: list[dict]) -> dict:
  by_id: dict[str, list[bool]] = collections.defaultdict(list)
  for r in results:
    by_id[r["id"]].append(bool(r["passed"]))
  ns = {len(v) for v in by_id.values()}
  summary = {"samples": len(results), "problems": len(by_id),
             "passed": sum(r["passed"] for r in results),
             "pass@1": sum(pass_at_k(len(v), sum(v), 1) for v in by_id.values()) / max(len(by_id), 1),
             "errors": dict(collections.Counter(r["error"] for r in results if r["error"]))}
  n = min(ns) if ns else 1
  for k in (2, 5, 10, 100):
    if k <= n:
      summary[f"pass@{k}"] = sum(pass_at_k(len(v), sum(v), k) for v in by_id.values()) / len(by_id)
  return summary
