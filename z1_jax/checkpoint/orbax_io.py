"""Orbax checkpoints of model parameters, in the layout the trainer extends.

A checkpoint directory is an Orbax `CheckpointManager` root: `<dir>/<step>/params` (the
parameter tree) and `<dir>/<step>/config` (the `Qwen2Config` as JSON). The trainer adds its own
items (optimizer state, data iterator) beside these under the same step, in
`<run>/checkpoints/`. Readers accept a manager root, a `z1 train` run directory, or one step
directory (`resolve_checkpoint`). Restoring reads every array straight into the target sharding,
so a checkpoint written on one mesh restores on another; layers saved stacked (`scan_layers`)
restore unrolled and the other way round.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from flax import nnx

from z1_jax.checkpoint.hf import CheckpointError
from z1_jax.errors import Z1Error
from z1_jax.model.config import Qwen2Config
from z1_jax.paths import as_path
from z1_jax.model.qwen2 import Qwen2, abstract_model, state_shardings
from z1_jax.model.sharding import LogicalRules

# Fields that describe how to run the model on this machine, not what the weights are.
# `scan_layers` is a layout: parameters are stacked or unstacked on restore.
_RUNTIME_FIELDS = ("dtype", "param_dtype", "remat_policy", "scan_layers", "attention_impl")


def resolve_checkpoint(path: str | os.PathLike) -> tuple[Path, int | None]:
  """(manager root, step or None for the latest complete one) of a `--ckpt` argument: a
  `z1 train` run directory (`<run>/checkpoints`), a manager root, or one step directory. Any
  URI `etils.epath` knows (`gs://`, `file://`) stays a URI (`paths.as_path`)."""
  p = as_path(path)
  if not p.is_dir():
    raise FileNotFoundError(f"Orbax checkpoint directory not found: {p}")
  if (p / "checkpoints").is_dir():
    return p / "checkpoints", None
  if p.name.isdigit() and (p / "params").is_dir():
    return p.parent, int(p.name)
  return p, None


def _manager(ckpt_dir: str | os.PathLike, create: bool) -> ocp.CheckpointManager:
  path = as_path(ckpt_dir)  # gs:// stays a URI: Orbax writes to Cloud Storage itself
  if not create and not path.is_dir():
    raise FileNotFoundError(f"Orbax checkpoint directory not found: {path}")
  return ocp.CheckpointManager(path, item_names=("params", "config"),
                               options=ocp.CheckpointManagerOptions(create=create))


def stack_layers(params: dict, num_layers: int) -> dict:
  """Unrolled `layers: {0: {...}, 1: ...}` -> stacked `layers: {...: [num_layers, ...]}`."""
  layers = [params["layers"][i] for i in range(num_layers)]
  return {**params, "layers": jax.tree.map(lambda *xs: jnp.stack(xs), *layers)}


def unstack_layers(params: dict, num_layers: int) -> dict:
  return {**params, "layers": {i: jax.tree.map(lambda x: x[i], params["layers"])
                               for i in range(num_layers)}}


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
  """(config, step) of `ckpt_dir` (see `resolve_checkpoint`); the latest step unless `step`."""
  root, resolved = resolve_checkpoint(ckpt_dir)
  step = resolved if step is None else step
  mngr = _manager(root, create=False)
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"{ckpt_dir}: no complete checkpoint steps found in {root}")
  try:
    cfg = mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
  except Exception as e:  # noqa: BLE001 - missing or corrupt files: one user-facing error
    raise CheckpointError(f"{root / str(step)}: cannot read the checkpoint config "
                          f"({type(e).__name__}: {str(e)[:300]})") from None
  finally:
    mngr.close()
  return Qwen2Config(**cfg), step


def load_params(ckpt_dir: str | os.PathLike, mesh: jax.sharding.Mesh | None = None,
                rules: LogicalRules | None = None, step: int | None = None,
                **runtime_overrides) -> Qwen2:
  """Restores a model onto `mesh` (any shape) or one device. Latest step unless `step`."""
  bad = set(runtime_overrides) - set(_RUNTIME_FIELDS)
  if bad:
    raise Z1Error(f"cannot override {sorted(bad)} when restoring; allowed: {_RUNTIME_FIELDS}")
  saved, step = read_config(ckpt_dir, step)
  root, _ = resolve_checkpoint(ckpt_dir)
  cfg = saved.replace(**runtime_overrides)
  if rules is None and mesh is not None:
    rules = LogicalRules(mesh)

  def targets(c: Qwen2Config):
    graphdef, abstract = nnx.split(abstract_model(c, rules))
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    shardings = state_shardings(abstract, rules) if rules is not None else jax.tree.map(
        lambda _: device, abstract)
    return graphdef, abstract, nnx.to_pure_dict(shardings)

  graphdef, abstract, shardings = targets(cfg)
  # Read in the layout (and dtype) the checkpoint was written in, then convert if needed.
  _, saved_abstract, saved_shardings = targets(
      saved.replace(**{k: v for k, v in runtime_overrides.items() if k != "scan_layers"}))
  target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        nnx.to_pure_dict(saved_abstract), saved_shardings)
  mngr = _manager(root, create=False)
  try:
    restored = mngr.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(target)))["params"]
  except Exception as e:  # noqa: BLE001
    raise CheckpointError(f"{root / str(step)}: cannot read the parameters "
                          f"({type(e).__name__}: {str(e)[:300]})") from None
  finally:
    mngr.close()
  if saved.scan_layers != cfg.scan_layers:
    convert = stack_layers if cfg.scan_layers else unstack_layers
    restored = jax.jit(lambda p: convert(p, cfg.num_layers), out_shardings=shardings)(restored)
  nnx.replace_by_pure_dict(abstract, restored)
  return nnx.merge(graphdef, abstract)
