"""`z1 plan`: will this run fit on that TPU slice? Compile the real train step ahead of time.

`plan_train(cfg, "v5p-64")` builds the trainer's jitted step (`train.step.build_train_step`) on
a mesh of compile-only devices of that Cloud TPU slice (`z1_jax.topology`, needs libtpu, not a
TPU), lowers and compiles it on abstract arguments (`jax.ShapeDtypeStruct` with shardings:
nothing is allocated), and reads the compiler's per-chip memory analysis. The TPU compiler's
verdict is the answer: it fails with RESOURCE_EXHAUSTED (required vs available bytes in the
message) when the step cannot fit in HBM. `plan_train(cfg, devices=N)` does the same on N host
CPU devices (no libtpu needed; the budget is then this host's RAM split N ways).

FLOPs per step, two counts:
- model FLOPs: the formula `train.metrics.train_flops_per_token` (6 N + attention, the PaLM
  convention `z1 train`'s MFU uses): the work the step must do;
- hardware FLOPs: what the compiled program computes, read from its HLO (`z1_jax.hlo`): every
  dot and convolution (the TPU compiler writes matmuls as convolutions) with loops counted per
  trip (the layer scan, gradient accumulation, collective matmuls), so remat's recomputation
  is in it; plus the Pallas kernels (splash attention), which no cost model sees into, counted
  by the model formula's convention (full attention window; per forward call 4 x heads x
  Sq x Skv x head_dim, the dq and dkv calls as much again each), once per call the program
  makes (full remat calls the forward kernel twice). XLA's own `cost_analysis()` counts a loop
  body once (28 layers as one) and is shown for reference only. Elementwise work (norms,
  softmax outside Pallas, the optimizer) is not counted: it is HBM-bound, not FLOP-bound.

Predicted speed (TPU targets): the collectives of the compiled step, per chip, from its HLO
(`z1_jax.collectives`: all-gather, reduce-scatter, all-reduce, all-to-all sizes, loops counted
per trip), and a roofline. Assumptions: every chip reaches the slice table's peak bf16 FLOP/s
on the hardware FLOPs, collectives move their ring-algorithm bytes at the chip's full
bidirectional ICI bandwidth, and compute and communication overlap perfectly; HBM traffic is
ignored. So `step_lower_bound_s = max(hardware compute at peak, comm_s)` is a lower bound on
the step time a real run can reach (its `step_time_s` divided into this bound is the fraction
of that ideal it attains), and `mfu_upper_bound = model compute at peak / step_lower_bound_s`
an upper bound on its MFU: 1 / (hardware / model FLOPs), about 75% under full remat.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import re
import time
from typing import Any, Mapping

from z1_jax.config import RunConfig, model_config
from z1_jax.errors import Z1Error
from z1_jax.topology import GiB, MESH_AXES, accelerator as find_accelerator, resolve_mesh_shape


def prepare_cpu_devices(devices: int | None) -> None:
  """`--devices N`: asks for N host CPU devices, before JAX starts (no effect after)."""
  if devices is None or "jax" in __import__("sys").modules:
    return
  flags = os.environ.get("XLA_FLAGS", "")
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", flags)
  os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()


@dataclasses.dataclass(frozen=True)
class Plan:
  """One compiled (or refused) train step. Byte figures are per chip (per device)."""
  target: str  # "v5p-64" or "8 cpu devices"
  device_kind: str
  chips: int
  mesh: dict[str, int]
  fits: bool
  hbm_bytes: int  # the budget per chip (CPU: host RAM / devices)
  arguments_bytes: int | None  # params + optimizer state + batch shard
  outputs_bytes: int | None
  alias_bytes: int | None  # outputs written in place of donated arguments
  temp_bytes: int | None  # activations, gradients, scratch
  total_bytes: int | None  # arguments + outputs - aliased + temporaries
  peak_bytes: int | None  # the compiler's own peak estimate (TPU)
  required_bytes: int | None  # does not fit: arguments + what the compiler says it needs
  required_temp_bytes: int | None  # does not fit: the compiler's figure (HLO temporaries)
  flops_per_step: float  # model FLOPs (6N + attention), no remat recompute
  peak_flops: float  # all chips together, bf16 dense
  compile_s: float  # wall clock
  compile_cpu_s: float  # CPU time of this process (all compiler threads): load-independent
  seq_len: int
  global_batch: int
  grad_accum: int
  rows_per_chip: float  # per micro-batch
  attention_impl: str
  remat_policy: str
  error: str | None = None  # the compiler's message when it does not fit
  other_meshes: tuple[dict[str, int], ...] = ()
  collectives: dict[str, dict[str, float]] | None = None  # kind -> count, bytes, wire_bytes
  ici_bytes_per_s: float | None = None  # per chip (TPU targets)
  hardware_flops_per_step: float | None = None  # the compiled program's, all chips (see above)
  xla_cost_flops_per_step: float | None = None  # XLA cost_analysis x chips: loop bodies once
  uncounted_kernels: tuple[str, ...] = ()  # Pallas kernels whose FLOPs are not known

  @property
  def comm_s(self) -> float | None:
    """Seconds the collectives' wire bytes take at full ICI bandwidth (TPU targets)."""
    if self.collectives is None or not self.ici_bytes_per_s:
      return None
    return sum(c["wire_bytes"] for c in self.collectives.values()) / self.ici_bytes_per_s

  @property
  def ideal_step_s(self) -> float:
    """The model FLOPs at 100% of peak FLOP/s (what MFU counts)."""
    return self.flops_per_step / self.peak_flops

  @property
  def hardware_ratio(self) -> float | None:
    """Hardware FLOPs / model FLOPs: remat's recomputation and the like (1.0 = none)."""
    if not self.hardware_flops_per_step:
      return None
    return self.hardware_flops_per_step / self.flops_per_step

  @property
  def compute_s(self) -> float | None:
    """The hardware FLOPs at 100% of peak FLOP/s."""
    if not self.hardware_flops_per_step:
      return None
    return self.hardware_flops_per_step / self.peak_flops

  @property
  def step_lower_bound_s(self) -> float | None:
    """No step is faster: the compiled work at peak FLOP/s or the collectives at full ICI
    bandwidth, whichever is longer (perfect overlap assumed)."""
    if self.compute_s is None:
      return None
    return max(self.compute_s, self.comm_s or 0.0)

  @property
  def mfu_upper_bound(self) -> float | None:
    bound = self.step_lower_bound_s
    return None if bound is None else self.ideal_step_s / bound

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["other_meshes"] = [dict(m) for m in self.other_meshes]
    d["uncounted_kernels"] = list(self.uncounted_kernels)
    d.update(ideal_step_s=self.ideal_step_s, comm_s=self.comm_s, compute_s=self.compute_s,
             hardware_ratio=self.hardware_ratio, step_lower_bound_s=self.step_lower_bound_s,
             mfu_upper_bound=self.mfu_upper_bound)
    return d

  def summary(self) -> str:
    gib = lambda b: "-" if b is None else f"{b / GiB:.2f} GiB"
    mesh = ",".join(f"{a}={s}" for a, s in self.mesh.items())
    lines = [
        f"target          {self.target} ({self.device_kind}, {self.chips} chips, "
        f"{gib(self.hbm_bytes)} each)",
        f"mesh            {mesh}",
        f"batch           global {self.global_batch} x {self.seq_len} tokens, grad_accum "
        f"{self.grad_accum}: {self.rows_per_chip:g} rows per chip per micro-batch",
        f"model           attention {self.attention_impl}, remat {self.remat_policy}",
    ]
    if self.total_bytes is not None:
      lines.append(f"per chip        arguments {gib(self.arguments_bytes)}, outputs "
                   f"{gib(self.outputs_bytes)} (aliased {gib(self.alias_bytes)}), temporaries "
                   f"{gib(self.temp_bytes)}; total {gib(self.total_bytes)}"
                   + (f", compiler peak {gib(self.peak_bytes)}" if self.peak_bytes else ""))
    if self.required_bytes is not None:
      lines.append(f"per chip        needs {gib(self.required_bytes)}: arguments "
                   f"{gib(self.arguments_bytes)} (parameters, optimizer state, batch) + "
                   f"temporaries {gib(self.required_temp_bytes)} (the compiler's figure)")
    verdict = "yes" if self.fits else "NO"
    if self.error and not self.fits:
      verdict += f": {self.error}"
    lines += [f"fits            {verdict}",
              f"FLOPs per step  model {self.flops_per_step:.3g} (6N + attention: "
              f"{self.ideal_step_s:.3g} s at 100% of {self.peak_flops:.3g} FLOP/s)"]
    if self.hardware_ratio is not None:
      lines.append(
          f"                compiled program {self.hardware_flops_per_step:.3g} "
          f"({self.compute_s:.3g} s at peak): hardware / model = {self.hardware_ratio:.2f}, "
          f"model / hardware = {1 / self.hardware_ratio:.0%}"
          + (f"; not counted: {', '.join(self.uncounted_kernels)}"
             if self.uncounted_kernels else ""))
    if self.xla_cost_flops_per_step:
      lines.append(f"                (XLA cost_analysis: {self.xla_cost_flops_per_step:.3g}, "
                   "each loop body once; not used)")
    lines.append(f"compile         {self.compile_s:.1f} s ({self.compile_cpu_s:.1f} s CPU)")
    if self.collectives is not None:
      lines.append("collectives     per chip per step: " + ", ".join(
          f"{k} {int(c['count'])}x {c['bytes'] / GiB:.2f} GiB" for k, c in
          self.collectives.items() if c["count"]) + "; wire " +
          f"{sum(c['wire_bytes'] for c in self.collectives.values()) / GiB:.2f} GiB")
    if self.step_lower_bound_s is not None:
      ici = ("" if self.comm_s is None else f", ICI {self.comm_s:.3g} s at "
             f"{self.ici_bytes_per_s / 1e9:.0f} GB/s per chip, full overlap")
      lines.append(f"bound           step >= {self.step_lower_bound_s:.3g} s (compiled work "
                   f"{self.compute_s:.3g} s at peak{ici}): MFU <= {self.mfu_upper_bound:.0%}; a "
                   f"run with step_time_s T uses {self.step_lower_bound_s:.3g}/T of the "
                   "chips' peak")
    if self.other_meshes:
      lines.append("other meshes    " + "; ".join(
          ",".join(f"{a}={s}" for a, s in m.items()) for m in self.other_meshes))
    return "\n".join(lines)


