"""`z1 bench forward`: prefill tokens/s and one single-token decode step with a KV cache, for
z1-jax and for HF transformers (PyTorch) on the same random weights, fp32, on this machine.
Prefill is measured as inference uses it: the prompt fills a fresh KV cache and only the last
position's logits are computed (`logits_to_keep=1` on the PyTorch side).
"""

from __future__ import annotations

import statistics
import tempfile

import jax
import numpy as np

from z1_jax.bench.common import median_time
from z1_jax.checkpoint.hf import load_hf
from z1_jax.model.config import get_preset, to_hf_config


def _z1_steps(model, tokens: np.ndarray, max_len: int):
  """(prefill, decode) callables for z1-jax, timing the engine's own programs on its paged
  cache: the prompts prefilled into their pages in one chunk (`programs.prefill`) and one
  decode step (`programs.decode_chunk`, 1 step) of every row."""
  from z1_jax.infer.engine import Engine
  from z1_jax.infer import window
  from z1_jax.infer.engine import programs
  b, l = tokens.shape
  width = 1 << (l - 1).bit_length()
  engine = Engine(model, slots=b, max_seq_len=max_len, eos_ids=[], trigger_ids=[1],
                  prefill_tokens=max(b * width, 16 * b), max_total_tokens=b * max_len)
  per_row = -(-max_len // engine.page_size)
  table = np.zeros((b, engine.table_width), np.int32)
  table[:, :per_row] = 1 + np.arange(b * per_row).reshape(b, per_row)  # every row its pages
  padded = np.zeros((b, width), np.int32)
  padded[:, :l] = tokens
  positions = np.tile(np.arange(width, dtype=np.int32), (b, 1))
  valid = positions < l
  rows = {f: v.copy() for f, v in programs.rows_init(b)._asdict().items()}
  rows.update(done=np.zeros(b, bool), last=tokens[:, -1], feed=np.full(b, l, np.int32),
              start=np.full(b, l + 1, np.int32), stop=np.full(b, max_len - l - 1, np.int32))
  steps = [0]

  def run_prefill():
    engine._state = programs.prefill(engine.graphdef, engine.params, engine._state, padded,
                                     positions, table, np.full(b, width, np.int32), valid,
                                     padded, logprobs=False)
    engine._state = programs.install_rows(engine._state, np.arange(b, dtype=np.int32),
                                          window.Rows(**rows))
    steps[0] = 0
    jax.block_until_ready(engine._state)

  run_prefill()  # compile

  def one_step():
    if steps[0] == max_len - l - 2:  # rows full: prefill again (keeps the work per step equal)
      run_prefill()
    engine._state, out = programs.decode_chunk(
        engine.graphdef, engine.params, engine._state, table, np.bool_(False),
        markers=engine.markers, steps=1, kind="greedy", logprobs=False)
    out["tokens"].block_until_ready()
    steps[0] += 1

  one_step()  # compile
  return run_prefill, one_step


def _torch_steps(model, tokens: np.ndarray):
  import torch
  ids = torch.as_tensor(tokens, dtype=torch.long)

  def run_prefill():
    with torch.inference_mode():
      return model(ids, use_cache=True, logits_to_keep=1)

  out = run_prefill()
  import inspect  # transformers 5 renamed `past_key_values` to `cache` (argument and output)
  key = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
  cache, token = out[key], out.logits[:, -1].argmax(-1, keepdim=True)

  def one_step():
    with torch.inference_mode():
      model(token, use_cache=True, **{key: cache})

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
      times[name]["prefill"].append(median_time(run_prefill, 1))
      times[name]["decode"].append(median_time(one_step, 4))
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
