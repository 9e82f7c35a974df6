"""`z1 demo` end to end, shortened (few programs, few steps, both models): every artifact exists
and parses, the claim recomputes from `samples.jsonl`, the held-out set holds every statement
count equally, transformers reproduces one greedy answer, and bad invocations change nothing."""

import collections
import json

import pytest

from z1_jax.cli import main
from z1_jax.eval.report import all_metrics

BUDGETS = [16, 24, 40, 80]
EVAL = 12  # 2 programs for each statement count 1..6
SHORT = ["--train-examples", "300", "--eval-examples", str(EVAL),
         "--budgets", ",".join(map(str, BUDGETS)),
         "train.max_steps=12", "train.decay_steps=12", "train.warmup_steps=2"]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
  import contextlib
  import io
  out = tmp_path_factory.mktemp("demo") / "out"
  stdout = io.StringIO()
  with contextlib.redirect_stdout(stdout):
    assert main(["demo", "--out", str(out), *SHORT]) == 0
  return out, stdout.getvalue()


def _samples(demo_dir):
  return [json.loads(line) for line in (demo_dir / "samples.jsonl").read_text().splitlines()]


def test_demo_writes_every_artifact(demo_run):
  demo_dir, stdout = demo_run
  summary = json.loads((demo_dir / "summary.json").read_text())
  assert set(summary["models"]) == {"z1", "long"}
  for name, model in summary["models"].items():  # the `z1 sweep` schema for each model
    assert set(model) == {"benchmarks", "metrics", "model", "config"}
    assert model["config"]["recipe"] == name
    assert model["metrics"] == all_metrics(model["benchmarks"])  # the sweep's metrics
    entries = model["benchmarks"]["chain"]
    assert [e["budget"] for e in entries] == BUDGETS
    for e in entries:
      assert 0 <= e["ci_low"] <= e["accuracy"] <= e["ci_high"] <= 1 and e["n"] == EVAL
      assert 0 <= e["mean_thinking_tokens"] <= e["budget"]
  assert 0 < summary["config"]["chance_level"] <= 1
  md = (demo_dir / "summary.md").read_text()
  assert summary["headline"] in md and summary["headline"] in stdout
  assert "## z1:" in md and "## long:" in md and "| 80 |" in md and "Chance level" in md
  assert md.count("## Test-time scaling") == 2
  eq = summary["equal_cost"]  # both models over the token range both curves span
  assert eq["token_range"] is None or set(eq["auc"]) == {"z1", "long"}
  for png in ("sweep.png", "thinking_by_steps.png"):
    assert (demo_dir / png).read_bytes()[:8] == PNG
  samples = _samples(demo_dir)
  assert len(samples) == 2 * len(BUDGETS) * EVAL
  for s in samples:  # scored by exact match against the executed program
    assert {"model", "budget", "steps", "thinking_tokens", "hit_budget", "passed"} <= set(s)
    assert s["passed"] == (s["extracted"] == s["answer"])
    assert s["thinking_tokens"] <= s["budget"]
  demo = json.loads((demo_dir / "demo.json").read_text())
  assert demo["hf_reproduces_greedy_answer"] is True
  assert demo["train_steps"] == {"z1": 12, "long": 12}
  assert demo["cpu_time_s"] > 0 and demo["wall_time_s"] > 0
  for m in ("z1", "long"):
    rows = [json.loads(x) for x in (demo_dir / "data" / m / "train.jsonl").read_text().splitlines()]
    assert {"question", "response", "token_num_demo", "answer", "steps"} <= set(rows[0])
    assert (demo_dir / "train" / m / "checkpoints").is_dir()
  z1_rows = (demo_dir / "data" / "z1" / "train.jsonl").read_text().splitlines()
  long_rows = (demo_dir / "data" / "long" / "train.jsonl").read_text().splitlines()
  assert [json.loads(a)["question"] for a in z1_rows] == [json.loads(b)["question"]
                                                          for b in long_rows]
  assert (demo_dir / "tokenizer" / "tokenizer.json").is_file()
  assert json.loads((demo_dir / "hf" / "config.json").read_text())["model_type"] == "qwen2"
  assert json.loads((demo_dir / "z1_demo_output.json").read_text())["written_by"] == "z1 demo"
  assert not list(demo_dir.parent.glob(".out.*partial*"))  # no debris beside the output


def test_claim_recomputes_from_samples(demo_run):
  """The claim, recomputed here from samples.jsonl alone by its definition."""
  demo_dir, _ = demo_run
  claim = json.loads((demo_dir / "summary.json").read_text())["claim"]
  cells = collections.defaultdict(list)
  for s in _samples(demo_dir):
    cells[s["model"], s["budget"]].append(s)
  acc = {k: sum(s["passed"] for s in v) / len(v) for k, v in cells.items()}
  tokens = {k: sum(s["thinking_tokens"] for s in v) / len(v) for k, v in cells.items()}
  best = max(acc[("long", b)] for b in BUDGETS)
  long_budget = min(b for b in BUDGETS if acc[("long", b)] == best)
  assert claim["long_best_accuracy"] == pytest.approx(best)
  assert claim["long_budget"] == long_budget
  assert claim["long_mean_thinking_tokens"] == pytest.approx(tokens[("long", long_budget)])
  within = [b for b in BUDGETS if acc[("z1", b)] >= best - 0.02 - 1e-9]
  if not within:
    assert claim["z1_budget"] is None and claim["token_ratio"] is None
    return
  b = within[0]
  assert claim["z1_budget"] == b
  assert claim["z1_accuracy"] == pytest.approx(acc[("z1", b)])
  assert claim["z1_mean_thinking_tokens"] == pytest.approx(tokens[("z1", b)])
  assert claim["token_ratio"] == pytest.approx(tokens[("z1", b)] / tokens[("long", long_budget)])


