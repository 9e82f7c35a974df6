"""Run configuration: one TOML file with typed sections `model`, `data`, `train`, `checkpoint`,
`mesh`, plus `section.key=value` overrides from the command line.

Every key is checked against the dataclasses below before anything is loaded or compiled: an
unknown key or a value of the wrong type is a `Z1Error` naming the dotted key. Used by
`z1 train`, `z1 plan` and the demo; later commands add their own sections here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
import typing
from pathlib import Path
from typing import Any

from z1_jax.data.format import DEFAULT_SYSTEM_PROMPT
from z1_jax.errors import Z1Error


class ConfigError(Z1Error):
  """A bad run config: names the file and the dotted key."""


@dataclasses.dataclass(frozen=True)
class ModelSection:
  # Scratch init uses `preset`. A non-empty `hf_checkpoint` (local directory or hub id) loads
  # those weights; its config.json must then have the preset's architecture, or set preset = ""
  # (the preset lets `z1 plan` size the run without reading the checkpoint).
  preset: str = "tiny"
  hf_checkpoint: str = ""
  # Master weights (and so the optimizer's view of them) in param_dtype; matmuls in dtype.
  # Training in bf16 keeps param_dtype float32: an lr-1e-5 step on bf16 weights rounds away.
  param_dtype: str = "float32"
  dtype: str = "float32"
  scan_layers: bool = False
  remat_policy: str = "none"  # none, full, save_dots, save_qkv_attn, offload_... (model/remat.py)
  attention_impl: str = "auto"  # auto, dense, blockwise, splash, cudnn (model/attention.py)


@dataclasses.dataclass(frozen=True)
class DataSection:
  dataset: str = ""  # local JSONL/Parquet/Arrow file or directory, or a hub id; "": the sample
  split: str = "train"
  eval_dataset: str = ""  # held-out split (same forms); "": no held-out loss
  eval_split: str = "test"
  tokenizer: str = ""  # HF tokenizer directory or id; "": the bundled offline Qwen2.5 tokenizer
  question_column: str = "question"
  response_column: str = "response"
  system_prompt: str = DEFAULT_SYSTEM_PROMPT
  strip_think_tags: bool = False
  on_bad_row: str = "error"
  seq_len: int = 8192
  overlong: str = "truncate"
  cache_dir: str = ""  # tokenization cache; "": none on one host, <out>/cache on a pod


@dataclasses.dataclass(frozen=True)
class TrainSection:
  seed: int = 42
  epochs: int = 1
  global_batch: int = 8  # sequences per optimizer step, summed over all devices and micro-steps
  grad_accum: int = 1  # micro-batches per optimizer step (lax.scan inside the step)
  max_steps: int = 0  # stop after this many optimizer steps; 0: run all epochs
  peak_lr: float = 1e-5
  warmup_steps: int = 0
  schedule: str = "cosine"  # "cosine" (to min_lr_ratio * peak) or "constant", after warmup
  decay_steps: int = 0  # schedule length; 0: the whole run (epochs), independent of max_steps
  min_lr_ratio: float = 0.0
  adam_b1: float = 0.9
  adam_b2: float = 0.999
  adam_eps: float = 1e-8
  weight_decay: float = 0.0
  decay_norms_and_biases: bool = False
  max_grad_norm: float = 1.0  # global-norm clipping; 0: off
  opt_state_dtype: str = "float32"  # dtype of Adam's first moment (the second stays fp32)
  eval_every: int = 0  # optimizer steps between held-out losses; 0: only at the end
  eval_batches: int = 0  # batches per held-out loss; 0: the whole eval split
  peak_flops_per_device: float = 0.0  # for mfu; 0: known TPU table or a measured CPU matmul
  # persistent compilation cache: "" JAX_COMPILATION_CACHE_DIR or <out>/compile_cache, "off",
  # or a directory (local or gs://); see compile_cache.py
  compilation_cache: str = ""
  profile_steps: str = ""  # "A:B": jax.profiler trace of steps A..B into <out>/tb; "": none
  resume_on_changed_data: bool = False  # resume even though the data's fingerprint changed
  # several processes: a peer with no heartbeat for this long stops the run with an error
  # naming it (train/interrupt.py)
  peer_timeout_s: float = 20.0


@dataclasses.dataclass(frozen=True)
class CheckpointSection:
  every_steps: int = 500
  keep: int = 3
  async_save: bool = True


@dataclasses.dataclass(frozen=True)
class MeshSection:
  data: int = -1  # -1: all devices left after fsdp and tensor
  fsdp: int = 1
  tensor: int = 1


@dataclasses.dataclass(frozen=True)
class RunConfig:
  model: ModelSection = ModelSection()
  data: DataSection = DataSection()
  train: TrainSection = TrainSection()
  checkpoint: CheckpointSection = CheckpointSection()
  mesh: MeshSection = MeshSection()
  source: str = "<defaults>"

  def replace(self, **sections) -> "RunConfig":
    return dataclasses.replace(self, **sections)

  def to_dict(self) -> dict[str, Any]:
    return {f.name: dataclasses.asdict(getattr(self, f.name)) for f in _sections()}

  def micro_batch(self) -> int:
    return self.train.global_batch // self.train.grad_accum


_CHOICES = {
    "model.param_dtype": ("float32", "bfloat16", "float16"),
    "model.dtype": ("float32", "bfloat16", "float16"),
    "model.attention_impl": ("auto", "dense", "blockwise", "splash", "cudnn"),
    "data.overlong": ("truncate", "drop"),
    "data.on_bad_row": ("error", "skip"),
    "train.schedule": ("cosine", "constant"),
    "train.opt_state_dtype": ("float32", "bfloat16"),
}
_POSITIVE = ("data.seq_len", "train.epochs", "train.global_batch", "train.grad_accum",
             "checkpoint.every_steps", "checkpoint.keep", "train.peak_lr", "train.peer_timeout_s")
_NON_NEGATIVE = ("train.max_steps", "train.warmup_steps", "train.decay_steps",
                 "train.min_lr_ratio", "train.weight_decay", "train.max_grad_norm",
                 "train.eval_every", "train.eval_batches", "train.peak_flops_per_device",
                 "train.adam_eps")


def _sections() -> list[dataclasses.Field]:
  return [f for f in dataclasses.fields(RunConfig) if f.name != "source"]


def _check_value(key: str, value: Any, kind: Any, where: str) -> Any:
  """`value` as type `kind` (int, float, str, bool), or a ConfigError naming `key`."""
  ok = {bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str)}[kind]
  if not ok:
    raise ConfigError(f"{where}: {key} = {value!r} ({type(value).__name__}): expected "
                      f"{kind.__name__}")
  return float(value) if kind is float else value


def _build(raw: dict[str, Any], where: str) -> RunConfig:
  sections = {f.name: f for f in _sections()}
  kwargs = {}
  for name, body in raw.items():
    if name not in sections:
      raise ConfigError(f"{where}: unknown section [{name}]; known: {', '.join(sections)}")
    if not isinstance(body, dict):
      raise ConfigError(f"{where}: {name} must be a table ([{name}]), got {body!r}")
    cls = sections[name].type if not isinstance(sections[name].type, str) else (
        globals()[sections[name].type])
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in body.items():
      if key not in hints:
        raise ConfigError(f"{where}: unknown key {name}.{key}; known in [{name}]: "
                          f"{', '.join(hints)}")
      values[key] = _check_value(f"{name}.{key}", value, hints[key], where)
    kwargs[name] = cls(**values)
  cfg = RunConfig(**kwargs, source=where)
  _validate(cfg)
  return cfg


def check_keys(cfg, where: str, choices: dict, positive=(), non_negative=(),
               error: type[Z1Error] = ConfigError) -> None:
  """The checks every sectioned config shares: `section.key` values among `choices[key]`, > 0
  for `positive` keys, >= 0 for `non_negative` ones; an `error` naming the key otherwise."""
  def get(dotted):
    section, key = dotted.split(".")
    return getattr(getattr(cfg, section), key)
  for key, allowed in choices.items():
    if get(key) not in allowed:
      raise error(f"{where}: {key} = {get(key)!r}: expected one of {', '.join(allowed)}")
  for key in positive:
    if not get(key) > 0:
      raise error(f"{where}: {key} = {get(key)!r}: expected a value > 0")
  for key in non_negative:  # (NaN passes here: finiteness is each config's own check)
    if get(key) < 0:
      raise error(f"{where}: {key} = {get(key)!r}: expected a value >= 0")


def _validate(cfg: RunConfig) -> None:
  where = cfg.source
  check_keys(cfg, where, _CHOICES, _POSITIVE, _NON_NEGATIVE)
  t = cfg.train
  if t.global_batch % t.grad_accum:
    raise ConfigError(f"{where}: train.global_batch = {t.global_batch} is not divisible by "
                      f"train.grad_accum = {t.grad_accum}")
  import math
  for f in dataclasses.fields(TrainSection):
    value = getattr(t, f.name)
    if isinstance(value, float) and not math.isfinite(value):
      raise ConfigError(f"{where}: train.{f.name} = {value!r}: expected a finite number")
  for key in ("adam_b1", "adam_b2"):
    if not 0 <= getattr(t, key) < 1:
      raise ConfigError(f"{where}: train.{key} = {getattr(t, key)!r}: expected 0 <= value < 1")
  if not t.adam_eps > 0:
    raise ConfigError(f"{where}: train.adam_eps = {t.adam_eps!r}: expected a value > 0")
  if not 0 <= t.seed < 2**31:
    raise ConfigError(f"{where}: train.seed = {t.seed!r}: expected 0 <= seed < 2**31")
  parse_profile_steps(t.profile_steps, f"{where}: train.profile_steps")
  if not 0 <= t.min_lr_ratio <= 1:
    raise ConfigError(f"{where}: train.min_lr_ratio = {t.min_lr_ratio}: expected 0..1")
  for axis in ("data", "fsdp", "tensor"):
    value = getattr(cfg.mesh, axis)
    if value == 0 or value < -1:
      raise ConfigError(f"{where}: mesh.{axis} = {value}: expected a positive size or -1")
  if [cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor].count(-1) > 1:
    raise ConfigError(f"{where}: [mesh]: at most one of data, fsdp, tensor may be -1")
  from z1_jax.model.remat import parse_policy
  try:
    parse_policy(cfg.model.remat_policy)
  except Z1Error as e:
    raise ConfigError(f"{where}: model.{e}") from None
  from z1_jax.model.config import PRESETS
  if cfg.model.preset and cfg.model.preset.lower() not in PRESETS:
    raise ConfigError(f"{where}: model.preset = {cfg.model.preset!r} is unknown; known: "
                      f"{', '.join(sorted(PRESETS))}")
  if not cfg.model.preset and not cfg.model.hf_checkpoint:
    raise ConfigError(f"{where}: set model.preset (scratch init) or model.hf_checkpoint")


def parse_profile_steps(text: str, where: str = "train.profile_steps") -> tuple[int, int] | None:
  """`train.profile_steps`: "A:B" -> (A, B), optimizer steps 1 <= A <= B; "" -> None."""
  if not text:
    return None
  parts = text.split(":")
  try:
    first, last = (int(p) for p in parts)
  except ValueError:
    first = last = 0
  if len(parts) != 2 or not 1 <= first <= last:
    raise ConfigError(f"{where} = {text!r}: expected \"A:B\", optimizer steps 1 <= A <= B "
                      "(e.g. \"10:15\"), or \"\" for none")
  return first, last


def parse_override(text: str) -> tuple[str, str, Any]:
  """`section.key=value` -> (section, key, value). The value is read as a TOML value; text that
  is not valid TOML (an unquoted path, say) is taken as a string."""
  if "=" not in text:
    raise ConfigError(f"override {text!r}: expected section.key=value, e.g. train.peak_lr=2e-5")
  dotted, value_text = text.split("=", 1)
  parts = dotted.strip().split(".")
  if len(parts) != 2 or not all(parts):
    raise ConfigError(f"override {text!r}: expected section.key=value, e.g. train.max_steps=10")
  try:
    value = tomllib.loads(f"v = {value_text.strip()}")["v"]
  except tomllib.TOMLDecodeError:
    value = value_text.strip()
  return parts[0], parts[1], value


def load_config(path: str | os.PathLike | None, overrides: list[str] = ()) -> RunConfig:
  """Reads a TOML run config (None: the defaults) and applies dotted overrides, in order."""
  raw: dict[str, dict[str, Any]] = {}
  where = "<defaults>"
  if path is not None:
    p = Path(path).expanduser()
    where = str(path)
    if not p.is_file():
      raise ConfigError(f"config file not found: {path}")
    try:
      raw = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
      raise ConfigError(f"{path}: not valid TOML: {e}") from None
  for text in overrides:
    section, key, value = parse_override(text)
    if not isinstance(raw.setdefault(section, {}), dict):
      raise ConfigError(f"override {text!r}: {section} is not a section")
    raw[section][key] = value
  if overrides:
    where = f"{where} (with overrides)"
  return _build(raw, where)


def config_from_dict(raw: dict[str, Any], where: str = "<dict>") -> RunConfig:
  return _build(json.loads(json.dumps(raw)), where)


def model_config(cfg: RunConfig):
  """The `Qwen2Config` of a scratch run (preset + the run's numerics)."""
  from z1_jax.model.config import get_preset
  m = cfg.model
  return get_preset(m.preset, param_dtype=m.param_dtype, dtype=m.dtype,
                    scan_layers=m.scan_layers, remat_policy=m.remat_policy,
                    attention_impl=m.attention_impl)


def runtime_overrides(cfg: RunConfig) -> dict[str, Any]:
  """The run's numerics and layout, applied over a loaded checkpoint's architecture."""
  m = cfg.model
  return dict(param_dtype=m.param_dtype, dtype=m.dtype, scan_layers=m.scan_layers,
              remat_policy=m.remat_policy, attention_impl=m.attention_impl)

