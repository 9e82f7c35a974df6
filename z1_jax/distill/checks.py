"""The optional check of a trajectory's answer, run in the sandbox (`eval.sandbox`: bubblewrap,
limits, a wall-clock kill), beyond Z1 (which kept every trajectory, right or wrong).

  tests    the problem has tests in `eval/code.py`'s schema (`problems.tests_column`: humaneval,
           unittest, functional or stdin style): the response's code (its last code block
           defining the entry point) runs against them (`eval.code.run_tests`). A problem
           without tests is not checked (`passed` is null).
  output   output-prediction problems ("what does this program print?", the demo's task): the
           problem's program (`problems.program_column`, default the question) runs in the
           sandbox once, and the row passes when the answer taken from the response
           (`filters.answer_pattern`, group 1) equals what the program printed (both stripped).
           A program that fails to run fails every row of its problem (error
           `program_<kind>`).

`Checker.submit` returns a future of (passed, error kind or None); sandbox runs go on in worker
threads while the engine decodes the next batch.
"""

from __future__ import annotations

import concurrent.futures as cf
import math
import os
import threading

from z1_jax.distill.filters import extract_answer
from z1_jax.distill.problems import Problem


class Checker:

  def __init__(self, filters, workers: int | None = None):
    from z1_jax.eval.sandbox import Limits, Sandbox
    self.kind, self.pattern = filters.check, filters.answer_pattern
    limits = Limits(wall_s=filters.check_timeout_s, cpu_s=math.ceil(filters.check_timeout_s))
    self.sandbox = Sandbox(limits, allow_unsandboxed=filters.allow_unsandboxed)
    self.pool = cf.ThreadPoolExecutor(workers or filters.check_workers or os.cpu_count() or 1,
                                      thread_name_prefix="z1-distill-check")
    self._outputs: dict[int, cf.Future] = {}
    self._lock = threading.Lock()

  def submit(self, problem: Problem, response: str) -> cf.Future:
    """A future of (passed: bool or None when the problem has no tests, error kind or None)."""
    if self.kind == "tests":
      return self.pool.submit(self._tests, problem, response)
    return self.pool.submit(self._output, problem, response)

  def _tests(self, problem: Problem, response: str):
    if problem.tests is None:
      return None, None
    from z1_jax.eval.benchmarks import Problem as CodeProblem
    from z1_jax.eval.code import run_tests
    return run_tests(self.sandbox, CodeProblem(problem.id, "distill", "code", problem.question,
                                               tests=problem.tests), response)

  def _output(self, problem: Problem, response: str):
    printed, error = self._program_output(problem)
    if error is not None:
      return False, f"program_{error}"
    answer = extract_answer(response, self.pattern)
    if answer is None:
      return False, "no_answer"
    return (True, None) if answer == printed else (False, "wrong_answer")

  def _program_output(self, problem: Problem) -> tuple[str | None, str | None]:
    """(stripped stdout, None) of the problem's program, run once per problem; or (None,
    error kind)."""
    with self._lock:
      fut = self._outputs.get(problem.index)
      owner = fut is None
      if owner:
        fut = self._outputs[problem.index] = cf.Future()
    if owner:
      from z1_jax.eval.code import classify
      try:
        result = self.sandbox.run({"program.py": problem.program}, ["program.py"])
        error = classify(result)
        fut.set_result((None, error) if error else (result.stdout.strip(), None))
      except BaseException as e:  # noqa: BLE001 - every waiter must hear of it
        fut.set_exception(e)
    return fut.result()

  def close(self) -> None:
    self.pool.shutdown(wait=True, cancel_futures=True)
