"""The shipped run configs parse and agree with the code and the Z1 recipe."""

import dataclasses
import tomllib
from pathlib import Path

from z1_jax.data.encode import EncodeConfig
from z1_jax.model.config import get_preset

CONFIGS = Path(__file__).parent.parent / "configs"


def test_7b_config_matches_recipe_and_code():
  cfg = tomllib.loads((CONFIGS / "z1-qwen2.5-coder-7b.toml").read_text())
  model = get_preset(cfg["model"]["preset"], param_dtype=cfg["model"]["param_dtype"],
                     dtype=cfg["model"]["dtype"], scan_layers=cfg["model"]["scan_layers"],
                     remat_policy=cfg["model"]["remat_policy"])
  assert model.vocab_size == 152064 and model.hidden_size == 3584
  fields = {f.name for f in dataclasses.fields(EncodeConfig)}
  assert {"dataset", "system_prompt", "strip_think_tags"} <= fields
  train = cfg["train"]
  assert (train["seed"], train["epochs"], train["peak_lr"], train["warmup_steps"]) == (
      42, 2, 1e-5, 100)
  assert (train["adam_b1"], train["adam_b2"], train["adam_eps"], train["weight_decay"]) == (
      0.9, 0.999, 1e-8, 0.0)
