"""Checking model-written programs against a problem's tests, inside the sandbox.

Styles (`Problem.tests["style"]`):
  humaneval   prompt + completion (or the completion's own code block), then `check(entry_point)`
  unittest    the code, then the benchmark's `unittest.TestCase`s (BigCodeBench)
  functional  `Solution().<func_name>(*args)` per case, outputs compared as JSON (LiveCodeBench)
  stdin       the program once per case with the case's stdin, all cases in one sandbox run;
              stdout compared as LiveCodeBench does (stripped lines, else equal as decimals)

A program passes only if its tests ran to the end: the runner prints a one-time nonce after the
last check, and the nonce is read from a file that the runner deletes before any model code
runs. An early `sys.exit(0)` / `os._exit(0)` therefore fails. (This guards against programs
that stop early, not against code written to dig the nonce out of the runner's memory.)
"""

from __future__ import annotations

import ast
import dataclasses
import json
import re
import secrets
import signal

from z1_jax.eval.benchmarks import Problem
from z1_jax.eval.extract import code_blocks, last_block_defining
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
        if isinstance(got, tuple):  # as LiveCodeBench: a tuple may stand for a list
            got = list(got)
        if got != want:
            raise AssertionError(f"case {i}: got {got!r}, expected {want!r}")
elif style == "stdin":
    # Every case in this one sandbox, each in a fresh interpreter (real stdin, sys.exit allowed).
    # The program cannot reach this process's stdout, so the verdict line below is ours.
    import subprocess
    from decimal import Decimal, InvalidOperation
    def lines(text):
        return [line.strip() for line in text.strip().split("\n")]
    def decimals(line):
        try:
            return [Decimal(x) for x in line.split()]
        except InvalidOperation:
            return None
    def same(got, want):  # LiveCodeBench grade_stdio: stripped lines, else numbers equal
        got, want = lines(got), lines(want)
        if len(got) != len(want):
            return False
        for g, w in zip(got, want):
            if g != w and (decimals(g) is None or decimals(g) != decimals(w)):
                return False
        return True
    with open("solution.py", "w") as f:
        f.write(SPEC["program"])
    verdict = {"error": None}
    for i, case in enumerate(SPEC["cases"]):
        try:
            run = subprocess.run([sys.executable, "-I", "solution.py"], input=case["input"],
                                 capture_output=True, text=True, errors="replace",
                                 timeout=SPEC["case_timeout_s"])
        except subprocess.TimeoutExpired:
            verdict = {"error": "timeout", "case": i}
            break
        if run.returncode != 0:
            sys.stderr.write(run.stderr[-20000:])
            verdict = {"error": "exit", "case": i, "returncode": run.returncode}
            break
        if not same(run.stdout, case["output"]):
            verdict = {"error": "wrong_answer", "case": i}
            break
    sys.stdout.write("\nZ1-VERDICT " + json.dumps(verdict) + "\n")
