"""`z1 sweep` end to end with a tiny random model: every artifact, summary against samples,
resume after an interrupt, rows equal to `z1 generate` at each budget, and bad input."""

import json
import os
from pathlib import Path

import pytest

from z1_jax.cli import main
from z1_jax.eval.report import all_metrics, figure_size_px, summarize
from z1_jax.eval.sweep import OUTPUT_FILES

BUDGETS, ANSWER, BATCH = [16, 24, 40], 8, 8
ARTIFACTS = ("samples.jsonl", "summary.json", "summary.md", "sweep.png")


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
  """A tiny random Qwen2 with the real vocabulary, saved as a HF directory with the offline
  Qwen2.5 tokenizer."""
  from z1_jax.checkpoint.hf import save_hf
  from z1_jax.data.tokenizer import load_tokenizer
  from z1_jax.model.config import get_preset
  from z1_jax.model.qwen2 import create_model
  path = tmp_path_factory.mktemp("tiny") / "hf"
  save_hf(create_model(get_preset("tiny"), seed=3), path, dtype="float32",
          tokenizer=load_tokenizer())
  return path


@pytest.fixture(scope="module")
def aime5(tmp_path_factory):
  """Five AIME 2024 problems as a local file in the mmath schema (`--data`)."""
  from z1_jax.eval.benchmarks import _package_file
  rows = json.loads(_package_file("mmath", "mmath", "en.json").read_text())
  path = tmp_path_factory.mktemp("data") / "aime5.json"
  path.write_text(json.dumps([r for r in rows if r["data_source"] == "AIME2024"][:5]))
  return path


def _args(hf, aime, out, *extra):
  return ["sweep", "--hf", str(hf), "--benchmark", "humaneval,aime2024", "--limit", "8",
          "--data", f"aime2024={aime}", "--budgets", ",".join(map(str, BUDGETS)),
          "--answer-tokens", str(ANSWER), "--batch-size", str(BATCH), "--workers", "2",
          "--no-progress", "--reference",
          str(Path(__file__).resolve().parents[1] / "configs" / "paper_reference_points.json"),
          "--out", str(out), *extra]


def _exit_code(argv):
  """main's return code, or argparse's exit code for a value refused while parsing."""
  try:
    return main(argv)
  except SystemExit as e:
    return e.code


def _files(out):
  return {name: (Path(out) / name).read_bytes() for name in ARTIFACTS}


@pytest.fixture(scope="module")
def swept(tiny_hf, aime5, tmp_path_factory):
  out = tmp_path_factory.mktemp("sweep") / "run"
  assert main(_args(tiny_hf, aime5, out)) == 0
  return out


def test_sweep_writes_every_artifact_and_summary_matches_samples(swept):
  assert sorted(p.name for p in swept.iterdir()) == sorted(OUTPUT_FILES)
  rows = [json.loads(line) for line in (swept / "samples.jsonl").read_text().splitlines()]
  assert len(rows) == (8 + 5) * len(BUDGETS)
  he = [r for r in rows if r["benchmark"] == "humaneval"]
  aime = [r for r in rows if r["benchmark"] == "aime2024"]
  assert [r["task_id"] for r in he[::3]] == [f"HumanEval/{i}" for i in range(8)]
  assert len({r["id"] for r in aime}) == 5 and all("task_id" not in r for r in aime)
  assert [r["budget"] for r in rows[:3]] == BUDGETS
  for r in rows:
    assert {"completion", "graded", "extracted", "passed", "error", "thinking_tokens",
            "hit_budget", "sample"} <= set(r)
    assert r["thinking_tokens"] <= r["budget"]
    assert r["passed"] is False or r["error"] is None
  summary = json.loads((swept / "summary.json").read_text())
  assert summary["benchmarks"] == summarize(rows)  # recomputed from the rows
  assert list(summary["benchmarks"]) == ["humaneval", "aime2024"]
  for entries in summary["benchmarks"].values():
    assert [e["budget"] for e in entries] == BUDGETS
    assert set(entries[0]) == {"budget", "accuracy", "ci_low", "ci_high",
                               "mean_thinking_tokens", "max_thinking_tokens",
                               "hit_budget_rate", "unanswered", "n"}
  assert summary["config"]["budgets"] == BUDGETS and summary["model"].startswith("hf:")
  # the test-time-scaling metrics, per benchmark and averaged, from the same entries
  assert summary["metrics"] == all_metrics(summary["benchmarks"])
  assert set(summary["metrics"]["benchmarks"]) == {"humaneval", "aime2024"}
  assert summary["metrics"]["average"]["control"] == 1.0  # the window holds every budget
  md = (swept / "summary.md").read_text()
  assert "## humaneval" in md and "## aime2024" in md and "## Average" in md
  assert "## Test-time scaling" in md and "| average | 100.0% |" in md
  head = (swept / "sweep.png").read_bytes()[:24]
  assert head[:8] == b"\x89PNG\r\n\x1a\n"
  assert (int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")) == (
      figure_size_px(2))


