"""`z1 bench serve`: the same request set through `z1 serve` over HTTP (C concurrent streaming
clients) and offline through the engine (`Engine.run`, what `z1 generate --prompts` runs), same
slots; served tokens/s against offline, time to first token and per-token latency percentiles.

A tiny random model (preset `tiny`: the real Qwen vocabulary and tokenizer) saved as an HF
checkpoint; requests mix thinking budgets (and one plain request in four), greedy, so both
sides decode the same tokens. Compile time is left out of both (the server is timed after
`/health` is 200; the offline engine after `warmup()`). Target: served >= 0.8x offline.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def _requests(n: int, budgets: tuple[int, ...], answer_tokens: int):
  out = []
  for i in range(n):
    budget = budgets[i % len(budgets)]
    out.append((f"x = {i}; print(x * {i % 7})", budget, answer_tokens))
  return out


def _pct(xs, q):
  xs = sorted(xs)
  return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))] if xs else float("nan")


def bench_serve(requests: int = 64, clients: int = 16, slots: int = 8,
                budgets: tuple[int, ...] = (32, 64, 128), answer_tokens: int = 32,
                max_seq_len: int = 256) -> list[dict]:
  import httpx
  import z1_jax
  from z1_jax.data.tokenizer import load_tokenizer
  from z1_jax.infer.engine import Engine, Request

  tokenizer = load_tokenizer()
  model = z1_jax.create_model(z1_jax.get_preset("tiny"))
  work = _requests(requests, budgets, answer_tokens)
  with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "bench-tiny"
    z1_jax.save_hf(model, path, dtype="float32", tokenizer=tokenizer)

    # offline: the engine alone
    engine = Engine(z1_jax.load_hf(path), slots=slots, max_seq_len=max_seq_len,
                    tokenizer=tokenizer)
    engine.warmup()
    reqs = [Request(id=i, prompt_ids=tokenizer.encode(p, add_special_tokens=False),
                    thinking_budget=b, answer_tokens=a) for i, (p, b, a) in enumerate(work)]
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
      url = None
      while url is None:
        line = proc.stderr.readline()
        if not line:
          raise RuntimeError("z1 serve exited before it was ready")
        m = re.search(r"ready on (http://\S+)", line)
        url = m.group(1) if m else None
      threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
      ttft, per_token, latency, tokens = [], [], [], []

      def one(item):
        prompt, budget, answer = item
        body = {"model": "bench-tiny", "prompt": prompt, "temperature": 0, "stream": True,
                "thinking_token_budget": budget, "answer_tokens": answer,
                "stream_options": {"include_usage": True}}
        start = time.perf_counter()
        first = last = None
        gaps = []
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=300) as r:
          r.raise_for_status()
          for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
              continue
            chunk = json.loads(line[6:])
            now = time.perf_counter()
            if chunk.get("usage"):
              tokens.append(chunk["usage"]["completion_tokens"])
              continue
            c = chunk["choices"][0]
            if c.get("text") or c.get("reasoning_content"):
              if first is None:
                first = now
              elif last is not None:
                gaps.append(now - last)
              last = now
        latency.append(time.perf_counter() - start)
        ttft.append(first - start)
        n = tokens[-1] if tokens else 0
        if n > 1 and last is not None and last > first:
          per_token.append((last - first) / (n - 1))

      t0 = time.perf_counter()
      with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, work))
      served_s = time.perf_counter() - t0
    finally:
      proc.terminate()
      proc.wait(timeout=120)
  served_tokens = sum(tokens)
  with open("/proc/loadavg") as f:
    load = f.read().split()[0]
  return [{"what": "offline engine", "requests": requests, "slots": slots,
           "tokens": offline_tokens, "seconds": offline_s,
           "tokens_per_s": offline_tokens / offline_s},
          {"what": "z1 serve (HTTP, streamed)", "clients": clients, "slots": slots,
           "tokens": served_tokens, "seconds": served_s,
           "tokens_per_s": served_tokens / served_s,
           "vs_offline": (served_tokens / served_s) / (offline_tokens / offline_s),
           "ttft_p50_s": _pct(ttft, 50), "ttft_p99_s": _pct(ttft, 99),
           "per_token_p50_ms": 1e3 * _pct(per_token, 50),
           "per_token_p99_ms": 1e3 * _pct(per_token, 99),
           "latency_p50_s": _pct(latency, 50), "latency_p99_s": _pct(latency, 99),
           "loadavg": load, "cpus": os.cpu_count()}]
