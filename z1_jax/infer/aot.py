"""Ahead-of-time compilation of the engine's programs (a prefill chunk and a decode chunk over
the paged KV cache) for a mesh of any devices, including compile-only TPU devices on a host
without chips (`jax.experimental.topologies`): the weights, pools and rows are described by
shapes and shardings only, so a 7B model compiles for a TPU slice with nothing allocated. On
TPU the decode and prefill attention is the Pallas ragged paged attention kernel.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding

from z1_jax.infer import window
from z1_jax.infer.engine import programs
from z1_jax.infer.engine.scheduler import pages_for
from z1_jax.model.config import Qwen2Config
from z1_jax.model.paged import specs
from z1_jax.model.qwen2 import abstract_model, state_shardings
from z1_jax.model.serving import padded_config
from z1_jax.topology import compile_only
from z1_jax.model.sharding import serving_rules


def compile_decode(cfg: Qwen2Config, mesh: jax.sharding.Mesh, batch: int, pool_tokens: int,
                   max_seq_len: int, page_size: int = 128, prefill_tokens: int | None = None,
                   trigger_len: int = 12, chunk_steps: int = 16,
                   kind: str = "greedy") -> dict[str, dict]:
  """Compiles the engine's programs with the serving rules on `mesh`: one decode chunk of
  `batch` rows over a pool of `pool_tokens` tokens (split over the batch's shards) in pages of
  `page_size`, page tables for `max_seq_len`, and with `prefill_tokens` a prefill chunk of that
  many tokens (`[shards, prefill_tokens / shards]`). `kind`: the sampling variant.

  Returns, per program: compile seconds, the compiler's memory figures (bytes per device), its
  cost analysis' `bytes accessed` (the Pallas kernel's own reads are opaque to it) and the HLO.
  """
  cfg = padded_config(cfg, mesh.shape["tensor"])  # the layout `load_for_decoding` serves
  rules = serving_rules(mesh, cfg.num_heads)
  graphdef, abstract = nnx.split(abstract_model(cfg, rules))
  shardings = state_shardings(abstract, rules)
  params = jax.tree.map(
      lambda v, s: v.replace(jax.ShapeDtypeStruct(v.get_value().shape, v.get_value().dtype,
                                                  sharding=s.get_value())),
      abstract, shardings, is_leaf=lambda x: isinstance(x, nnx.Variable))
  markers = window.Markers((151645, 151643), tuple(range(1, trigger_len + 1)), (1, 2), (3,))
  pool_spec, row_axes, _ = specs(rules, cfg.num_kv_heads)
  shards = 1
  for a in (row_axes if isinstance(row_axes, tuple) else (row_axes,) if row_axes else ()):
    shards *= mesh.shape[a]
  pages = shards * (pages_for(-(-pool_tokens // shards), page_size) + 1)
  pool = jax.ShapeDtypeStruct((pages, page_size, 2 * cfg.num_kv_heads, cfg.dim_per_head),
                              jnp.dtype(cfg.dtype), sharding=NamedSharding(mesh, pool_spec))
  rows_sharding = NamedSharding(mesh, rules.spec(("batch",), (batch,)))
  rows = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct((batch, *x.shape[1:]), x.dtype,
                                     sharding=rows_sharding if x.ndim == 1 else None),
      programs.rows_init(1))
  state = programs.DecodeState(tuple(pool for _ in range(cfg.num_layers)), rows)
  width = pages_for(max_seq_len + (prefill_tokens or 0), page_size)
  i32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.int32)
  programs_ = [("decode_loop", programs.decode_chunk.trace(
      graphdef, params, state, i32(batch, width), jax.ShapeDtypeStruct((), jnp.bool_),
      markers=markers, steps=chunk_steps, kind=kind, logprobs=False))]
  if prefill_tokens:
    r, w = shards, prefill_tokens // shards
    programs_.insert(0, ("prefill", programs.prefill.trace(
        graphdef, params, state, i32(r, w), i32(r, w), i32(r, width), i32(r),
        jax.ShapeDtypeStruct((r, w), jnp.bool_), i32(r, w), logprobs=False)))
  out = {}
  for name, program in programs_:
    start = time.perf_counter()
    compiled = compile_only(program.lower())
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis() or {}
    if isinstance(cost, list):
      cost = cost[0] if cost else {}
    out[name] = {"compile_s": time.perf_counter() - start,
                 "argument_bytes": mem.argument_size_in_bytes,
                 "temp_bytes": mem.temp_size_in_bytes,
                 "output_bytes": mem.output_size_in_bytes,
                 "alias_bytes": mem.alias_size_in_bytes,
                 "cost_bytes_accessed": float(cost.get("bytes accessed", 0.0)),
                 "pool_pages": pages, "hlo": compiled.as_text()}
  return out
