"""`z1 bench sweep`: the evaluation sweep's wall time, split into decoding and scoring, beside
the naive way (one full decode per budget) and one decode at the largest budget alone.

A tiny random model (the real Qwen vocabulary, so the real tokenizer and HumanEval prompts
fit) sweeps `budgets` on the first `problems` HumanEval problems through `eval.sweep.run_sweep`
(decode with `z1_jax.sweep`, sandboxed scoring overlapped with the next batch's decoding). Its
completions are not code, so each one still costs a sandbox run (a raw HumanEval body that fails
to compile): the scoring load of a real sweep, minus the time programs run.

Every decode variant is run once first so that compile time is left out of every figure.
Targets: decoding <= 1.5x the largest budget alone; the whole sweep <= 1.2x its decoding.
"""

from __future__ import annotations

import tempfile
import time


def bench_sweep(problems: int = 64, budgets: tuple[int, ...] = (32, 64, 128, 256),
                answer_tokens: int = 32, batch_size: int = 16,
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

  def one_decode(budget):
    return z1_jax.generate(model, prompts, thinking_budget=budget, answer_tokens=answer_tokens,
                           tokenizer=tokenizer, batch_size=batch_size)

  def decode_only():  # z1_jax.sweep on the same batches, nothing scored beside it
    for lo in range(0, len(prompts), batch_size):
      z1_jax.sweep(model, prompts[lo:lo + batch_size], list(budgets), answer_tokens,
                   tokenizer=tokenizer, batch_size=batch_size,
                   row_ids=list(range(lo, min(lo + batch_size, len(prompts)))))

  # compile every variant once
  sweep_once()
  for b in budgets:
    one_decode(b)

  total_s, sweep_decode_s, rows, _ = sweep_once()
  start = time.perf_counter()
  for b in budgets:
    one_decode(b)
  naive_s = time.perf_counter() - start
  start = time.perf_counter()
  decode_only()
  decode_alone_s = time.perf_counter() - start
  start = time.perf_counter()
  one_decode(budgets[-1])
  largest_s = time.perf_counter() - start

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
            "answer_tokens": answer_tokens, "batch_size": batch_size}
  return [
      {"impl": "z1-jax sweep (decode + overlapped scoring)", **common, "seconds": total_s,
       "decode_s": sweep_decode_s, "after_decode_s": total_s - sweep_decode_s},
      {"impl": "z1_jax.sweep alone, same batches, no scoring", "seconds": decode_alone_s},
      {"impl": "scoring the same rows alone", "rows": len(rows), "seconds": score_alone_s},
      {"impl": "naive: one full decode per budget (reference)", "seconds": naive_s},
      {"impl": "one decode at the largest budget (reference)", "seconds": largest_s},
      {"impl": "ratios", "decode_vs_largest": sweep_decode_s / largest_s,
       "decode_alone_vs_largest": decode_alone_s / largest_s, "decode_target": 1.5, "naive_vs_decode": naive_s / sweep_decode_s,
       "sweep_vs_decode": total_s / sweep_decode_s, "sweep_target": 1.2},
  ]