def test_evaluation_holds_every_statement_count_equally(demo_run):
  demo_dir, _ = demo_run
  held = [json.loads(x) for x in (demo_dir / "data" / "eval.jsonl").read_text().splitlines()]
  assert collections.Counter(r["steps"] for r in held) == {s: EVAL // 6 for s in range(1, 7)}
  train = {json.loads(x)["question"]
           for x in (demo_dir / "data" / "z1" / "train.jsonl").read_text().splitlines()}
  assert not train & {r["question"] for r in held}  # held out: never trained on
  per_cell = collections.Counter((s["model"], s["budget"], s["steps"])
                                 for s in _samples(demo_dir))
  assert set(per_cell.values()) == {EVAL // 6} and len(per_cell) == 2 * len(BUDGETS) * 6


def test_plots_draw_budget_order_without_doubling_back(demo_run):
  from z1_jax.demo.report import sweep_series
  demo_dir, _ = demo_run
  summary = json.loads((demo_dir / "summary.json").read_text())
  for m, s in sweep_series(summary).items():
    assert s["budget"] == sorted(set(s["budget"])) == BUDGETS  # x strictly increasing
    assert len(s["accuracy"]) == len(s["mean_thinking_tokens"]) == len(BUDGETS)
  by_steps = summary["thinking_by_steps"]
  assert by_steps["budget"] == max(BUDGETS)
  for m in ("z1", "long"):
    assert sorted(int(k) for k in by_steps["models"][m]) == list(range(1, 7))


@pytest.mark.parametrize("argv,message", [
    (["train.nope=1"], "train.nope"),
    (["--budgets", "16,x"], "--budgets"),
    (["--train-examples", "0"], "--train-examples"),
    (["--eval-examples", "10"], "multiple of 6"),
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


def test_budget_below_the_trigger_is_refused_before_training(tmp_path, capsys, monkeypatch):
  """`--budgets 4,56`: the demo tokenizer's trigger is longer than 4, known before training."""
  import z1_jax.train.loop

  def no_training(*a, **k):
    raise AssertionError("training started before the budget check")
  monkeypatch.setattr(z1_jax.train.loop, "train", no_training)
  out = tmp_path / "out"
  assert main(["demo", "--out", str(out), "--budgets", "4,56", "--train-examples", "200",
               "--eval-examples", "12"]) == 2
  err = capsys.readouterr().err
  assert "--budgets" in err and "trigger" in err and "Traceback" not in err
  assert list(tmp_path.iterdir()) == []  # nothing written, no debris


def test_overwrite_recognises_only_the_demo_marker(tmp_path, capsys):
  """A directory whose entries have the demo's names is not a demo output: the user's files
  survive, with and without --overwrite."""
  proj = tmp_path / "proj"
  (proj / "data").mkdir(parents=True)
  (proj / "data" / "my_dataset.csv").write_text("a,b\n1,2\n")
  (proj / "train").mkdir()
  (proj / "summary.json").write_text("{}")
  for extra in ([], ["--overwrite"]):
    assert main(["demo", "--out", str(proj), *extra]) == 2
    assert "not a previous demo output" in capsys.readouterr().err
  assert (proj / "data" / "my_dataset.csv").read_text() == "a,b\n1,2\n"
  assert sorted(p.name for p in proj.iterdir()) == ["data", "summary.json", "train"]
  # a marker file with other content is not the demo's either
  (proj / "z1_demo_output.json").write_text('{"written_by": "someone else"}')
  assert main(["demo", "--out", str(proj), "--overwrite"]) == 2
  assert (proj / "data" / "my_dataset.csv").is_file()


def test_previous_output_needs_overwrite_and_fails_checks_unchanged(demo_run, tmp_path, capsys):
  """The real previous output is recognised by its marker: refused without --overwrite, and
  with it a run that fails its pre-training checks leaves it as it was."""
  import shutil
  prev = tmp_path / "prev"
  shutil.copytree(demo_run[0], prev)
  before = sorted(str(p.relative_to(prev)) for p in prev.rglob("*"))
  assert main(["demo", "--out", str(prev), *SHORT]) == 2
  assert "pass --overwrite" in capsys.readouterr().err
  assert main(["demo", "--out", str(prev), "--overwrite", "--budgets", "4,56",
               "--train-examples", "200", "--eval-examples", "12"]) == 2
  assert "trigger" in capsys.readouterr().err
  assert sorted(str(p.relative_to(prev)) for p in prev.rglob("*")) == before
