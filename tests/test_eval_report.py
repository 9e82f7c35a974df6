"""report.py: summary numbers, Wilson intervals, the markdown table and the PNG."""

import json
import struct
from pathlib import Path

import pytest

from z1_jax.eval.report import figure_size_px, read_reference, wilson, write_report

REFERENCE = Path(__file__).resolve().parents[1] / "configs" / "paper_reference_points.json"


def png_size(path):
  head = Path(path).read_bytes()[:24]
  assert head[:8] == b"\x89PNG\r\n\x1a\n"
  return struct.unpack(">II", head[16:24])


def test_wilson_matches_known_values():
  low, high = wilson(8, 10)
  assert (round(low, 3), round(high, 3)) == (0.490, 0.943)
  assert wilson(0, 5)[0] == 0.0 and wilson(5, 5)[1] == 1.0
  assert wilson(0, 0) == (0.0, 1.0)
  for n in range(1, 200):  # the point estimate lies inside, even with rounding
    for k in (0, 1, n // 2, n - 1, n):
      low, high = wilson(k, n)
      assert low <= k / n <= high


def test_write_report_summary_markdown_and_png(tmp_path):
  rows = []
  for budget, passed, thinking, hit in [(256, [1, 0, 0, 0], [256, 256, 100, 256], [1, 1, 0, 1]),
                                        (512, [1, 1, 0, 0], [300, 512, 100, 512], [0, 1, 0, 1])]:
    for i, (p, t, h) in enumerate(zip(passed, thinking, hit)):
      rows.append({"benchmark": "humaneval", "task_id": f"HumanEval/{i}", "budget": budget,
                   "thinking_tokens": t, "hit_budget": bool(h), "passed": bool(p),
                   "extracted": None if i == 3 else "x"})
  rows += [{"benchmark": "aime2024", "budget": b, "thinking_tokens": b, "hit_budget": True,
            "passed": b == 512, "extracted": "1"} for b in (256, 512)]
  summary = write_report(rows, tmp_path, model="tiny", config={"budgets": [256, 512]},
                         reference=REFERENCE)
  assert json.loads((tmp_path / "summary.json").read_text()) == summary
  assert list(summary) == ["benchmarks", "model", "config"]
  he = summary["benchmarks"]["humaneval"]
  assert [e["budget"] for e in he] == [256, 512]
  assert he[0] == {"budget": 256, "accuracy": 0.25, "ci_low": pytest.approx(wilson(1, 4)[0]),
                   "ci_high": pytest.approx(wilson(1, 4)[1]), "mean_thinking_tokens": 217.0,
                   "hit_budget_rate": 0.75, "unanswered": 1, "n": 4}
  assert he[1]["accuracy"] == 0.5 and he[1]["mean_thinking_tokens"] == 356.0
  md = (tmp_path / "summary.md").read_text()
  assert "| 512 | 50.0% |" in md and "## Average" in md
  assert "| 512 | 75.0% | 434 |" in md  # mean of humaneval 50% and aime 100%; (356+512)/2
  assert png_size(tmp_path / "sweep.png") == figure_size_px(2) == (1200, 360)
  assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp debris


def test_reference_file_shipped_and_bad_reference(tmp_path):
  series = read_reference(REFERENCE)
  z1 = next(s for s in series if s["label"].startswith("Z1-7B"))
  assert z1["points"]["livecodebench"] == [[900, 35.3]]
  bad = tmp_path / "ref.json"
  bad.write_text(json.dumps({"series": [{"label": "x", "points": {"math500": [[1]]}}]}))
  with pytest.raises(ValueError, match="--reference .*ref.json"):
    read_reference(bad)
  with pytest.raises(FileNotFoundError, match="--reference"):
    read_reference(tmp_path / "none.json")