sys.stdout.flush()
finish()
'''

# LiveCodeBench runs programs after these imports (LeetCode starter code uses `List` unimported).
LCB_PREAMBLE = (
    "from string import *\nfrom re import *\nfrom datetime import *\nfrom collections import *\n"
    "from heapq import *\nfrom bisect import *\nfrom copy import *\nfrom math import *\n"
    "from random import *\nfrom statistics import *\nfrom itertools import *\n"
    "from functools import *\nfrom operator import *\nfrom io import *\nfrom sys import *\n"
    "from json import *\nfrom builtins import *\nfrom typing import *\n"
    "import string, re, datetime, collections, heapq, bisect, copy, math, random, statistics\n"
    "import itertools, functools, operator, io, sys, json\nsys.setrecursionlimit(50000)\n\n")


@dataclasses.dataclass(frozen=True)
class Verdict:
  passed: bool
  error: str | None  # error kind; None when passed
  detail: str | None = None  # e.g. the missing module's name


def solution_block(problem: Problem, completion: str) -> str | None:
  """The code block that is the answer: the last one that defines what the tests call (the
  entry point; LiveCodeBench's `class Solution`), else the last block, so that a trailing
  usage example (`print(add(1, 2))`) is not taken for the solution. None: no block."""
  tests = problem.tests or {}
  blocks = code_blocks(completion)
  style, entry = tests.get("style"), tests.get("entry_point")
  if style == "functional":
    return last_block_defining(blocks, r"^\s*class Solution\b")
  if entry:
    return last_block_defining(blocks, rf"^\s*def {re.escape(entry)}\s*\(")
  return blocks[-1] if blocks else None


def program_for(problem: Problem, completion: str) -> str | None:
  """The code to run, or None when the completion holds no code."""
  tests = problem.tests or {}
  block = solution_block(problem, completion)
  style = tests.get("style")
  if style == "humaneval":
    if block is None:
      # HumanEval-style raw completion: the function body continues the prompt
      return tests["prompt"] + completion if completion.strip() else None
    if re.search(rf"^\s*def {re.escape(tests['entry_point'])}\s*\(", block, re.MULTILINE):
      return prompt_context(tests["prompt"], tests["entry_point"]) + block
    return tests["prompt"] + block
  if block is not None and style in ("functional", "stdin"):
    return LCB_PREAMBLE + block
  return block


def prompt_context(prompt: str, entry_point: str) -> str:
  """Everything the prompt defines except the entry point itself (imports, helper functions
  such as HumanEval/38's `encode_cyclic`, constants), to put before a block that defines the
  entry point: the tests may call those helpers."""
  try:
    tree = ast.parse(prompt)
  except SyntaxError:  # keep what can be kept without a parse: the imports
    lines = [ln for ln in prompt.splitlines() if ln.startswith(("import ", "from "))]
    return "\n".join(lines) + "\n\n" if lines else ""
  lines = prompt.splitlines(keepends=True)
  kept = []
  for node in tree.body:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == entry_point:
      continue
    first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    kept.append("".join(lines[first - 1:node.end_lineno]).rstrip() + "\n")
  return "\n".join(kept) + "\n\n" if kept else ""


_MISSING_MODULE = re.compile(r"ModuleNotFoundError: No module named '([^']+)'")


def classify(result: RunResult, nonce: str | None = None) -> str | None:
  """None when the run succeeded (and, with a nonce, reached its end); else the error kind."""
  if result.output_limited:
    return "output_limit"
  if result.timed_out or result.returncode in (-signal.SIGXCPU, 128 + signal.SIGXCPU,
                                               -signal.SIGKILL, 128 + signal.SIGKILL):
    return "timeout"
  if result.returncode != 0:
    return _error_kind(result.stderr)
  if nonce is not None and nonce not in result.stdout.splitlines():
    return "early_exit"
  return None


def _error_kind(stderr: str) -> str:
  if "MemoryError" in stderr:
    return "memory"
  if "SyntaxError" in stderr or "IndentationError" in stderr:
    return "syntax_error"
  if _MISSING_MODULE.search(stderr):
    return "missing_module"
  if "AssertionError" in stderr:
    return "wrong_answer"
  return "runtime_error"


def check_program(sandbox: Sandbox, problem: Problem, program: str,
                  case_timeout_s: float | None = None) -> Verdict:
  """Runs `program` against the problem's tests in one sandbox run. `case_timeout_s`: the
  per-case limit of stdin problems (default: the sandbox's wall limit)."""
  tests = problem.tests or {}
  style = tests.get("style")
  if style == "humaneval" and tests.get("entry_point") is None:
    raise ValueError(f"{problem.id}: humaneval tests need an entry_point")
  nonce = secrets.token_hex(16)
  spec = {"style": style, "program": program, "test": tests.get("test", ""),
          "entry_point": tests.get("entry_point"), "cases": tests.get("cases", []),
          "func_name": tests.get("func_name"),
          "case_timeout_s": case_timeout_s or sandbox.limits.wall_s}
  result = sandbox.run({"runner.py": RUNNER, "nonce": nonce, "spec.json": json.dumps(spec)},
                       ["runner.py"])
  error = classify(result, nonce)
  if error is None and style == "stdin":
    verdict = _stdin_verdict(result.stdout)
    if verdict is None:
      error = "early_exit"
    elif verdict["error"] == "exit":
      error = ("timeout" if verdict["returncode"] in (-signal.SIGXCPU, -signal.SIGKILL)
               else _error_kind(result.stderr))
    else:
      error = verdict["error"]
  missing = _MISSING_MODULE.search(result.stderr) if error == "missing_module" else None
  return Verdict(error is None, error, missing.group(1) if missing else None)


def _stdin_verdict(stdout: str) -> dict | None:
  for line in reversed(stdout.splitlines()):
    if line.startswith("Z1-VERDICT "):
      return json.loads(line[len("Z1-VERDICT "):])
  return None


def run_tests(sandbox: Sandbox, problem: Problem, completion: str) -> tuple[bool, str | None]:
  """(passed, error kind) for one completion."""
  program = program_for(problem, completion)
  if program is None:
    return False, "no_code"
  verdict = check_program(sandbox, problem, program)
  return verdict.passed, verdict.error
