"""`z1 bench serve`: the same request set through `z1 serve` over HTTP (C concurrent streaming
clients) and offline through the engine (`Engine.run`, what `z1 generate --prompts` runs), same
slots; served tokens/s against offline, time to first token and inter-token latency
percentiles.

A tiny random model (preset `tiny`: the real Qwen vocabulary and tokenizer) saved as an HF
checkpoint, greedy, so both sides decode the same tokens. Two request mixes:
- `simple`: short text prompts cycling through `budgets` with `answer_tokens`.
- `z1`: Z1-like lengths: prompts of log-uniform 100..2,000 tokens, thinking budgets
  log-uniform 64..4,096 with 64 answer tokens (random weights never end early, so every row
  runs its whole window: generations log-uniform up to 4,160 tokens); long prompts keep
  arriving while others decode, which is what chunked prefill is for.
Inter-token latency: each streamed chunk's gap since the last one, per token it carried
(vLLM's `stream_options.continuous_usage_stats` gives the count); target p99 < 2x the median.
The gaps between a stream's text chunks are reported too (they need no token counts, so a
server without continuous usage, such as the engine before paging, gets them as well).
Compile time is left out of both (the server is timed after `/health` is 200; the offline
engine after `warmup()`). Target: served >= 0.8x offline.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def _requests(n: int, budgets: tuple[int, ...], answer_tokens: int, mix: str, tokenizer,
              vocab: int, seed: int = 0):
  """[(prompt ids, budget, answer tokens)] of the mix (see the module docstring)."""
  import numpy as np
  if mix == "simple":
    return [(tokenizer.encode(f"x = {i}; print(x * {i % 7})", add_special_tokens=False),
             budgets[i % len(budgets)], answer_tokens) for i in range(n)]
  rng = np.random.RandomState(seed)
  log_uniform = lambda lo, hi: int(round(np.exp(rng.uniform(np.log(lo), np.log(hi)))))
  return [(rng.randint(0, vocab, log_uniform(100, 2000)).tolist(), log_uniform(64, 4096), 64)
          for _ in range(n)]


def _pct(xs, q):
  xs = sorted(xs)
  return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))] if xs else float("nan")


def bench_serve(requests: int = 64, clients: int = 16, slots: int = 8,
                budgets: tuple[int, ...] = (32, 64, 128), answer_tokens: int = 32,
                max_seq_len: int | None = None, mix: str = "simple") -> list[dict]:
  import httpx
  import z1_jax
  from z1_jax.data.tokenizer import load_tokenizer
  from z1_jax.infer.engine import Engine, Request, bucket
  from z1_jax.serve.command import ready_url

  tokenizer = load_tokenizer()
  model = z1_jax.create_model(z1_jax.get_preset("tiny"))
  work = _requests(requests, budgets, answer_tokens, mix, tokenizer, model.cfg.vocab_size)
  longest = max(len(p) + b + a for p, b, a in work)
  max_seq_len = max_seq_len or bucket(longest)
  with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "bench-tiny"
    z1_jax.save_hf(model, path, dtype="float32", tokenizer=tokenizer)

    # offline: the engine alone
    engine = Engine(z1_jax.load_hf(path), slots=slots, max_seq_len=max_seq_len,
                    tokenizer=tokenizer)
    engine.warmup()
    reqs = [Request(id=i, prompt_ids=p, thinking_budget=b, answer_tokens=a)
            for i, (p, b, a) in enumerate(work)]
    t0 = time.perf_counter()
    gens = engine.run(reqs)
    offline_s = time.perf_counter() - t0
    offline_tokens = sum(len(g.tokens) for g in gens)
    del engine

    # served: z1 serve in a subprocess, C streaming clients
    root = Path(__file__).parents[2]
    env = {**os.environ, "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "z1_jax.cli", "serve", "--hf", str(path), "--port", "0",
         "--batch-size", str(slots), "--max-seq-len", str(max_seq_len),
         "--max-queue", str(requests)], stderr=subprocess.PIPE, text=True, env=env)
    try:
      url = ready_url(proc.stderr, [])
      ttft, itl, gaps, per_request, latency, tokens = [], [], [], [], [], []

      def one(item):
        prompt, budget, answer = item
        body = {"model": "bench-tiny", "prompt": prompt, "temperature": 0, "stream": True,
                "thinking_token_budget": budget, "answer_tokens": answer,
                "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
        start = time.perf_counter()
        first = last = text_at = None
        seen = 0  # completion tokens counted so far (continuous usage)
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=3600) as r:
          r.raise_for_status()
          for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
              continue
            chunk = json.loads(line[6:])
            now = time.perf_counter()
            count = (chunk.get("usage") or {}).get("completion_tokens")
            if not chunk.get("choices"):  # the final usage chunk
              tokens.append(count)
              continue
            c = chunk["choices"][0]
            if c.get("text") or c.get("reasoning_content"):  # a chunk gap (any server)
              if text_at is not None:
                gaps.append(now - text_at)
              text_at = now
            if count is None or count <= seen:
              continue
            if first is None:
              first = now
            else:
              itl.extend([(now - last) / (count - seen)] * (count - seen))
            seen, last = count, now
        latency.append(time.perf_counter() - start)
        ttft.append(first - start)
        if seen > 1 and last > first:
          per_request.append((last - first) / (seen - 1))

      t0 = time.perf_counter()
      with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, work))
      served_s = time.perf_counter() - t0
    finally:
      proc.terminate()
      proc.wait(timeout=120)
  served_tokens = sum(tokens)
  return [{"what": "offline engine", "mix": mix, "requests": requests, "slots": slots,
           "max_seq_len": max_seq_len, "tokens": offline_tokens, "seconds": offline_s,
           "tokens_per_s": offline_tokens / offline_s},
          {"what": "z1 serve (HTTP, streamed)", "clients": clients, "slots": slots,
           "tokens": served_tokens, "seconds": served_s,
           "tokens_per_s": served_tokens / served_s,
           "vs_offline": (served_tokens / served_s) / (offline_tokens / offline_s),
           "ttft_p50_s": _pct(ttft, 50), "ttft_p99_s": _pct(ttft, 99),
           "itl_p50_ms": 1e3 * _pct(itl, 50), "itl_p99_ms": 1e3 * _pct(itl, 99),
           "itl_p99_over_p50": _pct(itl, 99) / _pct(itl, 50), "itl_target": 2.0,
           "chunk_gap_p50_ms": 1e3 * _pct(gaps, 50), "chunk_gap_p99_ms": 1e3 * _pct(gaps, 99),
           "per_request_token_p50_ms": 1e3 * _pct(per_request, 50),
           "latency_p50_s": _pct(latency, 50), "latency_p99_s": _pct(latency, 99)}]
