"""Speed benchmarks that print the z1-jax figure and its reference measured in the same run.

`z1 bench forward`: prefill tokens/s and one single-token decode step with a KV cache, for
z1-jax and for HF transformers (PyTorch) on the same random weights, fp32, on this machine.
Prefill is measured as inference uses it: the prompt fills a fresh KV cache and only the last
position's logits are computed (`logits_to_keep=1` on the PyTorch side).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from z1_jax.checkpoint.hf import load_hf
from z1_jax.infer.decode import decode_step, prefill
from z1_jax.model.config import get_preset, to_hf_config
from z1_jax.model.qwen2 import init_cache


def _median_time(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _z1_steps(model, tokens: np.ndarray, max_len: int):
  """(prefill, decode) callables for z1-jax; decode advances one slot per call."""
  graphdef, state = nnx.split(model)
  b, l = tokens.shape
  seg = np.ones_like(tokens)
  pos = np.broadcast_to(np.arange(l, dtype=np.int32), (b, l)).copy()

  def run_prefill():
    logits, cache = prefill(graphdef, state, tokens, seg, pos, init_cache(model.cfg, b, max_len))
    logits.block_until_ready()
    return logits, cache

  logits, cache = run_prefill()  # compile
  token = jnp.argmax(logits, -1).astype(jnp.int32)
  slot = [l]

  def one_step():
    nonlocal cache
    if slot[0] == max_len:  # wrap around: overwriting old slots keeps the work per step equal
      slot[0] = l
    logits, cache = decode_step(graphdef, state, token, jnp.full((b,), slot[0], jnp.int32),
                                cache, slot[0])
    logits.block_until_ready()
    slot[0] += 1

  one_step()  # compile
  return run_prefill, one_step


def _torch_steps(model, tokens: np.ndarray):
  import torch
  ids = torch.as_tensor(tokens, dtype=torch.long)

  def run_prefill():
    with torch.inference_mode():
      return model(ids, use_cache=True, logits_to_keep=1)

  out = run_prefill()
  cache, token = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)

  def one_step():
    with torch.inference_mode():
      model(token, past_key_values=cache, use_cache=True)

  one_step()
  return run_prefill, one_step


def bench_forward(preset: str = "qwen2.5-0.5b", batch: int = 1, seq_len: int = 512,
                  repeats: int = 5, seed: int = 0) -> list[dict]:
  """Returns one row per implementation (`impl`: z1-jax, hf-torch) plus the speed ratios.

  This machine is shared and noisy, so the two implementations are measured in alternating
  rounds (`repeats` rounds, each: prefill once and 4 decode steps per implementation) and the
  medians are compared.
  """
  import torch
  import transformers
  cfg = get_preset(preset)
  torch.manual_seed(seed)
  hf_cfg = transformers.Qwen2Config(**{k: v for k, v in to_hf_config(cfg, "float32").items()
                                      if k not in ("architectures", "model_type")})
  hf_model = transformers.Qwen2ForCausalLM(hf_cfg).eval()
  tokens = np.random.RandomState(seed).randint(0, cfg.vocab_size, (batch, seq_len)).astype(
      np.int32)
  with tempfile.TemporaryDirectory() as tmp:
    hf_model.save_pretrained(tmp)
    model = load_hf(tmp, dtype="float32")
  impls = {"z1-jax": _z1_steps(model, tokens, seq_len + 32),
           "hf-torch": _torch_steps(hf_model, tokens)}
  times = {name: {"prefill": [], "decode": []} for name in impls}
  for _ in range(repeats):
    for name, (run_prefill, one_step) in impls.items():
      times[name]["prefill"].append(_median_time(run_prefill, 1))
      times[name]["decode"].append(_median_time(one_step, 4))
  common = {"preset": preset, "batch": batch, "seq_len": seq_len, "dtype": "float32",
            "backend": jax.default_backend(), "torch_threads": torch.get_num_threads(),
            "rounds": repeats}
  rows = [{"impl": name, **common,
           "prefill_tokens_per_s": batch * seq_len / statistics.median(t["prefill"]),
           "decode_step_ms": statistics.median(t["decode"]) * 1e3}
          for name, t in times.items()]
  z1, hf = rows
  rows.append({"impl": "ratio z1-jax/hf-torch", **common,
               "prefill_speedup": z1["prefill_tokens_per_s"] / hf["prefill_tokens_per_s"],
               "decode_speedup": hf["decode_step_ms"] / z1["decode_step_ms"]})
  return rows


def print_rows(rows: list[dict], as_json: bool) -> None:
  for row in rows:
    if as_json:
      print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}))
    else:
      print("  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in row.items()))


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

  lengths = z1_like_lengths(n_examples, seed)
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


def bench_score(workers: int | None = None) -> list[dict]:
  """Sandboxed scoring of the 164 HumanEval canonical solutions, against running the same
  (trusted) programs as plain subprocesses without isolation, same worker count."""
  import concurrent.futures as cf
  import os
  import subprocess

  from z1_jax.eval.benchmarks import load_benchmark
  from z1_jax.eval.sandbox import Limits, _default_python
  from z1_jax.eval.score import Scorer

  problems = load_benchmark("humaneval")
  workers = workers or os.cpu_count() or 1
  samples = [{"task_id": p.id, "completion": p.tests["canonical_solution"]} for p in problems]
  scorer = Scorer(problems, Limits(), workers=workers)
  start = time.perf_counter()
  _, summary = scorer.score(samples, progress=False)
  sandboxed_s = time.perf_counter() - start
  scorer.close()

  def plain(p):
    program = (p.tests["prompt"] + p.tests["canonical_solution"] + "\n" + p.tests["test"] +
               f"\ncheck({p.tests['entry_point']})\n")
    return subprocess.run([_default_python(), "-c", program], capture_output=True).returncode

  start = time.perf_counter()
  with cf.ThreadPoolExecutor(workers) as pool:
    codes = list(pool.map(plain, problems))
  plain_s = time.perf_counter() - start
  return [{"impl": "z1-jax sandboxed (bwrap + limits)", "samples": len(samples),
           "passed": summary["passed"], "workers": workers, "seconds": sandboxed_s},
          {"impl": "plain subprocess, no isolation (reference)", "samples": len(samples),
           "passed": codes.count(0), "workers": workers, "seconds": plain_s},
          {"impl": "ratio", "sandbox_overhead": sandboxed_s / plain_s}]
