"""report.py: summary numbers, Wilson intervals, the markdown table and the PNG."""

import json
import struct
from pathlib import Path

import pytest

from z1_jax.eval.report import (auc, control, figure_size_px, metrics, performance,
                                read_reference, scaling, shared_range, wilson, write_report)

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
  assert list(summary) == ["benchmarks", "metrics", "model", "config"]
  he = summary["benchmarks"]["humaneval"]
  assert [e["budget"] for e in he] == [256, 512]
  assert he[0] == {"budget": 256, "accuracy": 0.25, "ci_low": pytest.approx(wilson(1, 4)[0]),
                   "ci_high": pytest.approx(wilson(1, 4)[1]), "mean_thinking_tokens": 217.0,
                   "max_thinking_tokens": 256, "hit_budget_rate": 0.75, "unanswered": 1, "n": 4}
  assert he[1]["accuracy"] == 0.5 and he[1]["mean_thinking_tokens"] == 356.0
  md = (tmp_path / "summary.md").read_text()
  assert "| 512 | 50.0% |" in md and "## Average" in md
  assert "| 512 | 75.0% | 434 |" in md  # mean of humaneval 50% and aime 100%; (356+512)/2
  # the metrics, per benchmark and of the average panel (budgets 256, 512)
  m = summary["metrics"]
  assert set(m["benchmarks"]) == {"humaneval", "aime2024"}
  assert m["benchmarks"]["humaneval"] == metrics(he)
  assert m["benchmarks"]["humaneval"]["scaling"] == pytest.approx((0.5 - 0.25) / (356 - 217))
  assert m["benchmarks"]["aime2024"]["att"] == [[256, 256.0], [512, 512.0]]
  avg = m["average"]  # accuracy (25+0)/2 -> (50+100)/2 %, tokens (217+256)/2 -> (356+512)/2
  assert avg["performance"] == 0.75 and avg["control"] == 1.0
  assert avg["scaling"] == pytest.approx((0.75 - 0.125) / (434 - 236.5))
  assert avg["auc"] == pytest.approx((0.125 + 0.75) / 2)
  assert "## Test-time scaling" in md
  assert "| humaneval | 100.0% | +179.86 | 50.0% | 37.5% | 217-356 |" in md
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


def _entry(budget, accuracy, mean_tokens, max_tokens):
  return {"budget": budget, "accuracy": accuracy, "mean_thinking_tokens": mean_tokens,
          "max_thinking_tokens": max_tokens}


# A hand-made curve: budgets 100..800, accuracy 20/40/50/50%, mean thinking tokens 50/150/250/250,
# and at budget 800 one sample thought for 900 tokens (over its budget).
CURVE = [_entry(100, 0.2, 50, 100), _entry(200, 0.4, 150, 200), _entry(400, 0.5, 250, 400),
         _entry(800, 0.5, 250, 900)]


def test_metrics_of_a_hand_made_curve():
  assert control(CURVE) == 0.75  # 3 of 4 budgets held every sample within the budget
  # pairs with different mean tokens: 0.2/100, 0.3/200 (twice), 0.1/100 (twice); the pair at
  # 250 and 250 has no slope
  assert scaling(CURVE) == pytest.approx((0.002 + 2 * 0.0015 + 2 * 0.001) / 5) == 0.0014
  assert performance(CURVE) == 0.5
  # trapezoids through (50, .2), (150, .4), (250, .5): 30 + 45 over the range 200
  assert auc(CURVE) == pytest.approx(75 / 200)
  # over 100..150..200: f(100) = .3, f(150) = .4, f(200) = .45 -> (17.5 + 21.25) / 100
  assert auc(CURVE, 100, 200) == pytest.approx(0.3875)
  m = metrics(CURVE)
  assert m["token_range"] == [50.0, 250.0]
  assert m["att"] == [[100, 50], [200, 150], [400, 250], [800, 250]]  # Z1's ATT per budget
  with pytest.raises(ValueError, match="outside the curve's token range"):
    auc(CURVE, 0, 100)


def test_metrics_at_equal_tokens_flat_and_falling_curves():
  # two points at 10 tokens (0% and 100%) count as one point at 50% for the area
  tied = [_entry(16, 0.0, 10, 12), _entry(32, 1.0, 10, 30), _entry(64, 1.0, 30, 64)]
  assert auc(tied) == pytest.approx((0.5 + 1.0) / 2)
  assert scaling(tied) == pytest.approx((1 / 20 + 0) / 2)  # the tied pair has no slope
  flat = [_entry(16, 0.6, 22, 22), _entry(32, 0.8, 22, 22)]  # every budget thinks 22 tokens
  assert scaling(flat) is None and auc(flat) == pytest.approx(0.7)
  falling = [_entry(16, 0.9, 10, 16), _entry(32, 0.5, 20, 40)]  # over budget at 32 as well
  assert scaling(falling) == pytest.approx(-0.04) and control(falling) == 0.5
  assert metrics([]) == {"control": None, "scaling": None, "performance": None, "auc": None,
                         "token_range": None, "att": []}


def test_shared_range_compares_two_curves_at_equal_cost():
  short = [_entry(16, 0.4, 6, 16), _entry(32, 1.0, 22, 32)]
  long = [_entry(16, 0.2, 2, 16), _entry(64, 1.0, 59, 64)]
  assert shared_range(short, long) == (6.0, 22.0)
  assert shared_range(short, [_entry(64, 1.0, 59, 64)]) is None
  lo, hi = shared_range(short, long)
  assert auc(short, lo, hi) == pytest.approx(0.7)
  # long over 6..22: f(6) = .2 + .8 * 4 / 57, f(22) = .2 + .8 * 20 / 57
  assert auc(long, lo, hi) == pytest.approx(0.2 + 0.8 * 12 / 57)
