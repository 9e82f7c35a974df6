"""`z1 distill` end to end on the demo's task (the CPU proof, `z1_jax.distill.proof`), shortened:
a teacher trained 150 steps on the z1 recipe distills 48 new programs (6 batches of 8), the set
trains a student through `z1 train`, and both are evaluated on the same held-out programs.

Costs (2-core CPU): the module fixture about 70 s (the teacher's training is 50 of them); the
in-process tests a few seconds each (they reload the teacher); the SIGKILL resume test about
25 s and the 2-process test about 40 s (both `slow`: subprocesses that import JAX and compile).

The teacher is weak (about a third of held-out programs right): these tests check the pipeline,
not the teacher; `python -m z1_jax.distill.proof` with its defaults is the measured run.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from z1_jax.cli import main

SETTINGS = dict(teacher_steps=150, student_steps=8, problems=48, train_examples=1000,
                eval_examples=12, budgets=(16, 40, 80), quiet=True,
                student_overrides=("train.global_batch=8", "data.seq_len=96"))
BATCH = ["generation.batch_problems=8"]  # 6 batches: 6 journal lines, up to 6 shards per split


@pytest.fixture(scope="module")
def proof(tmp_path_factory):
  from z1_jax.distill.proof import run_proof
  root = tmp_path_factory.mktemp("distill") / "proof"
  return root, run_proof(root, distill_overrides=tuple(BATCH), **SETTINGS)


def _distill_argv(root, out, *extra):
  from z1_jax.distill.proof import DISTILL_CONFIG
  return ["distill", "--ckpt", str(root / "teacher" / "run"), "--tokenizer",
          str(root / "teacher" / "tokenizer"), "--problems", str(root / "problems.jsonl"),
          "--config", str(DISTILL_CONFIG), "--teacher-name", "demo-z1-teacher", "--out",
          str(out), "--no-progress", *BATCH, *extra]


def _shards(out):
  """{split: [(file, rows)]} of a set, every row read back with pyarrow."""
  import pyarrow.parquet as pq
  return {split: [(f.relative_to(out).as_posix(), pq.read_table(f).to_pylist())
                  for f in sorted((out / d).glob("*.parquet"))]
          for split, d in (("train", "data"), ("failed", "failed"))}


def _report(out):
  r = json.loads((out / "report.json").read_text())
  r.pop("throughput")  # decode seconds differ between runs
  return r


def test_the_set_is_z1_parquet_with_checked_answers_that_z1_data_reads(proof, capsys):
  from z1_jax.data.tokenizer import load_tokenizer
  from z1_jax.demo.task import extract_answer, run_program
  root, _ = proof
  out = root / "set"
  tok = load_tokenizer(str(root / "teacher" / "tokenizer"))
  problems = {json.loads(x)["id"]: json.loads(x)
              for x in (root / "problems.jsonl").read_text().splitlines()}
  shards = _shards(out)
  rows = {split: [r for _, rs in files for r in rs] for split, files in shards.items()}
  assert rows["train"] and rows["failed"]
  for split, rs in rows.items():
    for r in rs:
      assert list(r) == ["id", "question", "response", "token_num_demo", "source", "teacher",
                         "passed"]
      p = problems[r["id"]]
      assert r["question"] == p["question"] and r["teacher"] == "demo-z1-teacher"
      assert r["source"] == str(root / "problems.jsonl")
      assert r["token_num_demo"] == len(tok(r["response"], add_special_tokens=False)["input_ids"])
      # the sandbox's verdict, recomputed here: the program run, the answer taken from the text
      right = extract_answer(r["response"]) == run_program(p["question"])
      assert r["passed"] is right is (split == "train")
  capsys.readouterr()
  assert main(["data", "stats", "--dataset", str(out / "data"), "--tokenizer",
               str(root / "teacher" / "tokenizer"), "--seq-len", "128",
               "--system-prompt", ""]) == 0
  stats = json.loads(capsys.readouterr().out)
  assert stats["examples"] == len(rows["train"])


def test_report_and_manifest_agree_with_the_shards(proof):
  root, result = proof
  out = root / "set"
  shards = _shards(out)
  report = json.loads((out / "report.json").read_text())
  manifest = json.loads((out / "manifest.json").read_text())
  for split in ("train", "failed"):
    assert [(f["file"], f["rows"]) for f in manifest["splits"][split]] == [
        (name, len(rs)) for name, rs in shards[split]]
  kept = sum(len(rs) for _, rs in shards["train"])
  assert report["kept"] == manifest["rows"]["train"] == kept == result["set"]["kept"]
  assert report["failed_split"] == manifest["rows"]["failed"]
  assert report["funnel"][-1] == {"stage": "failed_split", "removed": report["failed_split"],
                                  "left": kept, "unit": "rows"}
  lengths = [r["token_num_demo"] for _, rs in shards["train"] for r in rs]
  assert report["lengths"]["mean"] == pytest.approx(sum(lengths) / len(lengths))  # Z1's MTL
  assert sum(report["lengths"]["histogram"]["counts"]) == kept
  assert report["check"]["checked"] == 48 and report["check"]["passed"] == kept
  assert report["decontamination"]["loaded"]["humaneval"] == 164
  assert len((out / "journal.jsonl").read_text().splitlines()) == 6  # one line per batch
  assert (out / "lengths.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  md = (out / "report.md").read_text()
  assert "Mean (Z1's MTL)" in md and "## Check (output, in the sandbox)" in md


def test_the_student_is_reported_beside_its_teacher(proof):
  root, result = proof
  metrics = [json.loads(x) for x in (root / "student" / "metrics.jsonl").read_text().splitlines()
             if '"step"' in x and '"loss"' in x]
  assert metrics[-1]["step"] == SETTINGS["student_steps"]  # `z1 train` ran on the set
  assert (root / "student" / "checkpoints" / str(SETTINGS["student_steps"])).is_dir()
  for name in ("teacher", "student"):
    curve = result["curves"][name]
    assert [e["budget"] for e in curve] == list(SETTINGS["budgets"])
    assert all(e["n"] == SETTINGS["eval_examples"] for e in curve)
    assert result["metrics"][name]["performance"] == max(e["accuracy"] for e in curve)
  md = (root / "proof.md").read_text()
  for t, s in zip(result["curves"]["teacher"], result["curves"]["student"]):
    assert (f"| {t['budget']} | {100 * t['accuracy']:.1f}% | {t['mean_thinking_tokens']:.1f} | "
            f"{100 * s['accuracy']:.1f}% |") in md
  assert json.loads((root / "proof.json").read_text()) == result


def test_a_planted_humaneval_problem_is_removed_before_decoding(proof, tmp_path, capsys):
  from z1_jax.eval.benchmarks import load_benchmark
  root, _ = proof
  prompt = load_benchmark("humaneval")[0].tests["prompt"]
  rows = [{"id": "p0", "question": "x=58;x+=1;x-=1;print(x%10)"},
          {"id": "planted", "question": "Finish this:\n" + prompt},
          {"id": "p2", "question": "x=31;x-=1;print(x%10)"}]
  problems = tmp_path / "problems.jsonl"
  problems.write_text("".join(json.dumps(r) + "\n" for r in rows))
  argv = _distill_argv(root, tmp_path / "out")
  argv[argv.index("--problems") + 1] = str(problems)
  assert main(argv) == 0
  err = capsys.readouterr().err
  assert "3 problems in 1 batches, 0 done, 1 decontaminated; decoding 2 rows" in err
  report = json.loads((tmp_path / "out" / "report.json").read_text())
  (match,) = report["decontamination"]["matches"]
  assert (match["problem_id"], match["benchmark"], match["benchmark_id"]) == (
      "planted", "humaneval", "HumanEval/0")
  assert report["throughput"]["rows"] == 2
  assert "| planted | humaneval | HumanEval/0 |" in (tmp_path / "out" / "report.md").read_text()
  # a cap that leaves no room after the prompts: every problem is counted, nothing decodes
  argv[argv.index("--out") + 1] = str(tmp_path / "long")
  assert main([*argv, "generation.max_tokens=500"]) == 0  # the teacher has 512 positions
  report = json.loads((tmp_path / "long" / "report.json").read_text())
  assert report["prompt_too_long"] == [0, 2] and report["throughput"]["rows"] == 0
  assert not (tmp_path / "long" / "data").exists()


def test_rerun_resumes_and_other_inputs_or_bad_settings_are_refused(proof, tmp_path, capsys):
  root, _ = proof
  out = root / "set"
  before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
  assert main(_distill_argv(root, out)) == 0  # the same command: nothing left to decode
  assert "6 done, 0 decontaminated; decoding 0 rows" in capsys.readouterr().err
  after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
  assert after == before  # the same report, the same manifest
  assert main(_distill_argv(root, out, "generation.max_tokens=60")) == 2
  err = capsys.readouterr().err
  assert "holds a distillation with different inputs" in err and "max_tokens" in err
  assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
  for extra, message in [(["decode.mode='s1'"], "decode.mode applies with a thinking budget"),
                         (["filters.nope=1"], "unknown key filters.nope")]:
    assert main(_distill_argv(root, tmp_path / "new", *extra)) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def _env(devices: int) -> dict:
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1"}
  env.pop("XLA_FLAGS", None)
  if devices > 1:
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return env


@pytest.mark.slow
def test_resume_after_sigkill_gives_the_same_rows(proof, tmp_path, capsys):
  """Killed (SIGKILL) after some batches were journaled, the rerun decodes only the rest and
  writes the set an uninterrupted run wrote (the fixture's), shard for shard."""
  root, _ = proof
  out = tmp_path / "set"
  journal = out / "journal.jsonl"
  proc = subprocess.Popen([sys.executable, "-m", "z1_jax", *_distill_argv(root, out)],
                          env=_env(1), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  deadline = time.monotonic() + 300
  while not (journal.exists() and journal.read_text().count("\n") >= 1):
    assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
    assert time.monotonic() < deadline
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  proc.stderr.close()
  done = journal.read_text().count("\n")
  assert 1 <= done < 6, "the run finished before the kill: the test proves nothing"
  assert not (out / "manifest.json").exists()
  assert main(_distill_argv(root, out)) == 0
  err = capsys.readouterr().err
  assert f"6 batches, {done} done, 0 decontaminated; decoding {(6 - done) * 8} rows" in err
  assert _shards(out) == _shards(root / "set")
  assert _report(out) == _report(root / "set")
  for name in ("manifest.json", "decontamination.json", "distill.json"):
    assert (out / name).read_text() == (root / "set" / name).read_text(), name
  assert not [p for d in (out, out / "data", out / "failed") for p in d.iterdir()
              if p.name.startswith(".")]  # no partial file left behind


@pytest.mark.slow
def test_two_processes_write_the_same_set_as_one_process(proof, tmp_path):
  """2 processes x 2 CPU devices (gloo), rows over the 4 devices: the same shards, report and
  manifest as the one-process run; process 0 alone writes and reports."""
  root, _ = proof
  out = tmp_path / "pod"
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  argv = [sys.executable, "-m", "z1_jax", *_distill_argv(root, out), "--mesh", "4,1,1",
          "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2"]
  procs = [subprocess.Popen([*argv, "--process-id", str(i)], env=_env(2),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  outs = [p.communicate(timeout=400)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
  assert '"kept"' in outs[0] and '"kept"' not in outs[1]
  assert _shards(out) == _shards(root / "set")
  assert _report(out) == _report(root / "set")
  assert (out / "manifest.json").read_text() == (root / "set" / "manifest.json").read_text()
