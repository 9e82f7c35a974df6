"""`report.json`, `report.md` and `lengths.png` of a distilled set, computed from the journal
(every decoded row's fate and length) and the decontamination record alone, so a resumed run
reports exactly what an uninterrupted one would.

  funnel       problems read -> decontaminated -> prompt too long (prompt + length cap beyond
               the teacher's positions) -> rows decoded -> each filter's removals
               (`filters.FATES`) -> rows moved to the failed split (`filters.on_fail =
               "split"`) -> kept (the train split)
  lengths      of the kept rows, in the set's own token count (`token_num_<tokenizer>`): mean
               (Z1's MTL, mean trajectory length), median, min, max, a histogram over
               quarter-octave bins, and the shares of short (<= `output.short_tokens`) and long
               (>= `output.long_tokens`) trajectories
  hit_length_cap  rows that reached the cap, and how many of them were kept
  check        rows checked, passed, failed by error kind, unchecked (no tests)
  decontamination  benchmarks indexed (problems each), skipped (why), every match
  throughput   this set's decode time, rows/s and generated tokens/s (summed over batches and
               runs)
"""

from __future__ import annotations

import bisect
import collections
import json
import math
import os
import statistics
from pathlib import Path

from z1_jax.distill.filters import FATES
from z1_jax.outputs import write_text_atomic


def histogram(values: list[int]) -> dict:
  """Counts over quarter-octave bins (edges round(2^(k/4)), integers, each bin [lo, hi)) spanning
  the values: a fixed relative resolution from tens of tokens to thousands (0 counts in the first
  bin)."""
  if not values:
    return {"edges": [], "counts": []}
  lo = math.floor(4 * math.log2(max(min(values), 1)))
  hi = math.floor(4 * math.log2(max(max(values), 1))) + 1
  edges = sorted({round(2 ** (k / 4)) for k in range(lo, hi + 1)})
  if edges[-1] <= max(values):
    edges.append(max(values) + 1)
  counts = [0] * (len(edges) - 1)
  for v in values:
    counts[min(max(bisect.bisect_right(edges, v) - 1, 0), len(counts) - 1)] += 1
  return {"edges": edges, "counts": counts}


def lengths(values: list[int], short: int, long: int) -> dict:
  n = len(values)
  return {"rows": n, "mean": statistics.fmean(values) if n else None,
          "median": statistics.median(values) if n else None,
          "min": min(values) if n else None, "max": max(values) if n else None,
          "short_tokens": short, "long_tokens": long,
          "short_share": sum(v <= short for v in values) / n if n else None,
          "long_share": sum(v >= long for v in values) / n if n else None,
          "histogram": histogram(values)}


def build(records: list[dict], decontamination: dict, *, problems: int, cfg, teacher: str,
          source: str, token_column: str) -> dict:
  """report.json from the journal's records and the decontamination record."""
  rows = [r for rec in sorted(records, key=lambda r: r["batch"]) for r in rec["rows"]]
  too_long = sorted({r["problem"] for r in rows if r["fate"] == "prompt_too_long"})
  decoded = [r for r in rows if r["fate"] != "prompt_too_long"]
  fates = collections.Counter(r["fate"] for r in decoded)
  excluded = sorted({m["problem_index"] for m in decontamination["matches"]})
  funnel = [{"stage": "problems", "left": problems},
            {"stage": "decontamination", "removed": len(excluded),
             "left": problems - len(excluded), "unit": "problems"},
            {"stage": "prompt_too_long", "removed": len(too_long),
             "left": problems - len(excluded) - len(too_long), "unit": "problems"},
            {"stage": "decoded", "left": len(decoded), "unit": "rows"}]
  left = len(decoded)
  for name in (*FATES, "failed"):  # a failed check moves the row to the failed split
    removed = fates[name]
    left -= removed
    funnel.append({"stage": "failed_split" if name == "failed" else name, "removed": removed,
                   "left": left, "unit": "rows"})
  kept = [r for r in decoded if r["fate"] == "kept"]
  failed = [r for r in decoded if r["fate"] == "failed"]
  checked = [r for r in decoded if r["passed"] is not None]
  decode_s = sum(rec["decode_s"] for rec in records)
  generated = sum(rec["generated_tokens"] for rec in records)
  o = cfg.output
  return {
      "teacher": teacher, "problems_source": source, "token_column": token_column,
      "funnel": funnel, "removed": {name: fates[name] for name in FATES},
      "kept": len(kept), "failed_split": len(failed),
      "hit_length_cap": {"rows": sum(r["hit_cap"] for r in decoded),
                         "kept": sum(r["hit_cap"] for r in kept)},
      "lengths": lengths([r["token_num"] for r in kept], o.short_tokens, o.long_tokens),
      "lengths_removed": histogram([r["token_num"] for r in decoded
                                    if r["fate"] not in ("kept", "failed")]),
      "check": {"kind": cfg.filters.check, "checked": len(checked),
                "passed": sum(bool(r["passed"]) for r in checked),
                "unchecked": sum(r["passed"] is None and r["fate"] in ("kept", "failed")
                                 for r in decoded) if cfg.filters.check != "none" else 0,
                "errors": dict(collections.Counter(r["check_error"] for r in checked
                                                   if r["check_error"]))},
      "decontamination": {**decontamination, "problems_removed": len(excluded)},
      "prompt_too_long": too_long,
      "throughput": {"decode_s": decode_s, "rows": len(decoded), "generated_tokens": generated,
                     "rows_per_s": len(decoded) / decode_s if decode_s else None,
                     "tokens_per_s": generated / decode_s if decode_s else None},
  }


