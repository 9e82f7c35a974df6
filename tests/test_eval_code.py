"""Sandboxed code scoring: HumanEval, LiveCodeBench-style fixtures, and hostile programs."""

import base64
import json
import os
import pickle
import time
import zlib

import pytest

from z1_jax.eval import sandbox as sandbox_mod
from z1_jax.eval.benchmarks import Problem, load_benchmark
from z1_jax.eval.code import run_tests
from z1_jax.eval.sandbox import Limits, Sandbox, SandboxUnavailable
from z1_jax.eval.score import Scorer

LIMITS = Limits(wall_s=4, cpu_s=3, memory_mb=512, file_mb=4, procs=32)


@pytest.fixture(scope="module")
def sandbox():
  return Sandbox(LIMITS)


@pytest.fixture(scope="module")
def humaneval():
  return load_benchmark("humaneval")


def test_humaneval_canonical_solutions_all_pass_and_pass_bodies_fail(humaneval):
  assert len(humaneval) == 164
  scorer = Scorer(humaneval, Limits(wall_s=10, cpu_s=10))
  canonical = [{"task_id": p.id, "completion": p.tests["canonical_solution"]} for p in humaneval]
  rows, summary = scorer.score(canonical, progress=False)
  assert summary["passed"] == 164 and summary["pass@1"] == 1.0, summary["errors"]
  stubs = [{"task_id": p.id, "completion": "    pass\n"} for p in humaneval]
  rows, summary = scorer.score(stubs, progress=False)
  assert summary["passed"] == 0
  assert [r["task_id"] for r in rows] == [p.id for p in humaneval]  # input order
  scorer.close()


def _entry_point_block(p):
  """The canonical solution as a model writes it: a fenced block defining only the entry point
  (signature from the prompt, canonical body), without the prompt's helpers or imports."""
  import ast
  tree = ast.parse(p.tests["prompt"])
  (fn,) = [n for n in tree.body if isinstance(n, ast.FunctionDef)
           and n.name == p.tests["entry_point"]]
  lines = p.tests["prompt"].splitlines(keepends=True)
  source = "".join(lines[fn.lineno - 1:fn.end_lineno])
  return f"Here is my solution.\n```python\n{source}{p.tests['canonical_solution']}```\nDone."


def test_humaneval_entry_point_blocks_pass_with_prompt_helpers(humaneval):
  # HumanEval/10, 32, 38 and 50 define helpers in the prompt that their tests call
  blocks = [_entry_point_block(p) for p in humaneval]
  assert all("import " not in b.split("```python")[1].split("def ")[0] for b in blocks)
  scorer = Scorer(humaneval, Limits(wall_s=10, cpu_s=10))
  rows, summary = scorer.score([{"task_id": p.id, "completion": b}
                                for p, b in zip(humaneval, blocks)], progress=False)
  scorer.close()
  assert summary["passed"] == 164, [(r["task_id"], r["error"]) for r in rows if not r["passed"]]
  assert all(r["extracted"].lstrip().startswith("def ") for r in rows)


def test_humaneval_instruct_style_completion(sandbox, humaneval):
  p = humaneval[0]
  fenced = ("Let me think.\n```python\ndef has_close_elements(numbers, threshold):\n"
            "    return any(abs(a - b) < threshold for i, a in enumerate(numbers)\n"
            "               for b in numbers[i + 1:])\n```")
  assert run_tests(sandbox, p, fenced) == (True, None)
  assert run_tests(sandbox, p, "I don't know.") == (False, "syntax_error")  # prose as body
  assert run_tests(sandbox, p, "") == (False, "no_code")


def _stdin_problem():
  return Problem("sum", "livecodebench", "code", "add two numbers", tests={
      "style": "stdin", "cases": [{"input": "1 2\n", "output": "3\n"},
                                  {"input": "10 -4\n", "output": "6"}]})


