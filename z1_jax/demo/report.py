"""The demo's comparison: `summary.json` (the `z1 sweep` schema per model, plus the claim),
`summary.md` with the headline, `sweep.png` and `thinking_by_steps.png`.

Everything here is computed from the per-sample rows of `samples.jsonl` (`model`, `budget`,
`steps`, `thinking_tokens`, `hit_budget`, `passed`, `extracted`), so `claim` can be recomputed
from that file alone.

The claim (Z1's headline, in miniature): the long model's best accuracy is its highest accuracy
over the budgets (at the smallest budget that reaches it); `z1_budget` is the smallest budget at
which `z1` comes within `CLAIM_MARGIN` of it, and `token_ratio` is z1's mean thinking tokens
there over the long model's at its best budget.

Each model's summary carries the test-time-scaling metrics of `z1 sweep` (`eval.report.metrics`:
s1's Control / Scaling / Performance, the normalised area under accuracy against thinking
tokens, Z1's ATT). `equal_cost` compares the two models at equal cost: each one's normalised
area over the token range both curves span (`eval.report.shared_range`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from z1_jax.eval.report import (auc, build_summary, markdown, save_png, shared_range,
                                 summarize)
from z1_jax.outputs import write_text_atomic

CLAIM_MARGIN = 0.02  # accuracy, absolute: "within 2 points"
MODELS = ("z1", "long")
COLORS = {"z1": "tab:blue", "long": "tab:orange"}


def by_model(rows: Iterable[dict]) -> dict[str, list[dict]]:
  out: dict[str, list[dict]] = {}
  for r in rows:
    out.setdefault(r["model"], []).append(r)
  return out


def claim(rows: Iterable[dict]) -> dict:
  """The claim from sample rows of both models (see the module docstring). `z1_budget`,
  `z1_accuracy`, `z1_mean_thinking_tokens` and `token_ratio` are None when z1 never comes within
  the margin."""
  models = by_model(rows)
  missing = [m for m in MODELS if m not in models]
  if missing:
    raise ValueError(f"claim: no rows for model(s) {missing}")
  curves = {m: next(iter(summarize(rs).values())) for m, rs in models.items()}
  long_best = max(curves["long"], key=lambda e: (e["accuracy"], -e["budget"]))
  out = {"long_best_accuracy": long_best["accuracy"], "long_budget": long_best["budget"],
         "long_mean_thinking_tokens": long_best["mean_thinking_tokens"], "z1_accuracy": None,
         "z1_budget": None, "z1_mean_thinking_tokens": None, "token_ratio": None,
         "margin": CLAIM_MARGIN}
  for e in curves["z1"]:  # budgets increasing
    # a tolerance for float rounding: 0.78 vs 0.80 - 0.02 must count as within
    if e["accuracy"] >= long_best["accuracy"] - CLAIM_MARGIN - 1e-9:
      out.update(z1_accuracy=e["accuracy"], z1_budget=e["budget"],
                 z1_mean_thinking_tokens=e["mean_thinking_tokens"],
                 token_ratio=e["mean_thinking_tokens"] / max(
                     long_best["mean_thinking_tokens"], 1e-9))
      break
  return out


def headline(c: dict) -> str:
  if c["z1_budget"] is None:
    return (f"z1 does not come within {100 * c['margin']:.0f} points of the long model's best "
            f"accuracy ({100 * c['long_best_accuracy']:.1f}%) at any budget")
  return (f"z1 reaches {100 * c['z1_accuracy']:.1f}% (long: {100 * c['long_best_accuracy']:.1f}% "
          f"at best) with {100 * c['token_ratio']:.0f}% of the long model's thinking tokens "
          f"(z1 at budget {c['z1_budget']}: {c['z1_mean_thinking_tokens']:.1f} mean thinking "
          f"tokens; long at budget {c['long_budget']}: "
          f"{c['long_mean_thinking_tokens']:.1f})")


def thinking_by_steps(rows: Iterable[dict], budget_of: dict[str, int]) -> dict[str, dict]:
  """{model: {steps: mean thinking tokens}} at each model's budget in `budget_of`."""
  sums: dict[str, dict[int, list[int]]] = {}
  for r in rows:
    if r["budget"] == budget_of.get(r["model"]):
      sums.setdefault(r["model"], {}).setdefault(int(r["steps"]), []).append(
          r["thinking_tokens"])
  return {m: {s: sum(v) / len(v) for s, v in sorted(by.items())} for m, by in sums.items()}


def equal_cost(models: dict[str, dict]) -> dict:
  """{"token_range": [lo, hi] both curves span (None when they do not meet), "auc": {model:
  normalised area over that range}}."""
  curves = {m: next(iter(models[m]["benchmarks"].values())) for m in MODELS}
  span = shared_range(*curves.values())
  return {"token_range": list(span) if span else None,
          "auc": {m: auc(c, *span) if span else None for m, c in curves.items()}}