def test_rows_equal_z1_generate_at_each_budget(swept, tiny_hf, capsys):
  from z1_jax.data.format import render_prompt
  from z1_jax.data.tokenizer import load_tokenizer
  from z1_jax.eval.sweep import SweepConfig, load_problems
  cfg = json.loads((swept / "config.json").read_text())
  problems = load_problems(SweepConfig(**{**cfg, "benchmarks": tuple(cfg["benchmarks"]),
                                          "budgets": tuple(cfg["budgets"])}))
  tok = load_tokenizer()
  ids = [",".join(map(str, tok.encode(render_prompt(p.question, cfg["system_prompt"]),
                                      add_special_tokens=False))) for p in problems]
  rows = [json.loads(line) for line in (swept / "samples.jsonl").read_text().splitlines()]
  capsys.readouterr()
  for j, budget in enumerate(BUDGETS):
    argv = ["generate", "--hf", str(tiny_hf), "--thinking-budget", str(budget),
            "--answer-tokens", str(ANSWER), "--batch-size", str(BATCH), "--json"]
    for x in ids:
      argv += ["--prompt-ids", x]
    assert main(argv) == 0
    gen = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    mine = rows[j::len(BUDGETS)]
    assert [(r["completion"], r["thinking_tokens"], r["hit_budget"], r["answer_tokens"])
            for r in mine] == [(g["text"], g["thinking_tokens"], g["hit_budget"],
                                g["answer_tokens"]) for g in gen]


def test_resume_after_interrupt_gives_the_same_files(swept, tiny_hf, aime5, tmp_path,
                                                     monkeypatch):
  import z1_jax
  real = z1_jax.sweep
  calls = []

  def interrupted(model, prompts, **kw):
    calls.append(len(prompts))
    if len(calls) == 2:
      raise KeyboardInterrupt
    return real(model, prompts, **kw)

  out = tmp_path / "run"
  monkeypatch.setattr(z1_jax, "sweep", interrupted)
  assert main(_args(tiny_hf, aime5, out)) == 130
  assert not (out / "samples.jsonl").exists()  # nothing final was written
  journal = [json.loads(line) for line in (out / "journal.jsonl").read_text().splitlines()]
  assert len(journal) <= BATCH * len(BUDGETS)  # rows of the first batch scored before the stop
  finished = {k for k in {(r["benchmark"], r.get("task_id", r.get("id"))) for r in journal}
              if sum((r["benchmark"], r.get("task_id", r.get("id"))) == k for r in journal)
              == len(BUDGETS)}
  calls.clear()
  monkeypatch.setattr(z1_jax, "sweep", lambda *a, **kw: calls.append(len(a[1])) or real(*a, **kw))
  assert main(_args(tiny_hf, aime5, out)) == 0
  assert sum(calls) == 13 - len(finished)  # finished problems are not decoded again
  assert _files(out) == _files(swept)
  calls.clear()
  assert main(_args(tiny_hf, aime5, out)) == 0  # all done: nothing decoded, same files
  assert calls == [] and _files(out) == _files(swept)


@pytest.mark.slow
def test_the_whole_mesh_decodes_each_batch_with_the_same_rows(swept, tiny_hf, aime5, tmp_path):
  """--mesh 4,1,2 (batch over data, heads over tensor, the 8 test devices): the same
  files as the one-device run (the mesh is not part of the config)."""
  out = tmp_path / "mesh"
  assert main(_args(tiny_hf, aime5, out, "--mesh", "4,1,2")) == 0
  assert _files(out) == _files(swept)


def test_out_with_a_different_config_is_refused(swept, tiny_hf, aime5, capsys):
  before = {p.name: p.read_bytes() for p in swept.iterdir()}
  argv = _args(tiny_hf, aime5, swept)
  argv[argv.index("--answer-tokens") + 1] = "9"
  assert main(argv) == 2
  err = capsys.readouterr().err
  assert "holds a sweep with different inputs" in err and "answer_tokens: 8 there, 9 now" in err
  assert "Traceback" not in err
  assert {p.name: p.read_bytes() for p in swept.iterdir()} == before


@pytest.mark.parametrize("change, culprit", [
    (("--benchmark", "humaneval,nope"), "--benchmark nope: unknown"),
    (("--budgets", "16,16,32"), "--budgets 16,16,32: expected thinking budgets > 0 in strictly"),
    (("--budgets", "32,16"), "--budgets 32,16"),
    (("--budgets", "8,16"), "--budgets 8: thinking_budget=8 must exceed the trigger length (12 tokens)"),
    (("--answer-tokens", "0"), "argument --answer-tokens: '0': expected an integer > 0"),
    (("--data", "gpqa-diamond=x.csv"), "gpqa-diamond is not among --benchmark"),
    (("--samples-per-problem", "4"), "--temperature > 0"),
    (("--reference", "/nonexistent.json"), "--reference /nonexistent.json: file not found"),
])
def test_bad_input_is_refused_before_work(change, culprit, tiny_hf, aime5, tmp_path, capsys):
  argv = _args(tiny_hf, aime5, tmp_path / "out")
  flag, value = change
  if flag in argv:
    argv[argv.index(flag) + 1] = value
  else:
    argv[1:1] = [flag, value]
  assert _exit_code(argv) == 2
  err = capsys.readouterr().err
  assert culprit in err and "Traceback" not in err
  assert not (tmp_path / "out" / "samples.jsonl").exists()