def _functional_problem():
  return Problem("two", "livecodebench", "code", "twoSum", tests={
      "style": "functional", "func_name": "twoSum",
      "cases": [{"input": "[2,7,11,15]\n9", "output": "[0, 1]"},
                {"input": "[3,2,4]\n6", "output": "[1, 2]"}]})


def _fence(code):
  return f"Here it is:\n```python\n{code}\n```"


def test_stdin_fixture_right_and_wrong(sandbox):
  p = _stdin_problem()
  right = "a, b = map(int, input().split())\nprint(a + b)"
  assert run_tests(sandbox, p, _fence(right)) == (True, None)
  assert run_tests(sandbox, p, _fence("a, b = map(int, input().split())\nprint(a - b)")) == (
      False, "wrong_answer")
  assert run_tests(sandbox, p, _fence("print(")) == (False, "syntax_error")
  assert run_tests(sandbox, p, "no code at all") == (False, "no_code")


def test_functional_fixture_right_and_wrong(sandbox):
  p = _functional_problem()
  right = ("class Solution:\n    def twoSum(self, nums, target):\n        seen = {}\n"
           "        for i, x in enumerate(nums):\n            if target - x in seen:\n"
           "                return [seen[target - x], i]\n            seen[x] = i\n")
  assert run_tests(sandbox, p, _fence(right)) == (True, None)
  wrong = "class Solution:\n    def twoSum(self, nums, target):\n        return [0, 1]\n"
  assert run_tests(sandbox, p, _fence(wrong)) == (False, "wrong_answer")


