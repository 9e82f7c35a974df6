"""Orbax checkpoints of model parameters, in the layout the trainer extends.

A checkpoint directory is an Orbax `CheckpointManager` root: `<dir>/<step>/params` (the
parameter tree) and `<dir>/<step>/config` (the `Qwen2Config` as JSON). The trainer adds its own
items (optimizer state, data iterator) beside these under the same step. Restoring reads every
array straight into the target sharding, so a checkpoint written on one mesh restores on another.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import jax
import orbax.checkpoint as ocp
from flax import nnx

from z1_jax.model.config import Qwen2Config
from z1_jax.paths import as_path
from z1_jax.model.qwen2 import Qwen2, abstract_model, state_shardings
from z1_jax.model.sharding import LogicalRules

# Fields that describe how to run the model on this machine, not what the weights are.
_RUNTIME_FIELDS = ("dtype", "remat_policy")


def _manager(ckpt_dir: str | os.PathLike, create: bool) -> ocp.CheckpointManager:
  path = as_path(ckpt_dir)  # gs:// stays a URI: Orbax writes to Cloud Storage itself
  if not create and not path.is_dir():
    raise FileNotFoundError(f"Orbax checkpoint directory not found: {path}")
  return ocp.CheckpointManager(path, item_names=("params", "config"),
                               options=ocp.CheckpointManagerOptions(create=create))


def save_params(model: Qwen2, ckpt_dir: str | os.PathLike, step: int = 0) -> Path:
  """Saves the model's parameters and config as step `step` (atomic: Orbax commits at the end)."""
  mngr = _manager(ckpt_dir, create=True)
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  mngr.save(step, args=ocp.args.Composite(
      params=ocp.args.StandardSave(params),
      config=ocp.args.JsonSave(dataclasses.asdict(model.cfg))))
  mngr.wait_until_finished()
  mngr.close()
  return as_path(ckpt_dir)


def read_config(ckpt_dir: str | os.PathLike, step: int | None = None) -> tuple[Qwen2Config, int]:
  mngr = _manager(ckpt_dir, create=False)
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"{ckpt_dir}: no checkpoint steps found")
  cfg = mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
  mngr.close()
  return Qwen2Config(**cfg), step


def load_params(ckpt_dir: str | os.PathLike, mesh: jax.sharding.Mesh | None = None,
                rules: LogicalRules | None = None, step: int | None = None,
                **runtime_overrides) -> Qwen2:
  """Restores a model onto `mesh` (any shape) or one device. Latest step unless `step`."""
  bad = set(runtime_overrides) - set(_RUNTIME_FIELDS)
  if bad:
    raise ValueError(f"cannot override {sorted(bad)} when restoring; allowed: {_RUNTIME_FIELDS}")
  cfg, step = read_config(ckpt_dir, step)
  cfg = cfg.replace(**runtime_overrides)
  if rules is None and mesh is not None:
    rules = LogicalRules(mesh)
  graphdef, abstract = nnx.split(abstract_model(cfg, rules))
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  shardings = state_shardings(abstract, rules) if rules is not None else jax.tree.map(
      lambda _: device, abstract)
  target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        nnx.to_pure_dict(abstract), nnx.to_pure_dict(shardings))
  mngr = _manager(ckpt_dir, create=False)
  restored = mngr.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(target)))
  mngr.close()
  nnx.replace_by_pure_dict(abstract, restored["params"])
  return nnx.merge(graphdef, abstract)
