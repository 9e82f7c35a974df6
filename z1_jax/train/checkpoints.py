"""Orbax checkpoints of a training run: `<out>/checkpoints/<step>/` holding

  params       the model's parameters (the layout `checkpoint.orbax_io.load_params` reads)
  config       the `Qwen2Config` as JSON
  train_state  optimizer state, step, RNG key data
  data         the grain iterator state (JSON) of the input pipeline

Saves are asynchronous (the arrays are copied off the devices before `save` returns, so the
donated state may move on) and atomic: Orbax writes into a temporary directory and renames it
when complete, so a process killed during a save leaves the previous step as the latest
readable one; the temporary directory is cleaned up on the next start.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp

from z1_jax.checkpoint.hf import CheckpointError
from z1_jax.config import CheckpointSection
from z1_jax.model.config import Qwen2Config
from z1_jax.paths import as_path

ITEMS = ("params", "config", "train_state", "data")


class Checkpointer:

  def __init__(self, root: str | Path, cfg: CheckpointSection, create: bool = True):
    self.root = as_path(root)  # gs:// stays a URI: Orbax writes to Cloud Storage itself
    options = ocp.CheckpointManagerOptions(
        max_to_keep=cfg.keep, create=create, enable_async_checkpointing=cfg.async_save,
        cleanup_tmp_directories=True)
    self.manager = ocp.CheckpointManager(self.root, item_names=ITEMS, options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: dict, data_state: dict, model_cfg: Qwen2Config) -> None:
    train_state = {k: state[k] for k in ("opt_state", "step", "rng")}
    self.manager.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(state["params"]),
        config=ocp.args.JsonSave(dataclasses.asdict(model_cfg)),
        train_state=ocp.args.StandardSave(train_state),
        data=ocp.args.JsonSave(data_state)))

  def read_model_config(self, step: int) -> Qwen2Config:
    try:
      raw = self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user-facing error
      raise CheckpointError(f"{self.root / str(step)}: cannot read the checkpoint's config "
                            f"({type(e).__name__}: {e})") from None
    return Qwen2Config(**raw["config"])

  def restore(self, step: int, abstract_state: dict) -> tuple[dict, dict]:
    """(train state onto the shardings of `abstract_state`, data iterator state)."""
    train_target = {k: abstract_state[k] for k in ("opt_state", "step", "rng")}
    try:
      out = self.manager.restore(step, args=ocp.args.Composite(
          params=ocp.args.StandardRestore(abstract_state["params"]),
          train_state=ocp.args.StandardRestore(train_target),
          data=ocp.args.JsonRestore()))
    except Exception as e:  # noqa: BLE001
      raise CheckpointError(f"{self.root / str(step)}: checkpoint is unreadable or does not "
                            f"match this run's model/optimizer ({type(e).__name__}: "
                            f"{str(e)[:500]})") from None
    state: dict[str, Any] = {"params": out["params"], **out["train_state"]}
    return state, out["data"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()

