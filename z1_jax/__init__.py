"""z1-jax: Z1 (efficient test-time scaling with code) in JAX / Flax NNX.

Entry points: `load_hf` / `save_hf` (HF checkpoints in and out), `create_model`, `get_preset`,
`make_mesh`, `generate` / `sweep` (decoding with a thinking budget); the `z1` command line
(`python -m z1_jax`). Imported lazily, so that the command line starts without loading JAX.
"""

import importlib

_EXPORTS = {
    "CheckpointError": "z1_jax.checkpoint.hf", "load_hf": "z1_jax.checkpoint.hf",
    "save_hf": "z1_jax.checkpoint.hf", "PRESETS": "z1_jax.model.config",
    "Qwen2Config": "z1_jax.model.config", "get_preset": "z1_jax.model.config",
    "Qwen2": "z1_jax.model.qwen2", "create_model": "z1_jax.model.qwen2",
    "LogicalRules": "z1_jax.model.sharding", "make_mesh": "z1_jax.model.sharding",
    "generate": "z1_jax.infer.generate", "sweep": "z1_jax.infer.generate",
    "Generation": "z1_jax.infer.generate",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
  if name in _EXPORTS:
    return getattr(importlib.import_module(_EXPORTS[name]), name)
  raise AttributeError(f"module 'z1_jax' has no attribute {name!r}")
