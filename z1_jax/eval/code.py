"""Checking model-written programs against a problem's tests, inside the sandbox.

Styles (`Problem.tests["style"]`):
  humaneval   prompt + completion (or the completion's own code block), then `check(entry_point)`
  unittest    the code, then the benchmark's `unittest.TestCase`s (BigCodeBench)
  functional  `Solution().<func_name>(*args)` per case, outputs compared as JSON (LiveCodeBench)
  stdin       the program per case with the case's stdin; stdout compared line by line

A program passes only if its tests ran to the end: the runner prints a one-time nonce after the
last check, and the nonce is read from a file that the runner deletes before any model code
runs. An early `sys.exit(0)` / `os._exit(0)` therefore fails. (This guards against programs
that stop early, not against code written to dig the nonce out of the runner's memory.)
"""

from __future__ import annotations

import json
import secrets
import signal

from z1_jax.eval.benchmarks import Problem
from z1_jax.eval.extract import last_code_block
from z1_jax.eval.sandbox import RunResult, Sandbox

RUNNER = r'''
import json, os, sys
with open("nonce") as f:
    finish = (lambda nonce: lambda: print("\n" + nonce, flush=True))(f.read())
os.remove("nonce")
with open("spec.json") as f:
    SPEC = json.load(f)
os.remove("spec.json")
style = SPEC["style"]
ns = {"__name__": "__z1_solution__"}
if style == "humaneval":
    exec(compile(SPEC["program"] + "\n\n" + SPEC["test"], "solution.py", "exec"), ns)
    ns["check"](ns[SPEC["entry_point"]])
elif style == "unittest":
    import unittest
    exec(compile(SPEC["program"] + "\n\n" + SPEC["test"], "solution.py", "exec"), ns)
    cases = [v for v in ns.values() if isinstance(v, type) and issubclass(v, unittest.TestCase)]
    suite = unittest.TestSuite(unittest.defaultTestLoader.loadTestsFromTestCase(c) for c in cases)
    result = unittest.TextTestRunner(stream=sys.stderr, verbosity=0).run(suite)
    if not result.wasSuccessful() or result.testsRun == 0:
        raise AssertionError(f"unittest: {len(result.failures)} failures, "
                             f"{len(result.errors)} errors of {result.testsRun}")
elif style == "functional":
    exec(compile(SPEC["program"], "solution.py", "exec"), ns)
    method = getattr(ns["Solution"](), SPEC["func_name"])
    for i, case in enumerate(SPEC["cases"]):
        args = [json.loads(line) for line in case["input"].split("\n") if line.strip()]
        got, want = method(*args), json.loads(case["output"])
        if got != want:
            raise AssertionError(f"case {i}: got {got!r}, expected {want!r}")
sys.stdout.flush()
finish()
'''


def program_for(problem: Problem, completion: str) -> str | None:
  """The code to run, or None when the completion holds no code."""
  tests = problem.tests or {}
  block = last_code_block(completion)
  if tests.get("style") == "humaneval":
    if block is None:
      # HumanEval-style raw completion: the function body continues the prompt
      return tests["prompt"] + completion if completion.strip() else None
    if f"def {tests['entry_point']}" in block:
      return _prompt_imports(tests["prompt"]) + block
    return tests["prompt"] + block
  return block


def _prompt_imports(prompt: str) -> str:
  lines = [ln for ln in prompt.splitlines() if ln.startswith(("import ", "from "))]
  return "\n".join(lines) + "\n\n" if lines else ""


def _outputs_match(got: str, want: str) -> bool:
  norm = lambda s: [line.rstrip() for line in s.strip().splitlines()]
  return norm(got) == norm(want)


def classify(result: RunResult, nonce: str | None = None) -> str | None:
  """None when the run succeeded (and, with a nonce, reached its end); else the error kind."""
  if result.output_limited:
    return "output_limit"
  if result.timed_out or result.returncode in (-signal.SIGXCPU, 128 + signal.SIGXCPU,
                                               -signal.SIGKILL, 128 + signal.SIGKILL):
    return "timeout"
  if result.returncode != 0:
    err = result.stderr
    if "MemoryError" in err:
      return "memory"
    if "SyntaxError" in err or "IndentationError" in err:
      return "syntax_error"
    if "AssertionError" in err:
      return "wrong_answer"
    return "runtime_error"
  if nonce is not None and nonce not in result.stdout.splitlines():
    return "early_exit"
  return None


def run_tests(sandbox: Sandbox, problem: Problem, completion: str) -> tuple[bool, str | None]:
  """(passed, error kind) for one completion."""
  program = program_for(problem, completion)
  if program is None:
    return False, "no_code"
  tests = problem.tests or {}
  if tests.get("style") == "stdin":
    for case in tests["cases"]:
      result = sandbox.run({"solution.py": program}, ["solution.py"], stdin=case["input"])
      error = classify(result)
      if error is not None:
        return False, error
      if not _outputs_match(result.stdout, case["output"]):
        return False, "wrong_answer"
    return True, None
  nonce = secrets.token_hex(16)
  spec = {"style": tests["style"], "program": program, "test": tests.get("test", ""),
          "entry_point": tests.get("entry_point"), "cases": tests.get("cases", []),
          "func_name": tests.get("func_name")}
  if spec["style"] == "humaneval" and tests.get("entry_point") is None:
    raise ValueError(f"{problem.id}: humaneval tests need an entry_point")
  result = sandbox.run({"runner.py": RUNNER, "nonce": nonce, "spec.json": json.dumps(spec)},
                       ["runner.py"])
  error = classify(result, nonce)
  return error is None, error
