"""`z1 bench sweep`: the evaluation sweep at a real batch size (64 problems at 64 slots by
default), its wall time split into decoding and scoring, beside separate runs (one full decode
per budget, on an engine of the same slots) and one decode at the largest budget alone.

A tiny random model (the real Qwen vocabulary, so the real tokenizer and HumanEval prompts
fit) sweeps `budgets` on the first `problems` HumanEval problems through `eval.sweep.run_sweep`
(decode with `z1_jax.sweep`, sandboxed scoring overlapped with the next batch's decoding). Its
completions are not code, so each one still costs a sandbox run (a raw HumanEval body that fails
to compile): the scoring load of a real sweep, minus the time programs run. Random weights never
end early: every row takes every branch, the sweep's worst case.

The decode comparison also counts the engine's decode steps (machine-independent): the sweep
decodes each trunk once and each branch's trigger and answer; separate runs decode every
budget's whole window. Every variant is run once first so that compile time is left out.
Targets: the sweep's decoding <= 0.8x separate runs; the whole sweep <= 1.2x its decoding.
"""

from __future__ import annotations

import tempfile
import time


def bench_sweep(problems: int = 64, budgets: tuple[int, ...] = (32, 64, 128, 256, 512),
                answer_tokens: int = 64, batch_size: int = 64,
                workers: int | None = None) -> list[dict]:
  import z1_jax
  from z1_jax.data.tokenizer import load_tokenizer
  from z1_jax.eval.sweep import SweepConfig, run_sweep
  from z1_jax.eval.score import Scorer, read_samples
  from z1_jax.eval.benchmarks import load_benchmark
  from z1_jax.model.config import get_preset
  from z1_jax.model.qwen2 import create_model

  budgets = tuple(sorted(budgets))
  model = create_model(get_preset("tiny"), seed=0)
  tokenizer = load_tokenizer()
  cfg = SweepConfig(model="tiny-random", benchmarks=("humaneval",), budgets=budgets,
                    answer_tokens=answer_tokens, limit=problems)
  decode_s = []

  def timed_sweep(*args, **kw):
    start = time.perf_counter()
    out = z1_jax.sweep(*args, **kw)
    decode_s.append(time.perf_counter() - start)
    return out

  def sweep_once():
    decode_s.clear()
    with tempfile.TemporaryDirectory() as out:
      start = time.perf_counter()
      summary = run_sweep(cfg, out, model=model, tokenizer=tokenizer, batch_size=batch_size,
                          workers=workers, progress=False, decode=timed_sweep)
      total = time.perf_counter() - start
      rows = read_samples(f"{out}/samples.jsonl")
    return total, sum(decode_s), rows, summary

  from z1_jax.data.format import render_prompt
  from z1_jax.eval.sweep import load_problems
  prompts = [tokenizer.encode(render_prompt(p.question, cfg.system_prompt),
                              add_special_tokens=False) for p in load_problems(cfg)]

  from z1_jax.infer.engine import Request
  from z1_jax.infer.generate import make_engine
  from z1_jax.data.format import ANSWER_TRIGGER
  trigger = len(tokenizer.encode(ANSWER_TRIGGER, add_special_tokens=False))
  longest = max(map(len, prompts)) + budgets[-1] + answer_tokens
  engine = make_engine(model, longest, batch_size, tokenizer=tokenizer)
  reqs = lambda b: [Request(i, p, thinking_budget=b, answer_tokens=answer_tokens, row_id=i)
                    for i, p in enumerate(prompts)]

  def steps(fn):
    before = engine.stats()["decode_steps"]
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start, engine.stats()["decode_steps"] - before

  separate = lambda: [engine.run(reqs(b)) for b in budgets]
  swept = lambda: engine.sweep(reqs(budgets[-1]), budgets)
  largest = lambda: engine.run(reqs(budgets[-1]))

  # compile every variant once
  sweep_once()
  separate()
  swept()

  total_s, sweep_decode_s, rows, _ = sweep_once()
  naive_s, naive_steps = steps(separate)
  decode_alone_s, sweep_steps = steps(swept)
  largest_s, largest_steps = steps(largest)

  # scoring alone, the same rows (a fresh scorer: no verdict cache carried over)
  scorer = Scorer(load_benchmark("humaneval")[:problems], workers=workers)
  try:
    start = time.perf_counter()
    scorer.score([{"task_id": r["task_id"], "completion": r["graded"]} for r in rows],
                 progress=False)
    score_alone_s = time.perf_counter() - start
  finally:
    scorer.close()
  common = {"problems": problems, "budgets": ",".join(map(str, budgets)),
            "answer_tokens": answer_tokens, "batch_size": batch_size, "trigger_tokens": trigger}
  return [
      {"impl": "z1-jax sweep (decode + overlapped scoring)", **common, "seconds": total_s,
       "decode_s": sweep_decode_s, "after_decode_s": total_s - sweep_decode_s},
      {"impl": "engine.sweep alone, same slots, no scoring", "seconds": decode_alone_s,
       "decode_steps": sweep_steps},
      {"impl": "scoring the same rows alone", "rows": len(rows), "seconds": score_alone_s},
      {"impl": "separate runs: one full decode per budget, same slots (reference)",
       "seconds": naive_s, "decode_steps": naive_steps},
      {"impl": "one decode at the largest budget, same slots (reference)", "seconds": largest_s,
       "decode_steps": largest_steps},
      {"impl": "ratios", "sweep_vs_separate_s": decode_alone_s / naive_s,
       "sweep_vs_separate_steps": sweep_steps / naive_steps, "target": 0.8,
       "sweep_vs_largest_s": decode_alone_s / largest_s,
       "sweep_vs_decode": total_s / sweep_decode_s, "sweep_target": 1.2},
  ]
