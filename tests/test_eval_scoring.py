"""Scoring that holds up on real model output: killable math workers, LiveCodeBench stdin
comparison in one sandbox run, the verdict cache, pass-through rows, the sandbox interpreter."""

import json
import time

import pytest

from z1_jax.cli import main
from z1_jax.errors import Z1Error
from z1_jax.eval.benchmarks import Problem, load_benchmark
from z1_jax.eval.code import check_program, program_for
from z1_jax.eval.sandbox import Limits, Sandbox
from z1_jax.eval.score import Scorer
from z1_jax.eval.workers import CallTimeout, DeadlinePool

HUNG = r"\boxed{9^{9^{9^{9}}}}"  # sympy tries to evaluate it and never returns


def test_deadline_pool_kills_a_hung_call_and_the_next_call_gets_its_own_deadline():
  pool = DeadlinePool(time.sleep, workers=1, timeout_s=1.5)
  try:
    hung, quick = pool.submit(60), pool.submit(1.0)  # quick waits behind hung in the queue
    with pytest.raises(CallTimeout):
      hung.result(timeout=30)
    start = time.perf_counter()
    assert quick.result(timeout=30) is None  # 1 s of running < 1.5 s: not a timeout
    assert time.perf_counter() - start >= 0.9
  finally:
    pool.close()


def test_hung_sympy_sample_times_out_alone():
  problems = load_benchmark("aime2024")[:2]
  scorer = Scorer(problems, workers=1, math_timeout_s=3.0)
  try:
    start = time.perf_counter()
    hung = scorer.submit(problems[0].id, "so " + HUNG)
    right = scorer.submit(problems[0].id, f"\\boxed{{{problems[0].answer}}}")
    wrong = scorer.submit(problems[1].id, r"\boxed{-1}")
    assert hung.result(timeout=60) == {"passed": False, "error": "timeout",
                                       "extracted": HUNG[7:-1]}
    assert right.result(timeout=60)["passed"] is True
    assert wrong.result(timeout=60)["error"] == "wrong_answer"
    assert time.perf_counter() - start < 30
  finally:
    scorer.close()


def _lcb_stdin(cases):
  return Problem("p1", "livecodebench", "code", "q", tests={"style": "stdin", "cases": cases})


def _fence(code):
  return f"Reasoning...\n```python\n{code}\n```"


def test_stdin_compares_like_livecodebench_in_one_sandbox_run():
  problem = _lcb_stdin([{"input": "1 2\n", "output": "3\n"},
                        {"input": "0.5 0.25\n", "output": "0.75\n"},
                        {"input": "2 2\n", "output": "4.0\n\n"}])
  sandbox = Sandbox(Limits(wall_s=20, cpu_s=10))
  runs = []
  real_run = sandbox.run
  sandbox.run = lambda *a, **k: runs.append(1) or real_run(*a, **k)

  def verdict(code, **kw):
    return check_program(sandbox, problem, program_for(problem, _fence(code)), **kw)

  # numbers equal as decimals ("4" == "4.0"), lines stripped, trailing blank lines ignored
  add = "a, b = input().split()\nx = float(a) + float(b)\nprint(int(x) if x == int(x) else x, ' ')"
  assert verdict(add).passed
  assert runs == [1]  # all three cases in one sandbox run
  assert verdict(add + "\nimport sys\nsys.exit(0)").passed  # a stdin program may exit itself
  wrong = verdict("a, b = map(float, input().split())\nprint(a + b + 1e-9)")
  assert (wrong.passed, wrong.error) == (False, "wrong_answer")  # LCB: no float slack
  extra = verdict(add + "\nprint('debug')")
  assert extra.error == "wrong_answer"  # an extra line is a different output
  slow = verdict("import time\na, b = input().split()\nif a == '0.5':\n    time.sleep(30)\n"
                 "print(int(a) + int(b))", case_timeout_s=1.0)
  assert slow.error == "timeout"
  crash = verdict("raise ValueError('boom')")
  assert crash.error == "runtime_error"