# Pallas kernels by name -> FLOPs in units of one attention forward (4 x heads x Sq x Skv x
# head_dim): the model formula counts the backward as twice the forward; splash splits it into a
# dq and a dkv kernel.
_PALLAS_UNITS = {"fwd": 1.0, "dq": 1.0, "dkv": 1.0}


def hardware_flops(hlo: str) -> tuple[float, list[str]]:
  """(FLOPs one device's compiled program computes per call, names of Pallas kernels it calls
  whose FLOPs are unknown): dots and convolutions per loop trip, splash attention by formula."""
  from z1_jax.hlo import arithmetic
  arith = arithmetic(hlo)
  total, uncounted = arith.matmul_flops, []
  for name, call in arith.pallas.items():
    kind = next((k for k in _PALLAS_UNITS if re.search(rf"splash\w*_{k}(_|$)", name)), None)
    arrays = [dims for dtype, dims in call.operands if dtype in ("bf16", "f32", "f16")]
    if kind is None or len(arrays) < 2 or len(arrays[0]) < 3:
      uncounted.append(name)
      continue
    q, k = arrays[0], arrays[1]  # [..heads.., Sq, D] and [..kv heads.., Skv, D]
    forward = 4.0 * math.prod(q[:-2]) * q[-2] * k[-2] * q[-1]
    total += call.count * _PALLAS_UNITS[kind] * forward
  return total, uncounted


