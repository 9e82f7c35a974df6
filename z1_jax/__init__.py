"""z1-jax: Z1 (efficient test-time scaling with code) in JAX / Flax NNX.

Entry points: `load_hf` / `save_hf` (HF checkpoints in and out), `create_model`, `get_preset`,
`make_mesh`; the `z1` command line (`python -m z1_jax`).
"""

from z1_jax.checkpoint.hf import CheckpointError, load_hf, save_hf
from z1_jax.model import (PRESETS, LogicalRules, Qwen2, Qwen2Config, create_model, get_preset,
                          make_mesh)

__all__ = ["CheckpointError", "LogicalRules", "PRESETS", "Qwen2", "Qwen2Config", "create_model",
           "get_preset", "load_hf", "make_mesh", "save_hf"]
