"""The CPU proof of `z1 distill`, on the demo's task (`demo/task.py`: programs whose answer comes
from running them):

1. teacher   the demo's data and tokenizer (`demo.run.make_data`), and a teacher trained on the
             z1 recipe by `z1 train` (`configs/demo.toml`)
2. problems  programs outside the held-out set, every statement count as likely (as the
             teacher's data; distinct, so the 180 one-statement programs are fewer): a set
             drawn only from programs the teacher never trained on would hold almost no short
             ones (its 8,000 rows hold every one-statement program), and a student never shown
             one fails them (measured: 33% on held-out one-statement programs, 100% on the rest)
3. distill   `z1 distill --config configs/distill-demo.toml`: greedy answers, the filters, each
             answer checked by running the program in the sandbox (failures in the failed split)
4. student   a fresh model of the same size trained by `z1 train` on the set (`OUT/set/data`)
5. evaluate  teacher and student decode the same held-out programs at every budget (the Shifted
             Thinking Window, `demo.run.sweep_rows`); `proof.md` / `proof.json` put the
             student's accuracy beside the teacher's, with the sweep metrics of each
             (`eval.report.metrics`)

  python -m z1_jax.distill.proof --out /tmp/distill-proof

The set holds the teacher's own finished traces: it never shows the answer trigger (the demo's
training data cuts 30% of its rows with it), so at budgets that cut a trace the student has to
answer after a trigger it never read; at budgets above the longest trace neither model is cut.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import time
from pathlib import Path

from z1_jax.errors import Z1Error

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
DEMO_CONFIG, DISTILL_CONFIG = CONFIGS / "demo.toml", CONFIGS / "distill-demo.toml"


def make_problems(n: int, task, seed: int, exclude: set[str]) -> list[dict]:
  """`n` distinct programs (`id`, `question`, `answer`, `steps`), none in `exclude`."""
  from z1_jax.demo import task as chain
  rows, seen = [], set(exclude)
  for r in chain.generate(4 * n, task, seed=seed, exclude=frozenset(exclude)):
    if r["question"] not in seen:
      seen.add(r["question"])
      rows.append({"id": f"chain-{len(rows)}", "question": r["question"],
                   "answer": r["answer"], "steps": r["steps"]})
      if len(rows) == n:
        return rows
  raise Z1Error(f"--problems {n}: only {len(rows)} new programs found")


def _z1(argv: list[str], quiet: bool) -> str:
  """Runs a `z1` command in this process; its stdout (a failure raises, naming the command)."""
  from z1_jax.cli import main
  out = io.StringIO()
  with contextlib.redirect_stdout(out) if quiet else contextlib.nullcontext():
    code = main(argv)
  if code != 0:
    raise Z1Error(f"z1 {' '.join(argv)}: exit {code}")
  return out.getvalue()


def _train(run: Path, dataset: Path, tokenizer: Path, steps: int, overrides, quiet: bool):
  _z1(["train", "--config", str(DEMO_CONFIG), "--out", str(run), f"data.dataset={dataset}",
       f"data.tokenizer={tokenizer}", f"data.cache_dir={run / 'cache'}",
       f"train.max_steps={steps}", f"train.decay_steps={steps}",
       f"train.warmup_steps={min(30, max(1, steps // 10))}", *overrides], quiet)


def run_proof(out: str | Path, *, teacher_steps: int = 400, student_steps: int = 400,
              problems: int = 2000, train_examples: int = 8000, eval_examples: int = 240,
              budgets: tuple[int, ...] = (16, 24, 32, 40, 80), seed: int = 0,
              teacher_run: str | Path | None = None, overrides: tuple[str, ...] = (),
              student_overrides: tuple[str, ...] = (), distill_overrides: tuple[str, ...] = (),
              quiet: bool = False) -> dict:
  """Runs the proof into `out` (see the module docstring); returns proof.json. `overrides`:
  `z1 train` overrides of both models (`student_overrides` of the student's only);
  `teacher_run`: a teacher trained by an earlier proof into the same `out` (its data and
  tokenizer are remade from the same seed)."""
  from z1_jax.checkpoint.orbax_io import load_params
  from z1_jax.config import load_config
  from z1_jax.data.sources import write_jsonl
  from z1_jax.demo import run as demo
  from z1_jax.eval.report import metrics, summarize
  from z1_jax.outputs import write_text_atomic

  root = Path(out)
  root.mkdir(parents=True, exist_ok=True)
  clock = time.perf_counter()
  times = {}
  settings = demo.DemoSettings(train_examples=train_examples, eval_examples=eval_examples,
                               budgets=tuple(budgets), seed=seed)
  system_prompt = load_config(DEMO_CONFIG).data.system_prompt
  demo.check_settings(settings)
  log = lambda text: None if quiet else print(f"[proof] {text}", flush=True)
  _, eval_rows, tokenizer = demo.make_data(root / "teacher", settings, system_prompt, log)
  tok_dir = root / "teacher" / "tokenizer"
  teacher = Path(teacher_run) if teacher_run else root / "teacher" / "run"
  if teacher_run is None:
    _train(teacher, root / "teacher" / "data" / "z1" / "train.jsonl", tok_dir, teacher_steps,
           overrides, quiet)
  times["teacher_s"] = time.perf_counter() - clock

  write_jsonl(make_problems(problems, settings.task, seed + 7,
                            {r["question"] for r in eval_rows}),
              root / "problems.jsonl")
  start = time.perf_counter()
  _z1(["distill", "--ckpt", str(teacher), "--tokenizer", str(tok_dir), "--problems",
       str(root / "problems.jsonl"), "--config", str(DISTILL_CONFIG), "--out",
       str(root / "set"), "--teacher-name", "demo-z1-teacher", "--no-progress",
       *distill_overrides], quiet)
  times["distill_s"] = time.perf_counter() - start
  report = json.loads((root / "set" / "report.json").read_text())
  if not report["kept"]:
    raise Z1Error(f"{root / 'set'}: the teacher's set kept no rows (report.md says why)")

  start = time.perf_counter()
  _train(root / "student", root / "set" / "data", tok_dir, student_steps,
         (*overrides, *student_overrides), quiet)
  times["student_s"] = time.perf_counter() - start

  start = time.perf_counter()
  rows = []
  for name, run in (("teacher", teacher), ("student", root / "student")):
    model = load_params(run / "checkpoints")
    rows += demo.sweep_rows(model, tokenizer, eval_rows, settings, system_prompt, name)[2]
  times["evaluate_s"] = time.perf_counter() - start
  curves = {name: summarize([r for r in rows if r["model"] == name])["chain"]
            for name in ("teacher", "student")}
  proof = {"budgets": list(budgets), "held_out": len(eval_rows),
           "teacher_steps": teacher_steps, "student_steps": student_steps,
           "set": {"problems": problems, "kept": report["kept"],
                   "failed_split": report["failed_split"], "removed": report["removed"],
                   "mean_length": report["lengths"]["mean"],
                   "check_passed": report["check"]["passed"],
                   "check_checked": report["check"]["checked"]},
           "curves": curves, "metrics": {m: metrics(c) for m, c in curves.items()},
           "times_s": {k: round(v, 1) for k, v in times.items()},
           "wall_s": round(time.perf_counter() - clock, 1)}
  write_text_atomic(root / "proof.json", json.dumps(proof, indent=2) + "\n")
  write_text_atomic(root / "proof.md", markdown(proof))
  log(markdown(proof))
  return proof


def markdown(proof: dict) -> str:
  s = proof["set"]
  lines = ["# z1 distill on the demo task: the student beside its teacher", "",
           f"Set: {s['kept']} rows kept of {s['problems']} problems (mean length "
           f"{s['mean_length']:.1f} tokens), {s['failed_split']} in the failed split, the "
           f"sandboxed check passed {s['check_passed']} of {s['check_checked']}; removed: "
           + (", ".join(f"{k} {v}" for k, v in s["removed"].items() if v) or "none") + ".",
           f"Teacher: {proof['teacher_steps']} steps on the z1 recipe; student: "
           f"{proof['student_steps']} steps on the set. {proof['held_out']} held-out programs.",
           "", "| budget | teacher accuracy | teacher ATT | student accuracy | student ATT |",
           "|---:|---:|---:|---:|---:|"]
  for t, st in zip(proof["curves"]["teacher"], proof["curves"]["student"]):
    lines.append(f"| {t['budget']} | {100 * t['accuracy']:.1f}% | "
                 f"{t['mean_thinking_tokens']:.1f} | {100 * st['accuracy']:.1f}% | "
                 f"{st['mean_thinking_tokens']:.1f} |")
  lines += ["", "| model | Control | Scaling (pts / 1k tokens) | Performance | AUC |",
            "|---|---:|---:|---:|---:|"]
  for name, m in proof["metrics"].items():
    scale = "-" if m["scaling"] is None else f"{1e5 * m['scaling']:+.1f}"
    lines.append(f"| {name} | {100 * m['control']:.0f}% | {scale} | "
                 f"{100 * m['performance']:.1f}% | {100 * m['auc']:.1f}% |")
  t = proof["times_s"]
  lines += ["", f"Times: teacher {t['teacher_s']} s, distill {t['distill_s']} s, student "
            f"{t['student_s']} s, evaluation {t['evaluate_s']} s; {proof['wall_s']} s in all.",
            ""]
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="python -m z1_jax.distill.proof", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", required=True, help="directory for everything (required)")
  p.add_argument("--teacher-steps", type=int, default=400, help="(default 400)")
  p.add_argument("--student-steps", type=int, default=400, help="(default 400)")
  p.add_argument("--problems", type=int, default=2000, help="problems distilled (default 2000)")
  p.add_argument("--budgets", default="16,24,32,40,80", help="(default 16,24,32,40,80)")
  p.add_argument("--seed", type=int, default=0, help="task seed (default 0)")
  args = p.parse_args(argv)
  run_proof(args.out, teacher_steps=args.teacher_steps, student_steps=args.student_steps,
            problems=args.problems, budgets=tuple(int(b) for b in args.budgets.split(",")),
            seed=args.seed)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