HOSTILE = {
    "infinite loop": ("while True:\n    pass", "timeout"),
    "ignores SIGTERM": ("import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                        "while True:\n    time.sleep(0.1)", "timeout"),
    "fork bomb": ("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n"
                  "        pass", "timeout"),
    "memory hog": ("x = bytearray(8 << 30)\nfor i in range(0, len(x), 4096):\n    x[i] = 1",
                   "memory"),
    "write outside": ("open({target!r}, 'w').write('pwned')", "runtime_error"),
    "delete outside": ("import os\nos.remove({victim!r})", "runtime_error"),
    "read root-only": ("print(open('/etc/shadow').read())", "runtime_error"),
    "network": ("import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)",
                "runtime_error"),
    "detached daemon": ("import os, time\nif os.fork() == 0:\n    os.setsid()\n"
                        "    if os.fork() == 0:\n        time.sleep(60)\n    os._exit(0)\n"
                        "raise SystemExit(1)", "runtime_error"),
    "kill parent": ("import os, signal\nfor pid in (os.getppid(), 1, {harness}):\n    try:\n"
                    "        os.kill(pid, signal.SIGKILL)\n    except OSError:\n        pass\n"
                    "raise SystemExit(1)", "runtime_error"),
    "1 GB to stdout": ("import sys\nchunk = 'x' * (1 << 20)\nfor _ in range(1024):\n"
                       "    sys.stdout.write(chunk)", "output_limit"),
    "sys.exit(0) before tests": ("import sys\nsys.exit(0)", "early_exit"),
    "os._exit(0) in function": ("import os\ndef has_close_elements(numbers, threshold):\n"
                                "    os._exit(0)", "early_exit"),
    "segfault": ("import ctypes\nctypes.string_at(0)", "runtime_error"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_code_fails_and_harness_survives(name, sandbox, humaneval, tmp_path):
  import socket
  victim = tmp_path / "victim.txt"
  victim.write_text("keep me")
  target = tmp_path / "pwned.txt"
  server = socket.socket()
  server.bind(("127.0.0.1", 0))
  server.listen()
  server.settimeout(0.5)
  code, kind = HOSTILE[name]
  code = code.format(target=str(target), victim=str(victim), port=server.getsockname()[1],
                     harness=os.getpid())
  start = time.perf_counter()
  passed, error = run_tests(sandbox, humaneval[0], _fence(code))
  elapsed = time.perf_counter() - start
  assert (passed, error) == (False, kind)
  assert elapsed < LIMITS.wall_s + 5
  assert victim.read_text() == "keep me" and not target.exists()
  with pytest.raises(socket.timeout):
    server.accept()  # nothing connected from inside
  server.close()
  # no process of the sandbox is left behind
  assert all(not sandbox_mod._pids_of(uid) for uid in sandbox_mod.RUN_UIDS[-4:])


def test_no_isolation_means_refusal_unless_opted_out(monkeypatch):
  monkeypatch.setattr(sandbox_mod.shutil, "which",
                      lambda name: None if name == "bwrap" else "/usr/bin/" + name)
  sandbox_mod.bwrap_works.cache_clear()
  try:
    with pytest.raises(SandboxUnavailable, match="will not be run"):
      Sandbox(LIMITS)
    with pytest.warns(UserWarning, match="WITHOUT bubblewrap"):
      unsafe = Sandbox(LIMITS, allow_unsandboxed=True)
    result = unsafe.run({"p.py": "import os\nprint(os.getuid())"}, ["p.py"])
    assert result.returncode == 0
    if os.geteuid() == 0:
      assert int(result.stdout) != 0  # still an unprivileged uid
  finally:
    sandbox_mod.bwrap_works.cache_clear()


def test_livecodebench_loader_reads_compressed_private_tests(tmp_path):
  private = base64.b64encode(zlib.compress(pickle.dumps(json.dumps(
      [{"input": "5 5\n", "output": "10\n", "testtype": "stdin"}])))).decode()
  rows = [
      {"question_id": "abc1", "question_content": "Add.", "contest_date": "2024-10-01T00:00:00",
       "public_test_cases": json.dumps([{"input": "1 2\n", "output": "3\n", "testtype": "stdin"}]),
       "private_test_cases": private, "starter_code": "", "metadata": "{}"},
      {"question_id": "old", "question_content": "Old.", "contest_date": "2023-01-01",
       "public_test_cases": "[]", "private_test_cases": "[]", "starter_code": "",
       "metadata": "{}"},
      {"question_id": "fn1", "question_content": "Two sum.", "contest_date": "2024-12-01",
       "public_test_cases": json.dumps([{"input": "[2,7]\n9", "output": "[0, 1]",
                                         "testtype": "functional"}]),
       "private_test_cases": "[]", "starter_code": "class Solution:\n    def twoSum(self, nums, t):",
       "metadata": json.dumps({"func_name": "twoSum"})},
  ]
  path = tmp_path / "lcb.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  problems = load_benchmark("livecodebench", path=path)
  assert [p.id for p in problems] == ["abc1", "fn1"]  # date filter: from 2024-09-01
  assert problems[0].tests["style"] == "stdin" and len(problems[0].tests["cases"]) == 2
  assert problems[1].tests["style"] == "functional" and problems[1].tests["func_name"] == "twoSum"
  assert "starter code" in problems[1].question
  evil = base64.b64encode(zlib.compress(pickle.dumps(os.system))).decode()
  path.write_text(json.dumps({**rows[0], "private_test_cases": evil}) + "\n")
  with pytest.raises(pickle.UnpicklingError, match="refusing"):
    load_benchmark("livecodebench", path=path)


def test_bigcodebench_unittest_fixture(sandbox, tmp_path):
  row = {"task_id": "BigCodeBench/0", "instruct_prompt": "Write task_func(x) returning x*2.",
         "entry_point": "task_func", "code_prompt": "def task_func(x):\n",
         "test": "import unittest\nclass TestCases(unittest.TestCase):\n"
                 "    def test_double(self):\n        self.assertEqual(task_func(3), 6)\n"
                 "    def test_zero(self):\n        self.assertEqual(task_func(0), 0)\n"}
  path = tmp_path / "bcb.jsonl"
  path.write_text(json.dumps(row) + "\n")
  (problem,) = load_benchmark("bigcodebench-hard", path=path)
  assert run_tests(sandbox, problem, _fence("def task_func(x):\n    return 2 * x")) == (True, None)
  assert run_tests(sandbox, problem, _fence("def task_func(x):\n    return x + 3")) == (
      False, "wrong_answer")
