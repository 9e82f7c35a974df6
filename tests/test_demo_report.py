"""demo/report.py on hand-made rows: each model's summary carries the sweep metrics, and the two
models are compared at equal cost over the token range both curves span."""

import pytest

from z1_jax.demo import report

# model -> [(budget, thinking tokens of every sample, accuracy)]
CURVES = {"z1": [(16, 6, 0.4), (32, 22, 1.0), (64, 22, 1.0)],
          "long": [(16, 2, 0.2), (32, 18, 0.6), (64, 59, 1.0)]}


def _rows():
  rows = []
  for m, curve in CURVES.items():
    for budget, tokens, accuracy in curve:
      for i in range(10):
        rows.append({"model": m, "benchmark": "chain", "budget": budget, "steps": i % 6 + 1,
                     "thinking_tokens": tokens, "hit_budget": False,
                     "passed": i < accuracy * 10, "extracted": 1})
  return rows


def test_demo_summary_carries_metrics_and_the_equal_cost_comparison():
  summary = report.build(_rows(), {}, {})
  z1 = summary["models"]["z1"]["metrics"]["benchmarks"]["chain"]
  assert z1["performance"] == 1.0 and z1["token_range"] == [6.0, 22.0]
  assert z1["auc"] == pytest.approx(0.7)  # (0.4 + 1.0) / 2 over 6..22
  eq = summary["equal_cost"]
  assert eq["token_range"] == [6.0, 22.0]
  # long over 6..22: f(6) = .2 + .4 * 4/16 = .3, f(18) = .6, f(22) = .6 + .4 * 4/41
  f22 = 0.6 + 0.4 * 4 / 41
  want = (12 * (0.3 + 0.6) / 2 + 4 * (0.6 + f22) / 2) / 16
  assert eq["auc"] == {"z1": pytest.approx(0.7), "long": pytest.approx(want)}
  md = report.to_markdown(summary, 0.1)
  assert md.count("## Test-time scaling") == 2
  assert f"over 6.0-22.0 tokens, the range both curves span): z1 70.0%, long {100 * want:.1f}%" \
      in md