def test_out_that_is_not_a_sweep_is_refused(tiny_hf, aime5, tmp_path, capsys):
  other = tmp_path / "mine"
  other.mkdir()
  (other / "notes.txt").write_text("keep")
  assert main(_args(tiny_hf, aime5, other)) == 2
  assert "holds no sweep" in capsys.readouterr().err
  assert os.listdir(other) == ["notes.txt"]


def test_journal_drops_a_torn_last_line_and_keeps_the_rest(tmp_path):
  from z1_jax.eval.sweep import Journal
  path = tmp_path / "journal.jsonl"
  good = {"benchmark": "humaneval", "task_id": "HumanEval/0", "sample": 0, "budget": 16,
          "passed": False}
  path.write_text(json.dumps(good) + "\n" + '{"benchmark": "humaneval", "task_')  # killed
  journal = Journal(path)
  assert list(journal.rows) == [("humaneval", "HumanEval/0", 0, 16)]
  journal.add({**good, "budget": 24})
  journal.add({**good, "budget": 24, "passed": True})  # recorded once per key
  journal.close()
  journal.add({**good, "budget": 32})  # after close (an interrupted run): ignored
  lines = path.read_text().splitlines()
  assert [json.loads(line)["budget"] for line in lines] == [16, 24]


def test_parse_data_names_files_per_benchmark(tmp_path):
  from z1_jax.errors import Z1Error
  from z1_jax.eval.sweep import parse_data
  assert parse_data("x.jsonl", ["math500"]) == {"math500": str((Path.cwd() / "x.jsonl"))}
  assert parse_data("math500=a.jsonl,gpqa-diamond=/d/g.csv", ["math500", "gpqa-diamond"]) == {
      "math500": str(Path.cwd() / "a.jsonl"), "gpqa-diamond": "/d/g.csv"}
  with pytest.raises(Z1Error, match="with several benchmarks name each file"):
    parse_data("x.jsonl", ["math500", "gpqa-diamond"])
  with pytest.raises(Z1Error, match="expected NAME=FILE"):
    parse_data("math500=", ["math500"])


def test_resumed_sweep_refuses_replaced_weights_dtype_or_tokenizer(tiny_hf, aime5, tmp_path,
                                                                  capsys):
  """The identity of a sweep is what is in the model, not its path: interrupt (here: a finished
  first part), replace the weights in the same directory, rerun: refused, nothing mixed."""
  import shutil
  from z1_jax.checkpoint.hf import save_hf
  from z1_jax.model.config import get_preset
  from z1_jax.model.qwen2 import create_model
  hf = tmp_path / "hf"
  shutil.copytree(tiny_hf, hf)
  out = tmp_path / "run"
  argv = ["sweep", "--hf", str(hf), "--benchmark", "aime2024", "--limit", "2", "--data",
          str(aime5), "--budgets", "16", "--answer-tokens", "4", "--workers", "1",
          "--no-progress", "--out", str(out)]
  assert main(argv) == 0
  before = {p.name: p.read_bytes() for p in out.iterdir()}
  assert main(argv) == 0  # same model: a resume, nothing changes
  assert {p.name: p.read_bytes() for p in out.iterdir()} == before
  capsys.readouterr()
  assert _exit_code(argv + ["--dtype", "bfloat16"]) == 2
  assert "dtype" in capsys.readouterr().err
  save_hf(create_model(get_preset("tiny"), seed=4), tmp_path / "other", dtype="float32")
  shutil.copy(tmp_path / "other" / "model.safetensors", hf / "model.safetensors")
  assert _exit_code(argv) == 2
  err = capsys.readouterr().err
  assert "weights" in err and "different inputs" in err, err
  assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_fingerprint_sees_content_not_only_names_and_sizes(tmp_path):
  from z1_jax.checkpoint.fingerprint import fingerprint
  (tmp_path / "a").mkdir()
  big = bytearray(os.urandom(5 * 1024 * 1024))
  (tmp_path / "a" / "w.bin").write_bytes(big)
  first = fingerprint(tmp_path / "a")
  assert first == fingerprint(tmp_path / "a")
  big[100] ^= 1  # inside the first sampled block (a safetensors header lives there)
  (tmp_path / "a" / "w.bin").write_bytes(big)
  assert fingerprint(tmp_path / "a") != first
