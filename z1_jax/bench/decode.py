"""`z1 bench decode`: tokens/s of `z1_jax.generate` (the compiled decode loop) against HF
transformers PyTorch `generate` (greedy) on the same random weights, fp32, on this machine.

Decoding one token reads every weight once, so batch-1 speed is bound by memory bandwidth:
the bound is (bytes read per token) / (read bandwidth measured here, in the same run). The
decode rate excludes prefill and compile: it is the slope between a run of `gen_len` tokens
and a run of one token. The budget sweep's benchmark is `z1 bench sweep`; `--mix` measures
padding waste and the engine's occupancy on a Z1-like length mix (`bench_padding`).
"""

from __future__ import annotations

import heapq
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from z1_jax.bench.common import median_time
from z1_jax.checkpoint.hf import load_hf
from z1_jax.infer.generate import generate
from z1_jax.model.config import get_preset, to_hf_config


def read_bandwidth(gib: float = 1.0, repeats: int = 5) -> float:
  """Bytes/s of a compiled sum over a `gib` GiB fp32 array (streams it from memory once)."""
  x = jnp.ones((int(gib * 2**30) // 4,), jnp.float32)
  total = jax.jit(jnp.sum)
  total(x).block_until_ready()
  seconds = median_time(lambda: total(x).block_until_ready(), repeats)
  return x.nbytes / seconds


def weight_bytes_per_token(model) -> int:
  """Parameter bytes one decode step reads: all of them, except that an untied embedding
  table is only looked up (one row per token), not read whole."""
  from flax import nnx
  params = nnx.state(model, nnx.Param)
  total = sum(x.nbytes for x in jax.tree.leaves(params))
  if not model.cfg.tie_word_embeddings:
    total -= model.embed[...].nbytes
  return total


def _timed(fn):
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def bench_decode(preset: str = "qwen2.5-0.5b", batch: int = 1, prompt_len: int = 128,
                 gen_len: int = 64, repeats: int = 3, seed: int = 0) -> list[dict]:
  import torch
  import transformers
  cfg = get_preset(preset)
  torch.manual_seed(seed)
  hf_cfg = transformers.Qwen2Config(**{k: v for k, v in to_hf_config(cfg, "float32").items()
                                      if k not in ("architectures", "model_type")})
  hf_model = transformers.Qwen2ForCausalLM(hf_cfg).eval()
  prompts = np.random.RandomState(seed).randint(0, cfg.vocab_size, (batch, prompt_len))
  with tempfile.TemporaryDirectory() as tmp:
    hf_model.save_pretrained(tmp)
    model = load_hf(tmp, dtype="float32")
  ids = prompts.tolist()

  def z1(n):
    return lambda: generate(model, ids, max_new_tokens=n, eos_ids=[])

  def hf(n):
    def run():
      with torch.inference_mode():
        hf_model.generate(torch.as_tensor(prompts), max_new_tokens=n, min_new_tokens=n,
                          do_sample=False, pad_token_id=0, eos_token_id=None)
    return run

  first = _timed(z1(gen_len))  # compiles prefill and loop
  one_first = _timed(z1(1))  # one token shares the compiled shapes if gen_len <= 16
  times = {"z1": [], "z1_one": [], "hf": []}
  for _ in range(repeats):  # alternating rounds: this machine is shared and noisy
    times["z1"].append(_timed(z1(gen_len)))
    times["z1_one"].append(_timed(z1(1)))
    times["hf"].append(_timed(hf(gen_len)))
  z1_s, one_s, hf_s = (statistics.median(times[k]) for k in ("z1", "z1_one", "hf"))
  decode_step_s = (z1_s - one_s) / (gen_len - 1)
  bandwidth = read_bandwidth()
  per_token = weight_bytes_per_token(model)
  bound = bandwidth / per_token  # steps/s; each step makes `batch` tokens
  common = {"preset": preset, "batch": batch, "prompt_len": prompt_len, "gen_len": gen_len,
            "dtype": "float32", "backend": jax.default_backend(),
            "torch_threads": torch.get_num_threads(), "rounds": repeats}
  rows = [
      {"impl": "z1-jax", **common, "tokens_per_s": batch * gen_len / z1_s,
       "decode_tokens_per_s": batch / decode_step_s, "decode_step_ms": decode_step_s * 1e3,
       "compile_s": first - z1_s + max(one_first - one_s, 0.0)},
      {"impl": "hf-torch", **common, "tokens_per_s": batch * gen_len / hf_s},
      {"impl": "ratio z1-jax/hf-torch", **common, "speedup": hf_s / z1_s},
      {"impl": "memory-bandwidth bound", **common, "read_gb_per_s": bandwidth / 1e9,
       "weight_gb_per_step": per_token / 1e9, "bound_steps_per_s": bound,
       "z1_fraction_of_bound": (1 / decode_step_s) / bound},
  ]
  return rows


def bench_padding(preset: str = "tiny", slots: int = 8, requests: int = 64, lo: int = 12,
                  hi: int = 768, prompt_len: int = 16, repeats: int = 3, seed: int = 0) -> list:
  """No padding waste: `requests` requests whose lengths spread log-uniformly over [lo, hi]
  (like Z1's traces) through `slots` engine slots, against the same requests all at `hi`;
  at `max_seq_len` the mix's bucket and 16,384 (a step's cost must not follow the longest
  admissible request). Useful tokens/s counts only tokens a request asked for; a static batch
  would run every row to its batch's longest. Occupancy: generated tokens / (slots x decode
  steps), the share of slot-steps that made a requested token (target >= 0.9), beside the
  occupancy of an ideal first-come-first-served batcher on the same lengths (the tail of a
  mix, where the last long rows run with slots idle, bounds both). Random weights never end
  early, so lengths are exact."""
  from z1_jax.infer.engine import Engine, Request, bucket
  from z1_jax.model.qwen2 import create_model
  cfg = get_preset(preset)
  model = create_model(cfg, seed=seed)
  rng = np.random.RandomState(seed)
  prompts = rng.randint(0, cfg.vocab_size, (requests, prompt_len)).tolist()
  lengths = np.exp(rng.uniform(np.log(lo), np.log(hi), requests)).round().astype(int).tolist()
  # a static batch of `slots` rows in arrival order runs each batch to its longest row
  static_steps = sum(max(lengths[i:i + slots]) for i in range(0, requests, slots))
  # an ideal first-come-first-served continuous batcher (a freed slot takes the next request
  # at once, no step lost): what the workload allows in arrival order
  free_at = [0] * slots
  for n in lengths:
    heapq.heappush(free_at, heapq.heappop(free_at) + n)
  ideal_steps = max(free_at)
  out = []
  for max_seq_len in (bucket(prompt_len + hi), 16384):
    engine = Engine(model, slots=slots, max_seq_len=max_seq_len, eos_ids=[],
                    max_total_tokens=max(slots * bucket(prompt_len + hi), 16384))
    engine.warmup()

    def run(lens):
      reqs = [Request(i, p, max_new_tokens=n, row_id=i) for i, (p, n) in
              enumerate(zip(prompts, lens))]
      steps = engine.stats()["decode_steps"]
      start = time.perf_counter()
      gens = engine.run(reqs)
      seconds = time.perf_counter() - start
      assert [len(g.tokens) for g in gens] == list(lens)
      return seconds, engine.stats()["decode_steps"] - steps

    rounds = [(run(lengths), run([hi] * requests)) for _ in range(repeats)]  # alternating
    mixed_s, full_s = (statistics.median(r[i][0] for r in rounds) for i in (0, 1))
    mixed, full = sum(lengths) / mixed_s, requests * hi / full_s
    steps = rounds[0][0][1]
    out.append({"impl": "z1-jax engine", "preset": preset, "slots": slots,
                "requests": requests, "lengths": f"log-uniform {lo}..{hi}",
                "max_seq_len": max_seq_len, "useful_tokens": sum(lengths),
                "mixed_s": mixed_s, "mixed_useful_tokens_per_s": mixed, "all_longest_s": full_s,
                "all_longest_tokens_per_s": full, "mixed_over_all_longest": mixed / full,
                "decode_steps": steps, "occupancy": sum(lengths) / (slots * steps),
                "occupancy_target": 0.9, "ideal_fifo_steps": ideal_steps,
                "ideal_fifo_occupancy": sum(lengths) / (slots * ideal_steps),
                "static_batch_useful_fraction": sum(lengths) / (static_steps * slots),
                "backend": jax.default_backend(), "rounds": repeats})
  return out
