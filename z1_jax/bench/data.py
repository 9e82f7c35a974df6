"""`z1 bench data`: packing efficiency (best-fit vs next-fit) and tokenize+pack throughput."""

from __future__ import annotations

import time

import numpy as np


def z1_like_lengths(n: int, seed: int = 0) -> np.ndarray:
  """Token lengths shaped like Z1-Code-Reasoning-107K: lognormal, median ~1.5K, tail to 8K.

  (Median 1,500, sigma 0.75, clipped to [25, 8192]; plus a ~100-token prompt.)
  """
  rng = np.random.RandomState(seed)
  response = np.clip(rng.lognormal(np.log(1500), 0.75, n), 25, 8192 - 160).astype(np.int64)
  return response + rng.randint(60, 160, n)


def _next_fit(lengths: np.ndarray, seq_len: int) -> int:
  rows, free = 0, 0
  for n in lengths:
    if n > free:
      rows, free = rows + 1, seq_len
    free -= n
  return rows


def bench_data(n_examples: int = 107_000, seq_len: int = 8192, n_tokenize: int = 1000,
               seed: int = 0) -> list[dict]:
  """Packing efficiency (best-fit vs next-fit, same lengths) and tokenize+pack throughput
  (z1-jax's render + tokenize + pack vs the tokenizer's bare batch encode, same texts)."""
  from z1_jax.data.encode import EncodeConfig, encode_texts
  from z1_jax.data.pack import pack, pack_best_fit
  from z1_jax.data.sources import Example, read_examples, sample_dataset_path
  from z1_jax.data.tokenizer import load_tokenizer

  lengths = np.minimum(z1_like_lengths(n_examples, seed), seq_len)  # truncate, as training does
  start = time.perf_counter()
  rows = pack_best_fit(lengths, seq_len)
  pack_s = time.perf_counter() - start
  common = {"seq_len": seq_len, "examples": n_examples,
            "median_tokens": int(np.median(lengths)), "p99_tokens": int(np.percentile(lengths, 99))}
  eff = {"impl": "z1-jax best-fit", **common, "rows": len(rows),
         "packing_efficiency": float(lengths.sum() / (len(rows) * seq_len)), "pack_s": pack_s}
  nf_rows = _next_fit(lengths, seq_len)
  ref = {"impl": "next-fit (reference)", **common, "rows": nf_rows,
         "packing_efficiency": float(lengths.sum() / (nf_rows * seq_len))}

  # Throughput on real text: sample trajectories stitched to Z1-like lengths (~3.5 chars/token).
  tokenizer = load_tokenizer()
  pieces = [e.response for e in read_examples(sample_dataset_path())]
  rng = np.random.RandomState(seed)
  texts = []
  for n in z1_like_lengths(n_tokenize, seed + 1):
    chars, parts = int(n * 3.5), []
    while sum(map(len, parts)) < chars:
      parts.append(pieces[rng.randint(len(pieces))])
    texts.append("\n\n".join(parts)[:chars])
  examples = [Example("bench", i, f"Problem {i}: solve it.", t) for i, t in enumerate(texts)]
  start = time.perf_counter()
  encoded = encode_texts(tokenizer, examples, EncodeConfig("bench"), progress=False)
  packed = pack(encoded, seq_len, tokenizer.pad_token_id)
  z1_s = time.perf_counter() - start
  start = time.perf_counter()
  tokenizer(texts, add_special_tokens=False)
  raw_s = time.perf_counter() - start
  tokens = int(encoded.lengths.sum())
  thr = {"impl": "z1-jax render+tokenize+pack", "examples": n_tokenize, "tokens": tokens,
         "tokens_per_s": tokens / z1_s, "packing_efficiency": packed.efficiency}
  raw = {"impl": "tokenizer batch encode (reference)", "examples": n_tokenize, "tokens": tokens,
         "tokens_per_s": tokens / raw_s}
  ratio = {"impl": "ratio", "efficiency_gain_vs_next_fit":
           eff["packing_efficiency"] / ref["packing_efficiency"],
           "throughput_vs_bare_tokenizer": thr["tokens_per_s"] / raw["tokens_per_s"]}
  return [eff, ref, thr, raw, ratio]