def suggest_meshes(model_cfg, micro_batch: int, chips: int, limit: int = 4) -> list[dict]:
  """Meshes over `chips` whose axes divide what the sharding rules split: the micro-batch over
  data x fsdp, the hidden size over fsdp, query heads / MLP / vocab over tensor, and K/V heads
  either divide or are divided by tensor (splash picks one KV head per shard). Least tensor
  first (its collectives are per layer), then the most fsdp (least memory per chip)."""
  found = []
  for tensor, fsdp in itertools.product(range(1, chips + 1), repeat=2):
    if chips % (tensor * fsdp):
      continue
    data = chips // (tensor * fsdp)
    kv = model_cfg.num_kv_heads
    if (micro_batch % (data * fsdp) or model_cfg.hidden_size % fsdp or
        any(n % tensor for n in (model_cfg.num_heads, model_cfg.intermediate_size,
                                 model_cfg.vocab_size)) or (kv % tensor and tensor % kv)):
      continue
    found.append({"data": data, "fsdp": fsdp, "tensor": tensor})
  found.sort(key=lambda m: (m["tensor"], -m["fsdp"]))
  return found[:limit]


_SIZE = r"([\d.]+)\s*([KMGT]i?B?|B)?"
_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _bytes(number: str, unit: str | None) -> int:
  return int(float(number) * _UNITS[(unit or "")[:1]])


