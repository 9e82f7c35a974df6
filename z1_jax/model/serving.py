"""The serving layout of attention when the query heads do not divide over `tensor`.

7B has 28 query heads in 4 KV groups of 7; on `tensor = 8` neither divides. Splitting
`head_dim` instead would work, but then every layer sums the scores `[B, K, G, S]` over
`tensor` on every token: communication that grows with the context. This module pads the heads
instead, so each shard holds whole heads and attention needs no communication at all:

- every KV head is repeated `r = lcm(K, tensor) / K` times (`K' = K r` KV heads, divisible by
  `tensor`; copy `s` of KV head `kv` is head `kv r + s`);
- the `G` query heads of a group are spread over its `r` copies, `G' = ceil(G / r)` each
  (`H' = K' G'` query heads); the slots left over are zero query heads with zero rows in the
  output projection, so they add exactly nothing: the padded model computes the same function.

7B on tensor=8: r = 2, 8 KV heads, 4 query heads per KV head (7 real + 1 zero per pair), 32
query heads, one KV head and 4 query heads per chip. The costs: the KV cache holds each KV
head twice (per chip: one 128-wide head per token instead of 4 x 16 with `head_dim` split, 2x),
and 4/28 more attention FLOPs; the weights gain 1/7 in q/o projections. The per-token
collectives that remain are the ones tensor parallelism always has (the o- and down-projection
all-reduces of `[B, E]`), independent of the context length (`tests/test_serving_layout.py`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from z1_jax.model.config import Qwen2Config


def needs_padding(cfg: Qwen2Config, tensor: int) -> bool:
  """Query heads that do not divide over `tensor`, or KV heads that do not: the paged KV cache
  holds whole KV heads on every shard (`model/paged.py`), so fewer KV heads than shards are
  repeated (0.5B's 2 KV heads on tensor=4: each twice), never replicated."""
  return cfg.num_heads % tensor != 0 or cfg.num_kv_heads % tensor != 0


def padded_config(cfg: Qwen2Config, tensor: int) -> Qwen2Config:
  """The config of the padded model (the same function, heads divisible by `tensor`)."""
  if not needs_padding(cfg, tensor):
    return cfg
  k, g = cfg.num_kv_heads, cfg.num_heads // cfg.num_kv_heads
  r = math.lcm(k, tensor) // k
  return cfg.replace(num_heads=k * r * -(-g // r), num_kv_heads=k * r,
                     head_dim=cfg.dim_per_head)


def _query_source(cfg: Qwen2Config, tensor: int) -> np.ndarray:
  """For each padded query head, the original head it copies, or -1 for a zero head."""
  k, g = cfg.num_kv_heads, cfg.num_heads // cfg.num_kv_heads
  padded = padded_config(cfg, tensor)  # the one place r and G' are derived
  r, g2 = padded.num_kv_heads // k, padded.num_heads // padded.num_kv_heads
  src = np.full(padded.num_heads, -1)
  for kv in range(k):
    for j in range(g):
      src[(kv * r + j // g2) * g2 + j % g2] = kv * g + j
  return src


def pad_heads(model, rules):
  """`model` (any layout) as the padded model laid out with `rules` (the serving rules on the
  mesh whose `tensor` size sets the padding). Runs on the devices: with out_shardings, each
  device builds only its own shards, on one host or many."""
  from z1_jax.model.qwen2 import abstract_model, state_shardings
  cfg, tensor = model.cfg, rules.mesh.shape["tensor"]
  if not needs_padding(cfg, tensor):
    return model
  new_cfg = padded_config(cfg, tensor)
  r = new_cfg.num_kv_heads // cfg.num_kv_heads
  src = _query_source(cfg, tensor)
  take, real = np.maximum(src, 0), src >= 0
  graphdef, abstract = nnx.split(abstract_model(new_cfg, rules))
  out_shardings = nnx.to_pure_dict(state_shardings(abstract, rules))
  params = nnx.to_pure_dict(nnx.state(model))

  def pad_layer(a):
    def queries(x, axis):  # copy the real heads, zero the padding
      x = jnp.take(x, take, axis=axis)
      shape = [1] * x.ndim
      shape[axis] = -1
      return jnp.where(jnp.asarray(real).reshape(shape), x, jnp.zeros((), x.dtype))
    kv = lambda x, axis: jnp.repeat(x, r, axis=axis)
    return {**a, "q_proj": queries(a["q_proj"], 1), "q_bias": queries(a["q_bias"], 0),
            "o_proj": queries(a["o_proj"], 0), "k_proj": kv(a["k_proj"], 1),
            "v_proj": kv(a["v_proj"], 1), "k_bias": kv(a["k_bias"], 0),
            "v_bias": kv(a["v_bias"], 0)}

  def transform(p):
    layers = {i: {**layer, "attn": pad_layer(layer["attn"])} for i, layer in p["layers"].items()}
    return {**p, "layers": layers}

  if cfg.scan_layers:
    raise ValueError("pad_heads expects unrolled layers (decoding unrolls them when loading)")
  padded = jax.jit(transform, out_shardings=out_shardings)(params)
  nnx.replace_by_pure_dict(abstract, padded)
  return nnx.merge(graphdef, abstract)
