"""Accuracy against thinking tokens: `summary.json`, `summary.md` and `sweep.png` from
per-sample rows. Used by `z1 sweep` and by the demo (any task whose rows carry the fields below).

A row: `benchmark`, `budget`, `thinking_tokens`, `hit_budget`, `passed`, `extracted` (None when
the sample gave no answer). Accuracy at a budget is the share of passed rows: pass@1 when every
problem has the same number of samples. The interval is Wilson's score interval (95%) over the
rows, which treats samples of one problem as independent (exact for one sample per problem).
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
                "hit_budget_rate": sum(e["hit_budget_rate"] for e in es) / len(es),
                "unanswered": sum(e["unanswered"] for e in es), "n": sum(e["n"] for e in es)})
  return out


def markdown(summary: dict) -> str:
  lines = [f"# Budget sweep: {summary.get('model') or 'model'}", ""]
  header = ("| budget | accuracy | 95% CI | mean thinking tokens | hit budget | unanswered | n |\n"
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
              "| budget | accuracy | mean thinking tokens | hit budget | unanswered | n |",
              "|---:|---:|---:|---:|---:|---:|"]
    for e in average(summary["benchmarks"]):
      lines.append(f"| {e['budget']} | {100 * e['accuracy']:.1f}% | "
                   f"{e['mean_thinking_tokens']:.0f} | {100 * e['hit_budget_rate']:.0f}% | "
                   f"{e['unanswered']} | {e['n']} |")
    lines.append("")
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
  path = Path(path)
  try:
    with atomic_path(path) as tmp:
      fig.savefig(tmp, format="png", dpi=DPI, metadata={"Software": None})
  finally:
    plt.close(fig)
  return path


def write_report(rows: Iterable[dict], out_dir: str | os.PathLike, *, model: str | None = None,
                 config: dict | None = None, reference: list[dict] | str | os.PathLike | None
                 = None) -> dict:
  """Writes `summary.json`, `summary.md` and `sweep.png` into `out_dir` (each atomically) and
  returns the summary: {"benchmarks": {name: [entry per budget]}, "model", "config"}."""
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  if reference is not None and not isinstance(reference, list):
    reference = read_reference(reference)
  summary = {"benchmarks": summarize(rows), "model": model, "config": config or {}}
  write_text_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
  write_text_atomic(out / "summary.md", markdown(summary))
  plot(summary, out / "sweep.png", reference)
  return summary