def required_from_message(message: str) -> tuple[int | None, int | None]:
  """(required, available) bytes from a TPU RESOURCE_EXHAUSTED message, where it says."""
  for pattern in (rf"required for .*?\({_SIZE}\) exceeds available HBM \({_SIZE}\)",
                  rf"Used {_SIZE} of {_SIZE} hbm"):
    m = re.search(pattern, message)
    if m:
      return _bytes(m.group(1), m.group(2)), _bytes(m.group(3), m.group(4))
  return None, None


def argument_bytes(tree) -> int:
  """Bytes per device of sharded `ShapeDtypeStruct`s (the most any one device holds)."""
  import jax
  import numpy as np
  total = 0
  for x in jax.tree.leaves(tree):
    shard = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
    total += int(np.prod(shard)) * np.dtype(x.dtype).itemsize
  return total


def _impl_name(impl: str, platform: str, seq_len: int) -> str:
  from z1_jax.model.attention import resolve_impl
  chosen = resolve_impl(impl, platform, True, seq_len, seq_len)
  return f"{impl} ({chosen})" if impl == "auto" else impl


def _plan_model_config(cfg: RunConfig):
  if cfg.model.preset:
    return model_config(cfg)
  from pathlib import Path
  from z1_jax.config import runtime_overrides
  from z1_jax.model.config import from_hf_config
  import json
  config_json = Path(cfg.model.hf_checkpoint).expanduser() / "config.json"
  if not config_json.is_file():
    raise Z1Error(f"{cfg.source}: planning needs the architecture: set model.preset, or point "
                  f"model.hf_checkpoint at a local directory with config.json")
  return from_hf_config(json.loads(config_json.read_text()), str(config_json),
                        **runtime_overrides(cfg))


