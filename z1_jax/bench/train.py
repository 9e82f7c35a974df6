"""`z1 bench train`: one full training step (forward, backward, global-norm clipping, AdamW)
of z1-jax and of HF transformers (PyTorch) on the same random weights, fp32, on this machine.

Both compute the same thing: next-token cross-entropy over every position of `batch` rows of
`seq_len` random tokens. Achieved FLOP/s use the trainer's formula (`train.metrics`: 6N per
token plus the attention term) against the dense fp32 matmul rate measured here. The two
implementations run one after the other (not interleaved: a 0.5B model with Adam state needs
about 8 GB per implementation), each after a warm-up step; the machine's load average is
printed with the figures because the CPU may be shared.
"""

from __future__ import annotations

import gc
import os
import statistics
import tempfile
import time

import jax
import numpy as np
from flax import nnx

from z1_jax.checkpoint.hf import load_hf
from z1_jax.config import config_from_dict
from z1_jax.model.config import get_preset, to_hf_config
from z1_jax.model.sharding import make_mesh
from z1_jax.train.metrics import measured_matmul_flops, train_flops_per_token
from z1_jax.train.step import build_train_step


def _times(fn, repeats: int) -> list[float]:
  out = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    out.append(time.perf_counter() - start)
  return out


def _torch_step(model, tokens: np.ndarray, targets: np.ndarray, lr: float):
  import torch
  ids = torch.as_tensor(tokens, dtype=torch.long)
  tgt = torch.as_tensor(targets, dtype=torch.long).reshape(-1)
  opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8,
                          weight_decay=0.0)
  model.train()

  def step():
    logits = model(ids).logits
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), tgt)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.detach().item()

  def forward():
    with torch.no_grad():
      model(ids).logits.sum().item()

  return step, forward


def bench_train(preset: str = "qwen2.5-0.5b", batch: int = 1, seq_len: int = 512,
                repeats: int = 3, seed: int = 0) -> list[dict]:
  import torch
  import transformers
  cfg = get_preset(preset)
  load = os.getloadavg()[0]
  peak = measured_matmul_flops(2048, "float32", 1.0)
  flops = train_flops_per_token(cfg, seq_len) * batch * seq_len
  rng = np.random.RandomState(seed)
  tokens = rng.randint(0, cfg.vocab_size, (batch, seq_len)).astype(np.int32)
  targets = rng.randint(0, cfg.vocab_size, (batch, seq_len)).astype(np.int32)
  common = {"preset": preset, "batch": batch, "seq_len": seq_len, "dtype": "float32",
            "backend": jax.default_backend(), "torch_threads": torch.get_num_threads(),
            "repeats": repeats, "load_avg_1min": round(load, 2),
            "matmul_peak_gflops": peak / 1e9}
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    torch.manual_seed(seed)
    hf_cfg = transformers.Qwen2Config(**{k: v for k, v in to_hf_config(cfg, "float32").items()
                                        if k not in ("architectures", "model_type")})
    hf_model = transformers.Qwen2ForCausalLM(hf_cfg)
    hf_model.save_pretrained(tmp)
    step, forward = _torch_step(hf_model, tokens, targets, 1e-5)
    step()  # warm-up
    fwd = statistics.median(_times(forward, repeats))
    t = statistics.median(_times(step, repeats))
    rows.append({"impl": "hf-torch", **common, "step_s": t, "forward_s": fwd,
                 "backward_and_update_s": t - fwd, "tokens_per_s": batch * seq_len / t,
                 "achieved_gflops": flops / t / 1e9, "mfu_vs_matmul_peak": flops / t / peak})
    del hf_model, step, forward
    gc.collect()

    run = config_from_dict({"model": {"preset": preset}, "data": {"seq_len": seq_len},
                            "train": {"global_batch": batch, "peak_lr": 1e-5,
                                      "max_grad_norm": 1.0}}, "bench")
    mesh = make_mesh(1, 1, 1, devices=jax.devices()[:1])
    ts = build_train_step(run, mesh, cfg)
    model = load_hf(tmp, dtype="float32", mesh=mesh, rules=ts.rules)
    state = ts.init_state(nnx.to_pure_dict(nnx.state(model, nnx.Param)), seed)
    del model
  seg = np.ones_like(tokens)
  pos = np.broadcast_to(np.arange(seq_len, dtype=np.int32), tokens.shape).copy()
  jbatch = {k: jax.device_put(v, ts.batch_sharding) for k, v in dict(
      inputs=tokens, targets=targets, segment_ids=seg, positions=pos, loss_mask=seg).items()}
  holder = {"state": state}

  def z1_step():
    holder["state"], m = ts.step(holder["state"], jbatch)
    return float(m["loss"])

  def z1_forward():
    jax.block_until_ready(ts.eval(holder["state"]["params"], jbatch))

  z1_step()
  z1_forward()
  fwd = statistics.median(_times(z1_forward, repeats))
  t = statistics.median(_times(z1_step, repeats))
  rows.append({"impl": "z1-jax", **common, "step_s": t, "forward_s": fwd,
               "backward_and_update_s": t - fwd, "tokens_per_s": batch * seq_len / t,
               "achieved_gflops": flops / t / 1e9, "mfu_vs_matmul_peak": flops / t / peak})
  hf, z1 = rows
  rows.append({"impl": "ratio z1-jax/hf-torch", **common,
               "train_speedup": z1["tokens_per_s"] / hf["tokens_per_s"],
               "forward_speedup": hf["forward_s"] / z1["forward_s"]})
  return rows
