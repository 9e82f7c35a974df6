"""Ahead-of-time compilation of the decode programs (prefill and the decode loop) for a mesh
of any devices, including compile-only TPU devices on a host without chips
(`jax.experimental.topologies`): the weights, cache and batch are described by shapes and
shardings only, so a 7B model compiles for a TPU slice with nothing allocated.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from z1_jax.infer import loop
from z1_jax.infer.sampling import Sampling
from z1_jax.model.config import Qwen2Config
from z1_jax.model.qwen2 import abstract_model, state_shardings
from z1_jax.model.sharding import serving_rules


def compile_decode(cfg: Qwen2Config, mesh: jax.sharding.Mesh, batch: int, prompt_width: int,
                   gen_width: int, trigger_len: int = 12,
                   prefill: bool = True) -> dict[str, dict]:
  """Compiles `loop.start` (prefill; optional) and `loop.run` with the serving rules on `mesh`.

  Returns, per program: compile seconds and the compiler's memory figures (bytes per device).
  """
  rules = serving_rules(mesh, cfg.num_heads)
  graphdef, abstract = nnx.split(abstract_model(cfg, rules))
  shardings = state_shardings(abstract, rules)
  params = jax.tree.map(
      lambda v, s: v.replace(jax.ShapeDtypeStruct(v.get_value().shape, v.get_value().dtype,
                                                  sharding=s.get_value())),
      abstract, shardings, is_leaf=lambda x: isinstance(x, nnx.Variable))
  spec = loop.LoopSpec(Sampling(), (151645, 151643), tuple(range(1, trigger_len + 1)))
  rows = NamedSharding(mesh, rules.spec(("batch",), (batch,)))
  grid = NamedSharding(mesh, rules.spec(("batch", None), (batch, prompt_width)))
  scalar = NamedSharding(mesh, P())
  sds = lambda shape, dtype, sharding: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
  arrays = (sds((batch, prompt_width), jnp.int32, grid),) * 3 + (
      sds((batch,), jnp.int32, rows), sds((batch,), jnp.int32, rows), sds((batch,), bool, rows))
  ctl = loop.Controls(*(sds((), jnp.int32, scalar) for _ in loop.Controls._fields))
  kw = dict(spec=spec, cache_len=prompt_width + gen_width, width=gen_width)
  out = {}
  traced = loop.start.trace(graphdef, params, *arrays, ctl, **kw)
  state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                       traced.out_info)
  programs = [("decode_loop", loop.run.trace(graphdef, params, state, ctl, spec=spec))]
  if prefill:
    programs.insert(0, ("prefill", traced))
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
