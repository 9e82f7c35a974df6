"""Training FLOPs, device peak FLOP/s, and the per-step metric writers (JSONL + TensorBoard).

FLOPs of one training step (model FLOPs, the PaLM-paper convention; no remat recompute):
  per token: 6 * N  +  12 * num_layers * num_heads * head_dim * seq_len
where N counts the parameters used in matmuls (every layer weight and bias, the norms, and the
LM head once; the embedding lookup is free: N = num_params - vocab * hidden when untied, all
parameters when tied), 6 = 2 (multiply-add) x 3 (forward, and backward for activations and
weights), and the attention term counts QK^T and PV (2 x 2 x heads x head_dim per key) over the
full `seq_len` window, forward and backward. A step processes global_batch * seq_len tokens.
`mfu` = achieved FLOP/s / peak FLOP/s of all devices in the run.
"""

from __future__ import annotations

import json
import math
import sys
import time
from functools import lru_cache
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from z1_jax.errors import Z1Error
from z1_jax.model.config import Qwen2Config
from z1_jax.paths import is_uri

# Dense bf16 peak FLOP/s per chip (Cloud TPU documentation).
TPU_PEAK_FLOPS = {"v4": 275e12, "v5 lite": 197e12, "v5e": 197e12, "v5p": 459e12,
                  "v5": 459e12, "v6 lite": 918e12, "v6e": 918e12}


def matmul_params(cfg: Qwen2Config) -> int:
  return cfg.num_params() - (0 if cfg.tie_word_embeddings else cfg.vocab_size * cfg.hidden_size)


def train_flops_per_token(cfg: Qwen2Config, seq_len: int) -> float:
  attention = 12 * cfg.num_layers * cfg.num_heads * cfg.dim_per_head * seq_len
  return 6.0 * matmul_params(cfg) + attention


@lru_cache(maxsize=None)
def measured_matmul_flops(n: int = 1024, dtype: str = "float32", seconds: float = 0.5) -> float:
  """Dense-matmul FLOP/s of one device, measured (the CPU's practical peak)."""
  a = jnp.ones((n, n), dtype)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  count, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    f(a).block_until_ready()
    count += 1
  return 2.0 * n**3 * count / (time.perf_counter() - start)


def peak_flops(devices=None, override_per_device: float = 0.0) -> float:
  """Peak FLOP/s of `devices` together: the config's per-device figure, the TPU table, or (CPU,
  GPU) one measured matmul rate for the whole machine (forced host devices share its cores)."""
  devices = list(devices if devices is not None else jax.devices())
  if override_per_device > 0:
    return override_per_device * len(devices)
  kind = devices[0].device_kind.lower()
  if devices[0].platform == "tpu":
    for name, flops in TPU_PEAK_FLOPS.items():
      if name in kind:
        return flops * len(devices)
  if devices[0].platform == "cpu":
    return measured_matmul_flops()
  return measured_matmul_flops(4096, "bfloat16") * len(devices)


def read_metrics(path: Path, warn: bool = False) -> list[tuple[str, dict]]:
  """(line, object) of each line of a run's `metrics.jsonl`. A torn last line (a process killed
  while writing it) is dropped; any other unreadable line is a Z1Error naming file and line."""
  lines = path.read_text().splitlines()
  out = []
  for n, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except ValueError:
      if n == len(lines):
        if warn:
          print(f"z1: dropping the torn last line {n} of {path}", file=sys.stderr)
        continue
      raise Z1Error(f"{path}: line {n} is not JSON ({line[:80]!r}); fix or delete that line "
                    "to resume") from None
    if not isinstance(row, dict):
      raise Z1Error(f"{path}: line {n} is not a JSON object")
    out.append((line, row))
  return out


class MetricsLog:
  """`metrics.jsonl` (one object per step, flushed) and TensorBoard events; process 0 only.

  On Cloud Storage (a gs:// run directory), which cannot append, `metrics.jsonl` is rewritten
  whole every `upload_every` steps and at the end. TensorBoard events are handed to
  tensorboardX's writer thread, which writes them and flushes the event file every
  `tb_flush_secs` seconds and at `close()`: never on the training loop's thread (on gs:// each
  flush re-uploads the whole event file), and at most that late in TensorBoard."""

  upload_every = 50
  tb_flush_secs = 60
  tb_queue = 10_000  # events the writer thread may lag behind (a slow upload) before add waits

  def __init__(self, out_dir: Path, resume_step: int, enabled: bool):
    self.enabled = enabled
    self.path = out_dir / "metrics.jsonl"
    self.tb = None
    self.dropped_step_seconds = 0.0
    if not enabled:
      return
    self._truncate_after(resume_step)
    from tensorboardX import SummaryWriter
    self.tb = SummaryWriter(str(out_dir / "tb"), purge_step=resume_step + 1,
                            flush_secs=self.tb_flush_secs, max_queue=self.tb_queue)
    self.remote = is_uri(out_dir)
    if self.remote:
      self.lines = self.path.read_text().splitlines(keepends=True) if self.path.exists() else []
    else:
      self.file = open(self.path, "a", encoding="utf-8")

  def _truncate_after(self, step: int) -> None:
    """Drops lines of steps after the resumed one (work that the restart redoes; their step
    time is `dropped_step_seconds`, the goodput's restart badput). A torn last line (a process
    killed while writing it) is dropped too; any other unreadable line is an error naming it."""
    self.dropped_step_seconds = 0.0
    if not self.path.exists():
      return
    keep = []
    for line, row in read_metrics(self.path, warn=True):
      if row.get("step", 0) <= step:
        keep.append(line)
      else:
        self.dropped_step_seconds += float(row.get("step_time_s") or 0.0)
    tmp = self.path.with_name(f".{self.path.name}.tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    tmp.replace(self.path)

  def write_event(self, row: dict) -> None:
    """A line that is not a step (the goodput report): JSONL only, no TensorBoard scalar."""
    if not self.enabled:
      return
    if self.remote:
      self.lines.append(json.dumps(row) + "\n")
    else:
      self.file.write(json.dumps(row) + "\n")
      self.file.flush()

  def write(self, row: dict) -> None:
    if not self.enabled:
      return
    if self.remote:
      self.lines.append(json.dumps(row) + "\n")
      if len(self.lines) % self.upload_every == 0:
        self.path.write_text("".join(self.lines))
    else:
      self.file.write(json.dumps(row) + "\n")
      self.file.flush()
    for key, value in row.items():
      if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
        self.tb.add_scalar(f"train/{key}" if not key.startswith("eval") else key, value,
                           row["step"])

  def close(self) -> None:
    if self.enabled:
      if self.remote:
        self.path.write_text("".join(self.lines))
      else:
        self.file.close()
      self.tb.close()


def to_host(x) -> np.ndarray:
  """A replicated (possibly multi-process) array's value, from this process's first shard."""
  return np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else np.asarray(x)


def to_float(x) -> float:
  return float(to_host(x))