def _share(x: float | None) -> str:
  return "-" if x is None else f"{100 * x:.1f}%"


def markdown(report: dict) -> str:
  lines = [f"# Distilled set: {report['teacher']} on {report['problems_source']}", "",
           "## Funnel", "", "| stage | removed | left |", "|---|---:|---:|"]
  for s in report["funnel"]:
    unit = f" {s['unit']}" if "unit" in s else ""
    lines.append(f"| {s['stage']} | {s.get('removed', '')} | {s['left']}{unit} |")
  ln = report["lengths"]
  mean, median, low, high = ("-" if ln[k] is None else f"{ln[k]:g}"
                             for k in ("mean", "median", "min", "max"))
  lines += ["", f"Kept: {report['kept']} rows (train split)"
            + (f", failed split: {report['failed_split']} rows" if report["failed_split"] else "")
            + f". Rows that reached the length cap: {report['hit_length_cap']['rows']} "
            f"({report['hit_length_cap']['kept']} kept).", "",
            f"## Lengths ({report['token_column']}, kept rows)", "",
            f"Mean (Z1's MTL): {mean} tokens; median {median}, min {low}, max {high}. Short "
            f"(<= {ln['short_tokens']} tokens): {_share(ln['short_share'])}; long "
            f"(>= {ln['long_tokens']}): {_share(ln['long_share'])}.", "",
            "| tokens | kept rows |", "|---|---:|"]
  h = ln["histogram"]
  for lo, hi, c in zip(h["edges"], h["edges"][1:], h["counts"]):
    if c:  # report.json has every bin
      lines.append(f"| {lo}-{hi - 1} | {c} |")
  c = report["check"]
  if c["kind"] != "none":
    errors = ", ".join(f"{k} {v}" for k, v in sorted(c["errors"].items())) or "none"
    lines += ["", f"## Check ({c['kind']}, in the sandbox)", "",
              f"Checked {c['checked']} rows, passed {c['passed']}, unchecked (no tests) "
              f"{c['unchecked']}; failures by kind: {errors}."]
  d = report["decontamination"]
  lines += ["", f"## Decontamination ({d['ngram']}-gram word overlap)", "",
            "Indexed: " + (", ".join(f"{b} ({n} problems)" for b, n in d["loaded"].items())
                           or "none") + "."]
  for b, why in d["skipped"].items():
    lines.append(f"- skipped {b}: {why}")
  lines += ["", f"{d['problems_removed']} problems removed, {len(d['matches'])} matches."]
  if d["matches"]:
    lines += ["", "| problem | benchmark | benchmark id | shared n-gram |", "|---|---|---|---|"]
    for m in d["matches"]:
      lines.append(f"| {m['problem_id']} | {m['benchmark']} | {m['benchmark_id']} | "
                   f"{m['ngram']} |")
  t = report["throughput"]
  if t["decode_s"]:
    lines += ["", "## Throughput", "",
              f"{t['rows']} rows, {t['generated_tokens']} generated tokens in "
              f"{t['decode_s']:.1f} s of decoding: {t['rows_per_s']:.2f} rows/s, "
              f"{t['tokens_per_s']:.1f} tokens/s."]
  return "\n".join(lines) + "\n"


def plot(report: dict, path: str | os.PathLike) -> Path:
  """Kept and removed rows by length (quarter-octave bins, log2 axis), the MTL marked."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
  for h, label, color in ((report["lengths"]["histogram"], "kept", "tab:blue"),
                          (report["lengths_removed"], "removed", "tab:red")):
    if h["counts"]:
      ax.stairs(h["counts"], h["edges"], label=label, color=color, fill=label == "kept",
                alpha=0.6 if label == "kept" else 1.0)
  mean = report["lengths"]["mean"]
  if mean is not None:
    ax.axvline(mean, color="black", ls="--", lw=1, label=f"MTL {mean:.0f}")
  ax.set_xscale("log", base=2)
  ax.set(xlabel=f"response length ({report['token_column']})", ylabel="rows",
         title=f"{report['kept']} kept rows, teacher {report['teacher']}")
  ax.grid(True, alpha=0.3)
  if ax.get_legend_handles_labels()[0]:  # an empty set draws empty axes
    ax.legend(fontsize=7)
  fig.tight_layout()
  from z1_jax.eval.report import save_png
  return save_png(fig, path)


def write(report: dict, out: str | os.PathLike) -> None:
  out = Path(out)
  write_text_atomic(out / "report.json", json.dumps(report, indent=2) + "\n")
  write_text_atomic(out / "report.md", markdown(report))
  plot(report, out / "lengths.png")
