"""Shared by the trainer tests and their subprocess worker: a small arithmetic SFT dataset and
the tiny run config over it (real Qwen tokenizer and vocabulary, 48-token rows)."""

import json
import random
from pathlib import Path

ROOT = Path(__file__).parent.parent
TINY = ROOT / "configs" / "tiny.toml"


def write_arith(path: Path, n: int = 32, seed: int = 0) -> Path:
  """`n` short examples (~40 tokens each: one per 48-token row)."""
  rng = random.Random(seed)
  with open(path, "w") as f:
    for _ in range(n):
      a, b = rng.randint(10, 99), rng.randint(10, 99)
      f.write(json.dumps({"question": f"Compute {a} + {b}.",
                          "response": f"<think>\n{a} + {b} = {a + b}\n</think>\n\n{a + b}"}) + "\n")
  return path


def arith_overrides(data: Path, **extra) -> list[str]:
  base = {"data.dataset": json.dumps(str(data)), "data.system_prompt": '""', "data.seq_len": 48,
          "train.global_batch": 8, "train.epochs": 1, "train.peak_lr": 3e-3,
          "train.warmup_steps": 1, "checkpoint.every_steps": 2, "checkpoint.keep": 5}
  base.update(extra)
  return [f"{k}={v}" for k, v in base.items()]


def losses(run_dir: Path) -> list[float]:
  rows = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
  return [r["loss"] for r in rows if "loss" in r]
