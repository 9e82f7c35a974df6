"""The shipped run configs parse and agree with the code and the Z1 recipe."""

import dataclasses
import tomllib
from pathlib import Path

from z1_jax.config import load_config, model_config
from z1_jax.data.encode import EncodeConfig

CONFIGS = Path(__file__).parent.parent / "configs"


def test_7b_config_matches_recipe_and_code():
  run = load_config(CONFIGS / "z1-qwen2.5-coder-7b.toml")
  assert run.model.param_dtype == "float32" and run.model.dtype == "bfloat16"  # fp32 masters
  assert run.train.opt_state_dtype == "float32"
  model = model_config(run)
  assert model.vocab_size == 152064 and model.hidden_size == 3584
  cfg = tomllib.loads((CONFIGS / "z1-qwen2.5-coder-7b.toml").read_text())
  fields = {f.name for f in dataclasses.fields(EncodeConfig)}
  assert {"dataset", "system_prompt", "strip_think_tags"} <= fields
  train = cfg["train"]
  assert (train["seed"], train["epochs"], train["peak_lr"], train["warmup_steps"]) == (
      42, 2, 1e-5, 100)
  assert (train["adam_b1"], train["adam_b2"], train["adam_eps"], train["weight_decay"]) == (
      0.9, 0.999, 1e-8, 0.0)


def test_every_shipped_config_loads():
  from z1_jax.distill.config import load_config as load_distill_config
  paths = sorted(CONFIGS.glob("*.toml"))
  assert CONFIGS / "distill.toml" in paths and len(paths) > 2
  for path in paths:  # distill*.toml are z1 distill's; the others are runs
    (load_distill_config if path.name.startswith("distill") else load_config)(str(path))
