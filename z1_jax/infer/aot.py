"""Ahead-of-time compilation of the engine's programs (admission prefill and a decode chunk) for a mesh
of any devices, including compile-only TPU devices on a host without chips
(`jax.experimental.topologies`): the weights, cache and batch are described by shapes and
shardings only, so a 7B model compiles for a TPU slice with nothing allocated.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding

from z1_jax.infer import window
from z1_jax.infer.engine import DecodeState, _rows_init, admit, decode_chunk
from z1_jax.model.config import Qwen2Config
from z1_jax.model.qwen2 import KVCache, abstract_model, init_cache, state_shardings
from z1_jax.model.serving import padded_config
from z1_jax.model.sharding import serving_rules


def compile_decode(cfg: Qwen2Config, mesh: jax.sharding.Mesh, batch: int, prompt_width: int,
                   gen_width: int, trigger_len: int = 12, prefill: bool = True,
                   chunk_steps: int = 16, kind: str = "greedy") -> dict[str, dict]:
  """Compiles the engine's programs with the serving rules on `mesh`: admission of `batch`
  prompts of `prompt_width` tokens (`prefill`; optional) and one decode chunk, over a cache of
  `batch` slots x `prompt_width + gen_width` positions. `kind`: the sampling variant
  (`sampling.VARIANTS`; "filter" sorts the whole vocabulary, gathering the logits).

  Returns, per program: compile seconds and the compiler's memory figures (bytes per device).
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
  cache_len = prompt_width + gen_width
  cache = jax.eval_shape(lambda: init_cache(cfg, batch, cache_len, rules))
  cache = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), cache,
                       _cache_shardings(cfg, batch, cache_len, rules))
  rows = NamedSharding(mesh, rules.spec(("batch",), (batch,)))
  row_state = jax.tree.map(lambda x: jax.ShapeDtypeStruct((batch,), x.dtype, sharding=rows),
                           _rows_init(1))
  state = DecodeState(cache, row_state)
  sds = lambda shape, sharding=None: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=sharding)
  programs = [("decode_loop", decode_chunk.trace(graphdef, params, state, markers=markers,
                                                  steps=chunk_steps, kind=kind))]
  if prefill:
    grid = NamedSharding(mesh, rules.spec(("batch", None), (batch, prompt_width)))
    programs.insert(0, ("prefill", admit.trace(graphdef, params, state,
                                               sds((batch, prompt_width), grid),
                                               sds((batch,), rows), sds((batch,), rows),
                                               row_state)))
  out = {}
  for name, program in programs:
    start = time.perf_counter()
    compiled = program.lower().compile()
    mem = compiled.memory_analysis()
    out[name] = {"compile_s": time.perf_counter() - start,
                 "argument_bytes": mem.argument_size_in_bytes,
                 "temp_bytes": mem.temp_size_in_bytes,
                 "output_bytes": mem.output_size_in_bytes,
                 "alias_bytes": mem.alias_size_in_bytes,
                 "hlo": compiled.as_text()}
  return out


def _cache_shardings(cfg, batch, cache_len, rules):
  """The shardings `init_cache` gives its arrays (as a tree like the cache)."""
  kv = rules.sharding(("batch", "act_kv_heads", "cache_seq", "head_dim"),
                      (batch, cfg.num_kv_heads, cache_len, cfg.dim_per_head))
  slots = rules.sharding(("batch", "cache_seq"), (batch, cache_len))
  layers = tuple(kv for _ in range(cfg.num_layers))
  return KVCache(layers, layers, slots, slots)
