"""Shared by the trainer tests and their subprocess workers: a small arithmetic SFT dataset, a
small tokenizer for it, and the tiny run config over both.

The tokenizer is the demo's 384-token byte-level BPE (`z1_jax.demo.tokenizer`) trained on the
rows, with the model preset `z1-demo` (vocabulary 384): a trainer test then spends its time on
the loop it tests, not on Qwen's 152k-row LM head (most of a `tiny` step). Tests about Qwen's
vocabulary pass `qwen=True`.
"""

import json
import random
from pathlib import Path

ROOT = Path(__file__).parent.parent
TINY = ROOT / "configs" / "tiny.toml"


def tokenizer_dir(data: Path) -> Path:
  return data.with_name(data.name + ".tokenizer")


def train_small_tokenizer(texts: list[str], out: Path) -> Path:
  from z1_jax.demo.tokenizer import save_tokenizer, train_tokenizer
  return save_tokenizer(train_tokenizer(texts, vocab_size=384), out)


def write_arith(path: Path, n: int = 32, seed: int = 0) -> Path:
  """`n` short examples (one per 48-token row) and, beside them, the small tokenizer trained on
  them (`tokenizer_dir(path)`, kept when it exists: a rewritten file keeps its tokenizer)."""
  from z1_jax.data.format import render_prompt, render_target
  rng = random.Random(seed)
  rows = []
  for _ in range(n):
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    rows.append({"question": f"Compute {a} + {b}.",
                 "response": f"<think>\n{a} + {b} = {a + b}\n</think>\n\n{a + b}"})
  with open(path, "w") as f:
    for row in rows:
      f.write(json.dumps(row) + "\n")
  if not tokenizer_dir(path).exists():
    train_small_tokenizer([render_prompt(r["question"], "") + render_target(r["response"])
                           for r in rows], tokenizer_dir(path))
  return path


def arith_overrides(data: Path, qwen: bool = False, **extra) -> list[str]:
  base = {"data.dataset": json.dumps(str(data)), "data.system_prompt": '""', "data.seq_len": 48,
          "train.global_batch": 8, "train.epochs": 1, "train.peak_lr": 3e-3,
          "train.warmup_steps": 1, "checkpoint.every_steps": 2, "checkpoint.keep": 5}
  if not qwen:
    base.update({"data.tokenizer": json.dumps(str(tokenizer_dir(data))),
                 "model.preset": '"z1-demo"'})
  base.update(extra)
  return [f"{k}={v}" for k, v in base.items()]


def losses(run_dir: Path) -> list[float]:
  rows = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
  return [r["loss"] for r in rows if "loss" in r]
