"""Qwen2 model: config and presets, the logical-axis sharding table, the NNX modules."""

from z1_jax.model.config import PRESETS, Qwen2Config, from_hf_config, get_preset, to_hf_config
from z1_jax.model.qwen2 import Qwen2, abstract_model, create_model, init_pools
from z1_jax.model.sharding import LogicalRules, make_mesh
