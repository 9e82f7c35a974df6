"""Loading a model for decoding (`z1 generate`, `z1 sweep`): from a HF directory or an Orbax
checkpoint, laid out on the mesh with the serving rules (`model.sharding.serving_rules`; with
fsdp > 1, the training table: weights gathered per token, for models too big for tensor
parallelism alone), or on one device."""

from __future__ import annotations

from z1_jax.model.qwen2 import Qwen2


def load_for_decoding(hf: str | None = None, ckpt: str | None = None, mesh=None,
                      dtype: str | None = None) -> Qwen2:
  from z1_jax.model.sharding import LogicalRules, serving_rules
  if hf is not None:
    from z1_jax.checkpoint.hf import load_hf, read_hf_config, resolve_checkpoint_dir
    read = lambda: read_hf_config(resolve_checkpoint_dir(hf))
  else:
    from z1_jax.checkpoint.orbax_io import load_params, read_config
    read = lambda: read_config(ckpt)[0]
  rules = None
  if mesh is not None:
    rules = (serving_rules(mesh, read().num_heads) if mesh.shape["fsdp"] == 1 else
             LogicalRules(mesh))
  if hf is not None:
    return load_hf(hf, dtype=dtype, rules=rules)
  overrides = {} if dtype is None else {"dtype": dtype}  # the compute dtype
  # decoding wants unrolled layers: a scanned checkpoint is unstacked while it loads
  return load_params(ckpt, rules=rules, scan_layers=False, **overrides)
