"""Where a decode step's time goes: a `jax.profiler` trace of the engine decoding `--batch`
rows of the Qwen2.5-0.5B shapes (random fp32 weights, CPU), summed by XLA op.

The trace is written under `--out` (TensorBoard's profile tab reads it; a Perfetto JSON copy
is written beside it). This script reads the Perfetto copy and prints the ops that take the
most time per decode step, each with its share of the step.

usage: .venv/bin/python scripts/profile_decode.py [--batch 8] [--steps 64] [--out /tmp/prof]
"""

import argparse
import collections
import gzip
import json
import time
from pathlib import Path

import jax
import numpy as np

from z1_jax.infer.engine import Engine, Request
from z1_jax.model.config import get_preset
from z1_jax.model.qwen2 import create_model


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--preset", default="qwen2.5-0.5b")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--prompt-len", type=int, default=128)
  p.add_argument("--steps", type=int, default=64)
  p.add_argument("--top", type=int, default=15)
  p.add_argument("--out", default="/tmp/z1-profile")
  args = p.parse_args()
  cfg = get_preset(args.preset)
  model = create_model(cfg, seed=0)
  engine = Engine(model, slots=args.batch, max_seq_len=args.prompt_len + args.steps + 16,
                  eos_ids=[])
  rng = np.random.RandomState(0)
  reqs = lambda: [Request(i, rng.randint(0, cfg.vocab_size, args.prompt_len).tolist(),
                          max_new_tokens=args.steps, row_id=i) for i in range(args.batch)]
  engine.run(reqs())  # compile
  start = time.perf_counter()
  engine.run(reqs())
  wall = time.perf_counter() - start
  with jax.profiler.trace(args.out, create_perfetto_trace=True):
    engine.run(reqs())
  trace = max(Path(args.out).rglob("*.trace.json.gz"), key=lambda f: f.stat().st_mtime)
  events = json.loads(gzip.decompress(trace.read_bytes()))
  events = events["traceEvents"] if isinstance(events, dict) else events
  by_op = collections.Counter()
  count = collections.Counter()
  for e in events:
    if e.get("ph") == "X" and "dur" in e:
      by_op[e["name"]] += e["dur"]
      count[e["name"]] += 1
  step_us = wall / args.steps * 1e6
  print(f"{args.preset} batch {args.batch}: {wall / args.steps * 1e3:.1f} ms per step "
        f"(untraced run, prefill included); trace {trace}")
  for name, us in by_op.most_common(args.top):
    print(f"{us / args.steps / 1e3:9.2f} ms/step {100 * us / args.steps / step_us:6.1f}%  "
          f"x{count[name] / args.steps:6.1f}/step  {name[:90]}")


if __name__ == "__main__":
  main()
