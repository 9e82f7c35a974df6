"""`z1 bench paged`: what the paged KV cache buys, each figure beside its reference in the same
run (a tiny random model, preset `tiny` by default; random weights never end early, so every
length is exact).

- `lengths`: the same 48 short requests through the same slots with `max_seq_len` 512 and
  16,384. A step's cost follows the tokens the rows hold, so the two should match (target:
  16,384 at >= 0.8x the throughput at 512; the dense cache ran 20x slower there).
- `capacity`: 128 requests decoded concurrently from a pool of 32,768 tokens with
  `max_seq_len` 16,384 (a dense cache would need 128 x 16,384 = 2M positions): the peak of
  rows decoding at once, the pool's bytes against the dense cache's, and the process's peak RSS.
Occupancy and padding waste on a Z1-like mix, at both cache sizes: `z1 bench decode --mix`.
"""

from __future__ import annotations

import resource
import statistics
import time

import jax
import numpy as np

from z1_jax.bench.decode import _timed


def _model(preset: str, seed: int):
  from z1_jax.model.config import get_preset
  from z1_jax.model.qwen2 import create_model
  return create_model(get_preset(preset), seed=seed)


def _requests(cfg, n: int, prompt_len: int, lengths, seed: int):
  from z1_jax.infer.engine import Request
  rng = np.random.RandomState(seed)
  prompts = rng.randint(0, cfg.vocab_size, (n, prompt_len)).tolist()
  return [Request(i, p, max_new_tokens=int(m), row_id=i, ignore_eos=True)
          for i, (p, m) in enumerate(zip(prompts, lengths))]


def bench_lengths(preset: str = "tiny", slots: int = 16, requests: int = 48,
                  prompt_len: int = 32, gen_len: int = 64, repeats: int = 3,
                  seed: int = 0) -> list[dict]:
  from z1_jax.infer.engine import Engine
  model = _model(preset, seed)
  reqs = _requests(model.cfg, requests, prompt_len, [gen_len] * requests, seed)
  engines = {m: Engine(model, slots=slots, max_seq_len=m, eos_ids=[], trigger_ids=[1],
                       max_total_tokens=16384) for m in (512, 16384)}
  for engine in engines.values():
    engine.warmup()
    engine.run(reqs[:slots])
  times = {m: [] for m in engines}
  for _ in range(repeats):  # alternating rounds
    for m, engine in engines.items():
      times[m].append(_timed(lambda e=engine: e.run(reqs)))
  tokens = requests * gen_len
  rate = {m: tokens / statistics.median(t) for m, t in times.items()}
  return [{"impl": "z1-jax paged engine", "preset": preset, "slots": slots,
           "requests": requests, "prompt_len": prompt_len, "gen_len": gen_len,
           "tokens_per_s_at_512": rate[512], "tokens_per_s_at_16384": rate[16384],
           "ratio_16384_over_512": rate[16384] / rate[512], "target": 0.8,
           "backend": jax.default_backend(), "rounds": repeats}]


def bench_capacity(preset: str = "tiny", sequences: int = 128, pool_tokens: int = 32768,
                   max_seq_len: int = 16384, prompt_len: int = 32, gen_len: int = 192,
                   seed: int = 0) -> list[dict]:
  from z1_jax.infer.engine import Engine
  from z1_jax.infer.engine.core import kv_bytes_per_token
  rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  model = _model(preset, seed)
  engine = Engine(model, slots=sequences, max_seq_len=max_seq_len, eos_ids=[],
                  trigger_ids=[1], max_total_tokens=pool_tokens)
  engine.warmup()
  reqs = _requests(model.cfg, sequences, prompt_len, [gen_len] * sequences, seed)
  for r in reqs:
    engine.submit(r)
  peak_active, peak_pages, tokens = 0, 0, 0
  start = time.perf_counter()
  while engine.has_work():
    for e in engine.step():
      tokens += len(e.new_tokens)
    s = engine.stats()
    decoding = len(engine.sched.decoding())
    peak_active, peak_pages = max(peak_active, decoding), max(peak_pages, s["pages_used"])
  seconds = time.perf_counter() - start
  per_token = kv_bytes_per_token(model.cfg, engine.model)
  return [{"impl": "z1-jax paged engine", "preset": preset, "sequences": sequences,
           "max_seq_len": max_seq_len, "pool_tokens": engine.max_total_tokens,
           "tokens_per_sequence": prompt_len + gen_len, "peak_rows_decoding": peak_active,
           "peak_pages_used": peak_pages, "pages_total": engine.stats()["pages_total"],
           "preemptions": engine.preemptions, "tokens_per_s": tokens / seconds,
           "pool_mib": engine.max_total_tokens * per_token / 2**20,
           "dense_cache_mib": sequences * max_seq_len * per_token / 2**20,
           "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "rss_before_model_mib": rss_start / 1024}]
