"""Benchmark loaders (offline packages and local fixtures in the hub schemas), `z1 score`."""

import json

import pytest

from z1_jax.cli import main
from z1_jax.eval.benchmarks import LOADERS, PROMPTS, gpqa_options, load_benchmark

GPQA_ROWS = [{"Record ID": f"rec{i}", "Question": f"Which is right #{i}?",
              "Correct Answer": f"right{i}", "Incorrect Answer 1": f"w1-{i}",
              "Incorrect Answer 2": f"w2-{i}", "Incorrect Answer 3": f"w3-{i}"}
             for i in range(12)]


def _jsonl(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return path


def test_all_benchmarks_registered():
  assert set(LOADERS) == {"humaneval", "aime2024", "aime2025", "math500-mmath", "math500",
                          "gpqa-diamond", "livecodebench", "bigcodebench-hard"}
  with pytest.raises(KeyError, match="unknown benchmark"):
    load_benchmark("mmlu")


def test_z1_prompts_per_family():
  he = load_benchmark("humaneval")[0]
  assert he.kind == "code" and he.question.endswith("\n\nPlease reason step by step.")
  aime = load_benchmark("aime2024")[0]
  assert aime.question.endswith(PROMPTS["math"]) and aime.messages[0]["role"] == "user"
  custom = load_benchmark("aime2024", instruction="Think.")[0]
  assert custom.question.endswith("\n\nThink.")


def test_gpqa_fixed_seed_shuffle_moves_the_correct_option(tmp_path):
  problems = load_benchmark("gpqa-diamond", path=_jsonl(tmp_path / "gpqa.jsonl", GPQA_ROWS))
  golds = [p.answer for p in problems]
  assert len(set(golds)) > 1  # the correct option is not always first
  assert golds == [p.answer for p in load_benchmark("gpqa-diamond",
                                                    path=tmp_path / "gpqa.jsonl")]
  for p, row in zip(problems, GPQA_ROWS):
    options, gold = gpqa_options(row)
    assert f"{gold}) {row['Correct Answer']}" in p.question and p.answer == gold
    assert sorted(options) == sorted([row["Correct Answer"], row["Incorrect Answer 1"],
                                      row["Incorrect Answer 2"], row["Incorrect Answer 3"]])
  other_seed = [p.answer for p in load_benchmark("gpqa-diamond", path=tmp_path / "gpqa.jsonl",
                                                 seed=1)]
  assert other_seed != golds


def test_math500_fixture_and_missing_fields(tmp_path):
  rows = [{"problem": "What is 1+1?", "answer": "2", "unique_id": "test/x/1.json"}]
  (p,) = load_benchmark("math500", path=_jsonl(tmp_path / "m.jsonl", rows))
  assert (p.id, p.answer, p.kind) == ("test/x/1.json", "2", "math")
  with pytest.raises(ValueError, match=r"math500 row 0: missing field\(s\) \['answer'\]"):
    load_benchmark("math500", path=_jsonl(tmp_path / "bad.jsonl", [{"problem": "x"}]))
  with pytest.raises(FileNotFoundError, match="benchmark file not found"):
    load_benchmark("math500", path=tmp_path / "none.jsonl")


def test_score_cli_writes_rows_in_input_order(tmp_path, capsys):
  gpqa = _jsonl(tmp_path / "gpqa.jsonl", GPQA_ROWS[:3])
  problems = load_benchmark("gpqa-diamond", path=gpqa)
  samples = [{"id": problems[2].id, "completion": f"\\boxed{{{problems[2].answer}}}"},
             {"id": problems[0].id, "completion": "Answer: " + ("A" if problems[0].answer != "A"
                                                                 else "B")},
             {"id": problems[1].id, "completion": "hmm"}]
  out = tmp_path / "verdicts.jsonl"
  assert main(["score", "--benchmark", "gpqa-diamond", "--data", str(gpqa), "--samples",
               str(_jsonl(tmp_path / "s.jsonl", samples)), "--out", str(out)]) == 0
  summary = json.loads(capsys.readouterr().out)
  assert summary["passed"] == 1 and summary["pass@1"] == pytest.approx(1 / 3)
  assert summary["errors"] == {"wrong_answer": 1, "no_answer": 1}
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  assert [r["id"] for r in rows] == [s["id"] for s in samples]
  assert [r["passed"] for r in rows] == [True, False, False]


def test_score_cli_pass_at_k_and_bad_samples(tmp_path, capsys):
  rows = [{"task_id": "AIME2024/0", "completion": r"\boxed{204}"},
          {"task_id": "AIME2024/0", "completion": r"\boxed{205}"},
          {"task_id": "AIME2024/1", "completion": r"\boxed{1}"},
          {"task_id": "AIME2024/1", "completion": r"\boxed{2}"}]
  assert main(["score", "--benchmark", "aime2024", "--samples",
               str(_jsonl(tmp_path / "s.jsonl", rows))]) == 0
  summary = json.loads(capsys.readouterr().out)
  assert summary["pass@1"] == pytest.approx(0.25) and summary["pass@2"] == pytest.approx(0.5)
  bad = _jsonl(tmp_path / "bad.jsonl", [{"task_id": "nope", "completion": "x"}])
  assert main(["score", "--benchmark", "aime2024", "--samples", str(bad)]) == 2
  assert "row 0: id 'nope' is not a problem" in capsys.readouterr().err
  bad = _jsonl(tmp_path / "bad2.jsonl", [{"task_id": "AIME2024/0"}])
  assert main(["score", "--benchmark", "aime2024", "--samples", str(bad)]) == 2
  assert "row 0: 'completion' missing" in capsys.readouterr().err