def test_verdict_cache_scores_an_identical_answer_once():
  humaneval = load_benchmark("humaneval")[:2]
  scorer = Scorer(humaneval, Limits(wall_s=10, cpu_s=10), workers=2)
  runs = []
  sandbox = scorer.sandboxes["humaneval"]
  real_run = sandbox.run
  sandbox.run = lambda *a, **k: runs.append(1) or real_run(*a, **k)
  body = humaneval[0].tests["canonical_solution"]
  rows = [{"task_id": humaneval[0].id, "completion": f"Thought {i}.\n```python\n"
           f"def has_close_elements(numbers, threshold):\n{body}```"} for i in range(3)]
  rows.append({"task_id": humaneval[1].id, "completion": "    return []\n"})
  out, summary = scorer.score(rows, progress=False)
  scorer.close()
  assert [r["passed"] for r in out] == [True, True, True, False]
  assert len(runs) == 2  # three identical programs, one run


def test_score_cli_keeps_the_id_field_and_passes_fields_through(tmp_path, capsys):
  humaneval = load_benchmark("humaneval")[:2]
  samples = [{"task_id": p.id, "completion": p.tests["canonical_solution"], "budget": 512,
              "model": "tiny"} for p in humaneval]
  src = tmp_path / "samples.jsonl"
  src.write_text("".join(json.dumps(s) + "\n" for s in samples))
  out = tmp_path / "verdicts.jsonl"
  assert main(["score", "--benchmark", "humaneval", "--samples", str(src), "--out",
               str(out)]) == 0
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  assert [{k: r[k] for k in s} for r, s in zip(rows, samples)] == samples
  assert all(r["passed"] and r["error"] is None and "id" not in r for r in rows)
  capsys.readouterr()
  # an existing --out is not replaced without --overwrite; the samples file never is
  assert main(["score", "--benchmark", "humaneval", "--samples", str(src), "--out",
               str(out)]) == 2
  assert "--out" in capsys.readouterr().err
  assert main(["score", "--benchmark", "humaneval", "--samples", str(src), "--out", str(src),
               "--overwrite"]) == 2
  assert "is the input --samples" in capsys.readouterr().err
  assert src.read_text().count("\n") == 2


def _bcb(tmp_path, libs):
  row = {"task_id": "BigCodeBench/13", "instruct_prompt": "Return the mean of x.",
         "entry_point": "task_func", "code_prompt": "def task_func(x):\n", "libs": repr(libs),
         "test": "import unittest\nclass TestCases(unittest.TestCase):\n"
                 "    def test_mean(self):\n        self.assertEqual(task_func([1, 3]), 2.0)\n"}
  path = tmp_path / "bcb.jsonl"
  path.write_text(json.dumps(row) + "\n")
  return load_benchmark("bigcodebench-hard", path=path)


@pytest.fixture
def python_with_extra_module():
  """A real interpreter (a venv of the system Python, readable by the sandbox user) that has
  one module the system Python lacks, as a BigCodeBench environment has pandas."""
  import os
  import shutil
  import subprocess
  import tempfile
  root = tempfile.mkdtemp(prefix="z1-sandbox-python-", dir="/var/tmp")  # the sandbox hides /tmp
  os.chmod(root, 0o755)
  subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", f"{root}/venv"], check=True)
  out = subprocess.run([f"{root}/venv/bin/python", "-c", "import site; "
                        "print(site.getsitepackages()[0])"], capture_output=True, text=True,
                       check=True).stdout.strip()
  with open(os.path.join(out, "z1_extra_stats.py"), "w") as f:
    f.write("def mean(x):\n    return sum(x) / len(x)\n")
  yield f"{root}/venv/bin/python"
  shutil.rmtree(root)


def test_sandbox_python_for_bigcodebench_and_missing_module_errors(tmp_path,
                                                                   python_with_extra_module):
  problems = _bcb(tmp_path, ["z1_extra_stats", "math"])
  code = _fence("import z1_extra_stats\ndef task_func(x):\n    return z1_extra_stats.mean(x)")
  # the system interpreter lacks the task's library: refused up front, naming the module
  with pytest.raises(Z1Error, match=r"lacks module\(s\).*: z1_extra_stats; .*--sandbox-python"):
    Scorer(problems)
  scorer = Scorer(problems, sandbox_python=python_with_extra_module)
  try:
    assert scorer.score_one(problems[0], code) == {"passed": True, "error": None,
                                                   "extracted": code.split("```python\n")[1][:-3]}
    lacking = scorer.score_one(problems[0], _fence("import no_such_module_z1\n"
                                                   "def task_func(x):\n    return 2.0"))
    assert (lacking["error"], lacking["detail"]) == ("missing_module", "no_such_module_z1")
  finally:
    scorer.close()
  with pytest.raises(Z1Error, match="readable by everyone"):
    Scorer(problems, sandbox_python="/root/.pyenv/versions/3.11.7/bin/python3.11")