def plan_train(cfg: RunConfig, accelerator: str | None = None,
               mesh_shape: Mapping[str, int] | None = None, devices: int | None = None) -> Plan:
  """Compiles `cfg`'s train step for a Cloud TPU slice (`accelerator`, e.g. "v5p-64") or for
  `devices` host CPU devices, on `mesh_shape` (`{"data": a, "fsdp": b, "tensor": c}`, one may
  be -1; default: the config's [mesh]). Allocates nothing. Raises `Z1Error` for a bad
  name, mesh or config; a step that does not fit is a `Plan` with `fits=False`."""
  import jax
  from jax.sharding import AxisType, Mesh
  from z1_jax.model.sharding import UnevenShardingError
  from z1_jax.train.metrics import peak_flops, train_flops_per_token
  from z1_jax.train.step import build_train_step

  if (accelerator is None) == (devices is None):
    raise Z1Error("plan for exactly one target: an accelerator name or a number of CPU devices")
  model_cfg = _plan_model_config(cfg)
  micro = cfg.micro_batch()
  if accelerator is not None:
    acc = find_accelerator(accelerator)
    from z1_jax.topology import topology_devices
    pool, target, hbm = topology_devices(acc), acc.name, acc.hbm_bytes
    ici = acc.generation.ici_bytes_per_s
  else:
    pool = jax.devices("cpu")
    if len(pool) < devices:
      raise Z1Error(f"--devices {devices}: this process has {len(pool)} CPU devices (start it "
                    f"with XLA_FLAGS=--xla_force_host_platform_device_count={devices})")
    pool = pool[:devices]
    target = f"{devices} cpu devices"
    hbm = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // devices
    ici = None
  n = len(pool)
  suggestions = suggest_meshes(model_cfg, micro, n)
  hint = "; meshes that divide: " + (" | ".join(
      ",".join(f"{a}={s}" for a, s in m.items()) for m in suggestions) or
      "none (change train.global_batch / train.grad_accum)")
  if mesh_shape is None:  # the run's own [mesh] section, over this target's devices
    mesh_shape = {a: getattr(cfg.mesh, a) for a in MESH_AXES}
  try:
    shape = resolve_mesh_shape(mesh_shape, n)
  except Z1Error as e:
    raise Z1Error(f"{e}{hint}") from None
  if accelerator is not None:
    from jax.experimental import mesh_utils
    grid = mesh_utils.create_device_mesh(tuple(shape.values()), devices=pool,
                                         allow_split_physical_axes=True)
  else:
    import numpy as np
    grid = np.asarray(pool).reshape(tuple(shape.values()))
  mesh = Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))
  others = tuple(m for m in suggestions if m != shape)

  try:
    ts = build_train_step(cfg, mesh, model_cfg=model_cfg)
  except UnevenShardingError as e:
    raise type(e)(f"{e}{hint}") from None
  except Z1Error as e:
    raise Z1Error(f"{e}{hint}") from None

  import resource
  usage = lambda: (lambda r: r.ru_utime + r.ru_stime)(resource.getrusage(resource.RUSAGE_SELF))
  start, start_cpu = time.perf_counter(), usage()
  error = required = temps = None
  memory = collectives = hardware = xla_cost = None
  uncounted = ()
  try:
    from z1_jax.topology import compile_only
    compiled = compile_only(ts.step.trace(*ts.abstract()).lower())
    memory = compiled.memory_analysis()
    from z1_jax.collectives import collective_bytes
    text = compiled.as_text()
    collectives = {k: dataclasses.asdict(v) for k, v in
                   collective_bytes(text, devices=n).items()}
    hardware, uncounted = hardware_flops(text)
    hardware *= n  # the program is one device's share (SPMD): the slice runs n of them
    xla_cost = (compiled.cost_analysis() or {}).get("flops")
  except Exception as e:  # noqa: BLE001 - only RESOURCE_EXHAUSTED is an answer; the rest raise
    message = str(e)
    if "RESOURCE_EXHAUSTED" not in message:
      raise
    error = message.strip().splitlines()[0][:400]
    required, available = required_from_message(message)
    hbm = available or hbm
    temps = required
    if required is not None and "HLO temporaries" in message:
      required = required + argument_bytes(ts.abstract())
  compile_s, compile_cpu_s = time.perf_counter() - start, usage() - start_cpu

  tokens = cfg.train.global_batch * cfg.data.seq_len
  figures: dict[str, Any] = dict(arguments_bytes=None, outputs_bytes=None, alias_bytes=None,
                                 temp_bytes=None, total_bytes=None, peak_bytes=None)
  fits = memory is not None
  if memory is None and required is not None:
    figures["arguments_bytes"] = argument_bytes(ts.abstract())
  if memory is not None:
    figures = dict(arguments_bytes=memory.argument_size_in_bytes,
                   outputs_bytes=memory.output_size_in_bytes,
                   alias_bytes=memory.alias_size_in_bytes, temp_bytes=memory.temp_size_in_bytes,
                   peak_bytes=getattr(memory, "peak_memory_in_bytes", None) or None)
    figures["total_bytes"] = (figures["arguments_bytes"] + figures["outputs_bytes"] -
                              figures["alias_bytes"] + figures["temp_bytes"])
    if accelerator is None:  # host devices: no compiler limit, so check the RAM share
      fits = figures["total_bytes"] <= hbm
  return Plan(
      target=target, device_kind=pool[0].device_kind, chips=n, mesh=dict(shape), fits=fits,
      hbm_bytes=int(hbm), required_bytes=required, required_temp_bytes=temps, **figures,
      flops_per_step=train_flops_per_token(model_cfg, cfg.data.seq_len) * tokens,
      peak_flops=peak_flops(pool),
      compile_s=compile_s, compile_cpu_s=compile_cpu_s, seq_len=cfg.data.seq_len, global_batch=cfg.train.global_batch,
      grad_accum=cfg.train.grad_accum,
      rows_per_chip=micro / (shape["data"] * shape["fsdp"]),
      attention_impl=_impl_name(model_cfg.attention_impl, pool[0].platform, cfg.data.seq_len),
      remat_policy=model_cfg.remat_policy,
      error=error, other_meshes=others, collectives=collectives, ici_bytes_per_s=ici,
      hardware_flops_per_step=hardware, uncounted_kernels=tuple(uncounted),
      xla_cost_flops_per_step=None if xla_cost is None else float(xla_cost) * n)
