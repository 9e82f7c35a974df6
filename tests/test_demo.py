"""`z1 demo` end to end, shortened (few programs, few steps): every artifact exists and parses,
transformers reproduces one greedy answer, and bad invocations change nothing."""

import json

import pytest

from z1_jax.cli import main

SHORT = ["--train-examples", "300", "--eval-examples", "8", "--budgets", "16,24,32,48",
         "train.max_steps=12", "train.decay_steps=12", "train.warmup_steps=2"]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("demo") / "out"
  assert main(["demo", "--out", str(out), *SHORT]) == 0
  return out


def test_demo_writes_every_artifact(demo_dir, capsys):
  summary = json.loads((demo_dir / "summary.json").read_text())
  entries = summary["benchmarks"]["chain"]
  assert [e["budget"] for e in entries] == [16, 24, 32, 48]
  assert all(0 <= e["accuracy"] <= 1 and e["n"] == 8 for e in entries)
  assert 0 < summary["config"]["chance_level"] <= 1
  md = (demo_dir / "summary.md").read_text()
  assert "| 48 |" in md and "Chance level" in md
  assert (demo_dir / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  samples = [json.loads(line) for line in (demo_dir / "samples.jsonl").read_text().splitlines()]
  assert len(samples) == 4 * 8
  for s in samples:  # scored by exact match against the executed program
    assert s["passed"] == (s["extracted"] == s["answer"])
    assert s["thinking_tokens"] <= s["budget"]
  demo = json.loads((demo_dir / "demo.json").read_text())
  assert demo["hf_reproduces_greedy_answer"] is True and demo["train_steps"] == 12
  for name in ("train", "eval"):
    rows = [json.loads(x) for x in (demo_dir / "data" / f"{name}.jsonl").read_text().splitlines()]
    assert {"question", "response", "token_num_demo", "answer"} <= set(rows[0])
  assert (demo_dir / "tokenizer" / "tokenizer.json").is_file()
  assert json.loads((demo_dir / "hf" / "config.json").read_text())["model_type"] == "qwen2"
  assert (demo_dir / "train" / "checkpoints").is_dir()
  assert not list(demo_dir.parent.glob(".out.partial-*"))  # no debris beside the output


@pytest.mark.parametrize("argv,message", [
    (["train.nope=1"], "train.nope"),
    (["--budgets", "16,x"], "--budgets"),
    (["--train-examples", "0"], "--train-examples"),
])
def test_demo_refuses_bad_input_before_work(tmp_path, capsys, argv, message):
  out = tmp_path / "out"
  try:
    code = main(["demo", "--out", str(out), *argv])
  except SystemExit as e:  # argparse refusals
    code = e.code
  assert code == 2
  err = capsys.readouterr().err
  assert message in err and "Traceback" not in err
  assert not out.exists() and list(tmp_path.iterdir()) == []


def test_demo_refuses_an_existing_output(tmp_path, capsys):
  out = tmp_path / "out"
  out.mkdir()
  (out / "keep.txt").write_text("mine")
  for extra in ([], ["--overwrite"]):  # not a previous demo output: never replaced
    assert main(["demo", "--out", str(out), *extra]) == 2
    assert "not a previous demo output" in capsys.readouterr().err
  assert [p.name for p in out.iterdir()] == ["keep.txt"]
