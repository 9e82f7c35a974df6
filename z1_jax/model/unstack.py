"""Scanned-layer models (one stacked `[layers, ...]` module, fast compiles for training) to
unrolled ones (a list of layers): decoding wants the unrolled form, since `lax.scan` would
carry the whole KV cache through `xs`/`ys` and copy it every token."""

from __future__ import annotations

import jax
from flax import nnx

from z1_jax.model.qwen2 import Qwen2, abstract_model, state_shardings


def unstack_layers(model: Qwen2) -> Qwen2:
  """The same weights with `scan_layers=False` (one jitted slice; sharding kept per layer)."""
  cfg = model.cfg
  if not cfg.scan_layers:
    return model
  target_cfg = cfg.replace(scan_layers=False)
  graphdef, abstract = nnx.split(abstract_model(target_cfg, model.rules))
  shardings = None if model.rules is None else nnx.to_pure_dict(
      state_shardings(abstract, model.rules))

  @jax.jit
  def slice_layers(src):
    out = {k: v for k, v in src.items() if k != "layers"}
    out["layers"] = {i: jax.tree.map(lambda x: x[i], src["layers"])
                     for i in range(cfg.num_layers)}
    return out if shardings is None else jax.lax.with_sharding_constraint(out, shardings)

  pure = slice_layers(nnx.to_pure_dict(nnx.state(model)))
  nnx.replace_by_pure_dict(abstract, pure)
  return nnx.merge(graphdef, abstract)
