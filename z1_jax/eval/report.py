"""Accuracy against thinking tokens: `summary.json`, `summary.md` and `sweep.png` from
per-sample rows. Used by `z1 sweep` and by the demo (any task whose rows carry the fields below).

A row: `benchmark`, `budget`, `thinking_tokens`, `hit_budget`, `passed`, `extracted` (None when
the sample gave no answer). Accuracy at a budget is the share of passed rows: pass@1 when every
problem has the same number of samples. The interval is Wilson's score interval (95%) over the
rows, which treats samples of one problem as independent (exact for one sample per problem).

Test-time-scaling metrics (`metrics`): the numbers the field compares budget-control methods by,
computed here and nowhere else, over one curve (a benchmark's entries, one per budget, or the
average panel's). f(a) is the accuracy (a fraction) at budget a, t(a) its mean thinking tokens.
  control      s1 (Muennighoff et al. 2025, "s1: Simple test-time scaling", arXiv 2501.19393,
               sec. 3.2): Control = 1/|A| sum_a I(a_min <= thinking(a) <= a_max), the share of
               budgets whose thinking stayed within the budget. Measured from the samples: budget
               a counts when no sample thought longer than a (`max_thinking_tokens <= budget`).
               s1 usually sets only a_max; so does this (a_max = the budget, no a_min).
  scaling      s1, same section: the mean over pairs of points of the slope
               (f(b) - f(a)) / (t(b) - t(a)), accuracy per thinking token; positive for a method
               that scales. Pairs with equal t have no slope and are left out; None when fewer
               than two distinct t exist. summary.md shows it in points per 1,000 tokens.
  performance  s1, same section: max over budgets of f(a).
  auc          the area under f against t (trapezoids through the points ordered by t;
               accuracies at an equal t averaged into one point) divided by the token range
               t_max - t_min: the curve's mean accuracy over the thinking tokens it spans, in
               [0, 1], so that two models can be compared at equal cost. One distinct t (no
               range): the accuracy there, the limit of the definition. `auc(entries, lo, hi)`
               integrates over a given range inside the curve's (two models over the range both
               span: `shared_range`).
  att          Z1 (Yu et al. 2025, "Z1: Efficient Test-time Scaling with Code", arXiv
               2504.00810): average thinking tokens per problem at each budget, the entries'
               `mean_thinking_tokens` (every problem has the same number of samples in a sweep).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Iterable

from z1_jax.errors import Z1Error
from z1_jax.outputs import atomic_path, write_text_atomic

Z95 = 1.959963984540054
PANEL_INCHES, PANEL_HEIGHT_INCHES, DPI = 4.0, 3.6, 100


def wilson(passed: int, n: int, z: float = Z95) -> tuple[float, float]:
  """Wilson score interval for `passed` successes in `n` trials."""
  if n == 0:
    return 0.0, 1.0
  p = passed / n
  centre = (p + z * z / (2 * n)) / (1 + z * z / n)
  half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
  return max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))  # p inside, exactly


def summarize(rows: Iterable[dict]) -> dict[str, list[dict]]:
  """{benchmark: [one entry per budget, increasing]} in the order benchmarks first appear."""
  groups: dict[str, dict[int, list[dict]]] = {}
  for r in rows:
    groups.setdefault(r["benchmark"], {}).setdefault(int(r["budget"]), []).append(r)
  out = {}
  for name, by_budget in groups.items():
    entries = []
    for budget in sorted(by_budget):
      rs = by_budget[budget]
      n, passed = len(rs), sum(bool(r["passed"]) for r in rs)
      low, high = wilson(passed, n)
      entries.append({"budget": budget, "accuracy": passed / n, "ci_low": low, "ci_high": high,
                      "mean_thinking_tokens": sum(r["thinking_tokens"] for r in rs) / n,
                      "max_thinking_tokens": max(r["thinking_tokens"] for r in rs),
                      "hit_budget_rate": sum(bool(r["hit_budget"]) for r in rs) / n,
                      "unanswered": sum(r.get("extracted") is None for r in rs), "n": n})
    out[name] = entries
  return out


def average(benchmarks: dict[str, list[dict]]) -> list[dict]:
  """Per budget: the unweighted mean over benchmarks of accuracy and mean thinking tokens (the
  paper's "average" panel); budgets every benchmark has."""
  budgets = set.intersection(*({e["budget"] for e in es} for es in benchmarks.values()))
  out = []
  for b in sorted(budgets):
    es = [next(e for e in entries if e["budget"] == b) for entries in benchmarks.values()]
    out.append({"budget": b, "accuracy": sum(e["accuracy"] for e in es) / len(es),
                "mean_thinking_tokens": sum(e["mean_thinking_tokens"] for e in es) / len(es),
                "max_thinking_tokens": max(e["max_thinking_tokens"] for e in es),
                "hit_budget_rate": sum(e["hit_budget_rate"] for e in es) / len(es),
                "unanswered": sum(e["unanswered"] for e in es), "n": sum(e["n"] for e in es)})
  return out


def control(entries: list[dict]) -> float | None:
  """s1's Control (module docstring): the share of budgets at which no sample thought longer
  than the budget. None for no entries."""
  if not entries:
    return None
  return sum(e["max_thinking_tokens"] <= e["budget"] for e in entries) / len(entries)


def scaling(entries: list[dict]) -> float | None:
  """s1's Scaling (module docstring): the mean slope of accuracy against mean thinking tokens
  over every pair of points with different token means; None without such a pair."""
  pts = [(e["mean_thinking_tokens"], e["accuracy"]) for e in entries]
  slopes = [(fb - fa) / (tb - ta) for i, (ta, fa) in enumerate(pts) for tb, fb in pts[i + 1:]
            if tb != ta]
  return sum(slopes) / len(slopes) if slopes else None


def performance(entries: list[dict]) -> float | None:
  """s1's Performance: the best accuracy over the budgets (None for no entries)."""
  return max((e["accuracy"] for e in entries), default=None)


def _curve(entries: list[dict]) -> list[tuple[float, float]]:
  """(t, f) points ordered by t, accuracies at an equal t averaged into one point."""
  by_t: dict[float, list[float]] = {}
  for e in entries:
    by_t.setdefault(float(e["mean_thinking_tokens"]), []).append(e["accuracy"])
  return [(t, sum(fs) / len(fs)) for t, fs in sorted(by_t.items())]


def token_range(entries: list[dict]) -> tuple[float, float] | None:
  """(smallest, largest) mean thinking tokens of the curve; None for no entries."""
  ts = [float(e["mean_thinking_tokens"]) for e in entries]
  return (min(ts), max(ts)) if ts else None


def shared_range(*curves: list[dict]) -> tuple[float, float] | None:
  """The token range every curve spans (for `auc` at equal cost); None when they do not meet."""
  ranges = [token_range(c) for c in curves]
  if not ranges or any(r is None for r in ranges):
    return None
  lo, hi = max(r[0] for r in ranges), min(r[1] for r in ranges)
  return (lo, hi) if lo <= hi else None


def auc(entries: list[dict], lo: float | None = None, hi: float | None = None) -> float | None:
  """The normalised area under accuracy against mean thinking tokens (module docstring) over
  [lo, hi] (default: the curve's own token range; a given range must lie inside it). None for
  no entries."""
  pts = _curve(entries)
  if not pts:
    return None
  t0, t1 = pts[0][0], pts[-1][0]
  lo = t0 if lo is None else float(lo)
  hi = t1 if hi is None else float(hi)
  if not t0 <= lo <= hi <= t1:
    raise ValueError(f"auc over [{lo}, {hi}]: outside the curve's token range [{t0}, {t1}]")

  def f(t: float) -> float:  # the piecewise-linear curve at t
    for (ta, fa), (tb, fb) in zip(pts, pts[1:]):
      if ta <= t <= tb:
        return fa + (fb - fa) * (t - ta) / (tb - ta)
    return pts[0][1]  # a single point

  if hi == lo:
    return f(lo)
  knots = [lo] + [t for t, _ in pts if lo < t < hi] + [hi]
  area = sum((tb - ta) * (f(ta) + f(tb)) / 2 for ta, tb in zip(knots, knots[1:]))
  return area / (hi - lo)


def metrics(entries: list[dict]) -> dict:
  """Every test-time-scaling metric of one curve (module docstring): `control`, `scaling`,
  `performance`, `auc`, `token_range` ([min, max] mean thinking tokens) and `att` ([[budget,
  average thinking tokens], ...])."""
  r = token_range(entries)
  return {"control": control(entries), "scaling": scaling(entries),
          "performance": performance(entries), "auc": auc(entries),
          "token_range": list(r) if r else None,
          "att": [[e["budget"], e["mean_thinking_tokens"]] for e in entries]}


def all_metrics(benchmarks: dict[str, list[dict]]) -> dict:
  """{"benchmarks": {name: metrics}, "average": the average panel's metrics (None without
  benchmarks)}."""
  return {"benchmarks": {name: metrics(es) for name, es in benchmarks.items()},
          "average": metrics(average(benchmarks)) if benchmarks else None}


def build_summary(rows: Iterable[dict], model: str | None = None,
                  config: dict | None = None) -> dict:
  """summary.json: {"benchmarks": {name: [entry per budget]}, "metrics": `all_metrics`,
  "model", "config"}."""
  benchmarks = summarize(rows)
  return {"benchmarks": benchmarks, "metrics": all_metrics(benchmarks), "model": model,
          "config": config or {}}


def _pct(x: float | None) -> str:
  return "-" if x is None else f"{100 * x:.1f}%"


def metrics_markdown(summary: dict) -> list[str]:
  """The metrics table of summary.md: one row per benchmark, then the average."""
  m = summary["metrics"]
  rows = list(m["benchmarks"].items()) + ([("average", m["average"])] if m["average"] else [])
  lines = ["## Test-time scaling", "",
           "s1's Control (share of budgets whose thinking stayed within the budget), Scaling "
           "(mean pairwise slope of accuracy against mean thinking tokens, in points per 1,000 "
           "tokens) and Performance (best accuracy); AUC: the area under accuracy against mean "
           "thinking tokens divided by the token range (the mean accuracy over the tokens "
           "spanned); Z1's ATT: the mean thinking tokens at each budget (tables above). "
           "Definitions and sources: `z1_jax/eval/report.py`.", "",
           "| curve | Control | Scaling (pts / 1k tokens) | Performance | AUC | token range |",
           "|---|---:|---:|---:|---:|---|"]
  for name, x in rows:
    scale = "-" if x["scaling"] is None else f"{1e5 * x['scaling']:+.2f}"
    span = "-" if x["token_range"] is None else (f"{x['token_range'][0]:.0f}-"
                                                f"{x['token_range'][1]:.0f}")
    lines.append(f"| {name} | {_pct(x['control'])} | {scale} | {_pct(x['performance'])} | "
                 f"{_pct(x['auc'])} | {span} |")
  return lines + [""]


def markdown(summary: dict) -> str:
  lines = [f"# Budget sweep: {summary.get('model') or 'model'}", ""]
  header = ("| budget | accuracy | 95% CI | mean thinking tokens (ATT) | hit budget | "
            "unanswered | n |\n"
            "|---:|---:|---|---:|---:|---:|---:|")
  for name, entries in summary["benchmarks"].items():
    lines += [f"## {name}", "", header]
    for e in entries:
      lines.append(f"| {e['budget']} | {100 * e['accuracy']:.1f}% | "
                   f"{100 * e['ci_low']:.1f}-{100 * e['ci_high']:.1f}% | "
                   f"{e['mean_thinking_tokens']:.0f} | {100 * e['hit_budget_rate']:.0f}% | "
                   f"{e['unanswered']} | {e['n']} |")
    lines.append("")
  if summary["benchmarks"]:
    lines += ["## Average (unweighted over benchmarks)", "",
              "| budget | accuracy | mean thinking tokens (ATT) | hit budget | unanswered | n |",
              "|---:|---:|---:|---:|---:|---:|"]
    for e in average(summary["benchmarks"]):
      lines.append(f"| {e['budget']} | {100 * e['accuracy']:.1f}% | "
                   f"{e['mean_thinking_tokens']:.0f} | {100 * e['hit_budget_rate']:.0f}% | "
                   f"{e['unanswered']} | {e['n']} |")
    lines.append("")
    lines += metrics_markdown(summary)
  return "\n".join(lines)


def read_reference(path: str | os.PathLike) -> list[dict]:
  """Reference series from a JSON file: {"series": [{"label", "marker"?, "points":
  {benchmark or "average": [[thinking_tokens, accuracy_percent], ...]}}]}."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"--reference {path}: file not found")
  try:
    series = json.loads(path.read_text())["series"]
    for s in series:
      for name, pts in s["points"].items():
        for x, y in pts:
          float(x), float(y)
      str(s["label"])
  except (ValueError, KeyError, TypeError) as e:
    raise Z1Error(f"--reference {path}: expected {{\"series\": [{{\"label\": ..., \"points\": "
                  f"{{benchmark: [[tokens, percent], ...]}}}}]}} ({type(e).__name__}: {e})")
  return series


def figure_size_px(n_benchmarks: int) -> tuple[int, int]:
  """(width, height) of sweep.png: one panel per benchmark plus the average."""
  return (round(PANEL_INCHES * (n_benchmarks + 1) * DPI), round(PANEL_HEIGHT_INCHES * DPI))


def plot(summary: dict, path: str | os.PathLike, reference: list[dict] | None = None) -> Path:
  """Accuracy (%) against mean thinking tokens on a log2 axis; budgets labelled."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  panels = list(summary["benchmarks"].items()) + [("average", average(summary["benchmarks"]))]
  fig, axes = plt.subplots(1, len(panels), squeeze=False,
                           figsize=(PANEL_INCHES * len(panels), PANEL_HEIGHT_INCHES), dpi=DPI)
  for ax, (name, entries) in zip(axes[0], panels):
    xs = [max(e["mean_thinking_tokens"], 1.0) for e in entries]
    ys = [100 * e["accuracy"] for e in entries]
    kw = {}
    if entries and "ci_low" in entries[0]:
      kw["yerr"] = [[max(0.0, y - 100 * e["ci_low"]) for y, e in zip(ys, entries)],
                    [max(0.0, 100 * e["ci_high"] - y) for y, e in zip(ys, entries)]]
    ax.errorbar(xs, ys, marker="o", capsize=3, label=summary.get("model") or "this run", **kw)
    for x, y, e in zip(xs, ys, entries):
      ax.annotate(str(e["budget"]), (x, y), textcoords="offset points", xytext=(4, 4),
                  fontsize=7)
    for s in reference or ():
      pts = s["points"].get(name)
      if pts:
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=s.get("marker", "s"),
                   s=60, label=s["label"], zorder=3)
    ax.set_xscale("log", base=2)
    ax.set_title(name, fontsize=10)
    ax.set_xlabel("mean thinking tokens", fontsize=8)
    ax.set_ylabel("pass@1 (%)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(True, alpha=0.3)
  axes[0][-1].legend(fontsize=6, loc="best")
  fig.tight_layout()
  return save_png(fig, path)


def save_png(fig, path: str | os.PathLike, dpi: int = DPI) -> Path:
  """Writes a matplotlib figure as a PNG, atomically, and closes it. No "Software" stamp: the
  same figure gives the same bytes."""
  import matplotlib.pyplot as plt
  path = Path(path)
  try:
    with atomic_path(path) as tmp:
      fig.savefig(tmp, format="png", dpi=dpi, metadata={"Software": None})
  finally:
    plt.close(fig)
  return path


def write_report(rows: Iterable[dict], out_dir: str | os.PathLike, *, model: str | None = None,
                 config: dict | None = None, reference: list[dict] | str | os.PathLike | None
                 = None) -> dict:
  """Writes `summary.json`, `summary.md` and `sweep.png` into `out_dir` (each atomically) and
  returns the summary (`build_summary`)."""
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  if reference is not None and not isinstance(reference, list):
    reference = read_reference(reference)
  summary = build_summary(rows, model, config)
  write_text_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
  write_text_atomic(out / "summary.md", markdown(summary))
  plot(summary, out / "sweep.png", reference)
  return summary