def build(rows: list[dict], model_names: dict[str, str], config: dict) -> dict:
  """summary.json: {"models": {name: the `z1 sweep` summary}, "claim", "headline",
  "equal_cost", "thinking_by_steps", "config"}."""
  models = by_model(rows)
  c = claim(rows)
  largest = max(int(r["budget"]) for r in rows)
  summaries = {m: build_summary(models[m], model_names.get(m, m), config.get(m, {}))
               for m in MODELS}
  return {"models": summaries, "claim": c, "headline": headline(c),
          "equal_cost": equal_cost(summaries),
          "thinking_by_steps": {"budget": largest,
                                "models": thinking_by_steps(rows, {m: largest for m in MODELS})},
          "config": config.get("shared", {})}


def to_markdown(summary: dict, chance: float) -> str:
  parts = ["# z1 demo: z1 against the long-reasoning baseline", "", summary["headline"], ""]
  for m in MODELS:
    parts.append(markdown(summary["models"][m]).replace("# Budget sweep:", f"## {m}:", 1))
  eq = summary["equal_cost"]
  if eq["token_range"] is not None:
    lo, hi = eq["token_range"]
    parts += [f"At equal cost (the normalised area under accuracy against mean thinking tokens "
              f"over {lo:.1f}-{hi:.1f} tokens, the range both curves span): " + ", ".join(
                  f"{m} {100 * eq['auc'][m]:.1f}%" for m in MODELS) + ".", ""]
  t = summary["thinking_by_steps"]
  steps = sorted({int(s) for by in t["models"].values() for s in by})
  parts += [f"## Mean thinking tokens by statement count (budget {t['budget']})", "",
            "| model | " + " | ".join(str(s) for s in steps) + " |",
            "|---|" + "---:|" * len(steps)]
  for m in MODELS:
    by = {int(k): v for k, v in t["models"][m].items()}
    parts.append(f"| {m} | " + " | ".join(f"{by[s]:.1f}" for s in steps) + " |")
  parts += ["", f"Chance level (best constant guess on the held-out answers): {100 * chance:.1f}%",
            ""]
  return "\n".join(parts)


def sweep_series(summary: dict) -> dict[str, dict[str, list]]:
  """Per model, what sweep.png draws: budgets (x, increasing), accuracy (%) and mean thinking
  tokens: one point per budget joined in budget order, so no line can double back."""
  out = {}
  for m in MODELS:
    entries = next(iter(summary["models"][m]["benchmarks"].values()))
    out[m] = {"budget": [e["budget"] for e in entries],
              "accuracy": [100 * e["accuracy"] for e in entries],
              "mean_thinking_tokens": [e["mean_thinking_tokens"] for e in entries]}
  return out


def plot_sweep(summary: dict, path: str | os.PathLike) -> Path:
  """Two panels over the budget axis: accuracy, and mean thinking tokens; the claim marked."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  series, c = sweep_series(summary), summary["claim"]
  fig, (acc, tok) = plt.subplots(1, 2, figsize=(9, 3.6), dpi=100)
  for m, s in series.items():
    acc.plot(s["budget"], s["accuracy"], marker="o", color=COLORS[m], label=m)
    tok.plot(s["budget"], s["mean_thinking_tokens"], marker="o", color=COLORS[m], label=m)
    for b, y in zip(s["budget"], s["accuracy"]):
      acc.annotate(str(b), (b, y), textcoords="offset points", xytext=(3, -10), fontsize=6)
  acc.axhline(100 * (c["long_best_accuracy"] - c["margin"]), color="gray", ls=":", lw=1,
              label=f"long best - {100 * c['margin']:.0f} pts")
  if c["z1_budget"] is not None:
    acc.scatter([c["z1_budget"]], [100 * c["z1_accuracy"]], s=120, facecolors="none",
                edgecolors="black", zorder=3, label="claim point")
  acc.set(xlabel="thinking budget (tokens, trigger included)", ylabel="pass@1 (%)",
          title="accuracy by budget")
  tok.set(xlabel="thinking budget (tokens, trigger included)", ylabel="mean thinking tokens",
          title="thinking tokens used")
  for ax in (acc, tok):
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
  fig.suptitle(summary["headline"].split(" (z1 at")[0], fontsize=8)
  fig.tight_layout()
  return save_png(fig, path)


def plot_thinking_by_steps(summary: dict, path: str | os.PathLike) -> Path:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  t = summary["thinking_by_steps"]
  fig, ax = plt.subplots(figsize=(4.5, 3.6), dpi=100)
  for m in MODELS:
    by = sorted((int(k), v) for k, v in t["models"][m].items())
    ax.plot([k for k, _ in by], [v for _, v in by], marker="o", color=COLORS[m], label=m)
  ax.set(xlabel="statements in the program", ylabel="mean thinking tokens",
         title=f"thinking by difficulty (budget {t['budget']})")
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  return save_png(fig, path)


def write(rows: list[dict], out_dir: str | os.PathLike, model_names: dict[str, str],
          config: dict, chance: float) -> dict:
  """Writes summary.json, summary.md, sweep.png and thinking_by_steps.png; returns the summary."""
  out = Path(out_dir)
  summary = build(rows, model_names, config)
  write_text_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
  write_text_atomic(out / "summary.md", to_markdown(summary, chance))
  plot_sweep(summary, out / "sweep.png")
  plot_thinking_by_steps(summary, out / "thinking_by_steps.png")
  return summary
