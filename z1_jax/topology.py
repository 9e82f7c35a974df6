"""Cloud TPU slices by name, meshes over their compile-only devices, and the platform choice.

- `accelerator("v5p-64")` -> `Accelerator`: the topology string the TPU compiler takes
  (`"v5:2x4x4"`), chip config, chips per host, wrap-around links, chips, HBM per chip. Names
  are Cloud TPU's: `v4-N` and `v5p-N` count TensorCores (two per chip, so v5p-64 is 32 chips),
  `v5litepod-N` (alias `v5e-N`) and `v6e-N` count chips. The topologies follow MaxText's
  accelerator table.
- `topology_mesh("v5p-64", {"fsdp": 32})` -> a `jax.sharding.Mesh` over compile-only TPU
  devices (`jax.experimental.topologies`): `jit(...).trace(...).lower().compile()` for that
  slice runs on any host with `libtpu` installed (the `tpu` extra), no TPU needed. Nothing can
  be allocated on those devices.
- `compile_only(lowered)`: compiles for such a mesh (libtpu's noise dropped, past JAX's
  persistent compilation cache, which cannot load executables for compile-only devices).
- `select_platform()`: what the `z1` command line runs on (see its docstring), and
  `quiet_libtpu()`, which keeps libtpu's start-up noise on a host without chips from users.

Imports JAX only inside functions: the command line calls `select_platform` before JAX starts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import sys
import tempfile
from typing import Mapping, Sequence

from z1_jax.errors import Z1Error

GiB = 2**30
MESH_AXES = ("data", "fsdp", "tensor")


@dataclasses.dataclass(frozen=True)
class Generation:
  name: str  # "v5p"
  topology_prefix: str  # what the TPU compiler calls it: "v5"
  chip_config: str  # "megacore" (one device per chip, both cores) or "default"
  cores_per_chip_in_name: int  # v4-8 / v5p-8 count TensorCores (4 chips); v5e/v6e count chips
  hbm_bytes: int  # per chip, as the TPU compiler reports it available (RESOURCE_EXHAUSTED)
  dims: int  # 3-D torus (v4, v5p) or 2-D (v5e, v6e)
  ici_bytes_per_s: float  # per chip, bidirectional inter-chip interconnect (see ICI below)


# HBM: measured here with libtpu 0.0.42.1 (the "available HBM" of a RESOURCE_EXHAUSTED
# message): v4 30.75G, v5p 95.74G, v5e 15.75G, v6e 31.25G of the nominal 32/95/16/32 GB.
# ICI: Cloud TPU's system-architecture pages (docs.cloud.google.com/tpu/docs/v5e, v5p, v6e):
# "bidirectional inter-chip interconnect bandwidth per chip" 400, 1200, 800 GB/s; v4's page
# gives only the pod's all-reduce bandwidth, 1.1 PB/s over 4096 chips (268.6 GB/s per chip).
GENERATIONS = {
    "v4": Generation("v4", "v4", "megacore", 2, int(30.75 * GiB), 3, 1.1e15 / 4096),
    "v5p": Generation("v5p", "v5", "megacore", 2, int(95.74 * GiB), 3, 1200e9),
    "v5e": Generation("v5e", "v5e", "default", 1, int(15.75 * GiB), 2, 400e9),
    "v6e": Generation("v6e", "v6e", "default", 1, int(31.25 * GiB), 2, 800e9),
}
ALIASES = {"v5litepod": "v5e"}

# chips -> chip grid, as Cloud TPU lays out its slice shapes (MaxText's table).
_GRIDS_3D = {
    4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4), 128: (4, 4, 8),
    192: (4, 4, 12), 256: (4, 8, 8), 384: (4, 8, 12), 512: (8, 8, 8), 768: (8, 8, 12),
    1024: (8, 8, 16), 1536: (8, 12, 16), 2048: (8, 16, 16), 3072: (12, 16, 16),
    4096: (16, 16, 16),
}
_GRIDS_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8),
             128: (8, 16), 256: (16, 16)}


@dataclasses.dataclass(frozen=True)
class Accelerator:
  """One Cloud TPU slice type."""
  name: str  # as given, canonical spelling: "v5p-64", "v5e-16"
  generation: Generation
  chips: int
  grid: tuple[int, ...]  # chips along each torus axis
  chips_per_host: tuple[int, int, int]  # chips of one TPU VM (one JAX process)
  wrap: tuple[bool, bool, bool]  # wrap-around links (full torus) per axis

  @property
  def topology(self) -> str:
    return f"{self.generation.topology_prefix}:{'x'.join(map(str, self.grid))}"

  @property
  def chip_config(self) -> str:
    return self.generation.chip_config

  @property
  def hbm_bytes(self) -> int:
    return self.generation.hbm_bytes

  @property
  def hosts(self) -> int:
    """TPU VMs of the slice: the JAX processes (`z1 launch`'s workers)."""
    return max(1, self.chips // math.prod(self.chips_per_host))


def _make(gen: Generation, name: str, chips: int) -> Accelerator:
  if gen.dims == 3:
    grid = _GRIDS_3D[chips]
    # Full tori (wrap-around links) from 4x4x4 upward; smaller slices are open meshes.
    wrap = (True,) * 3 if min(grid) >= 4 else (False,) * 3
  else:
    grid = _GRIDS_2D[chips]
    wrap = tuple(d >= 16 for d in grid) + (False,)
  # One JAX process per TPU VM. v4 / v5p VMs carry 4 chips (2x2x1). v5e / v6e: slices of 1, 4
  # and 8 chips are one VM holding them all (`ct5lp-hightpu-1t/-4t/-8t`); every larger slice is
  # made of 4-chip VMs (`ct5lp-hightpu-4t`, `ct6e-standard-4t`), so v5litepod-16 is 4 VMs
  # (xpk's chips_per_vm = 4, MaxText's chips_per_host_bounds (2, 2, 1)). Cloud TPU's v5e page
  # counts 2 physical hosts for v5litepod-16: each carries two such VMs.
  if chips == 1:
    per_host = (1, 1, 1)
  elif gen.dims == 2 and chips == 8:
    per_host = (2, 4, 1)
  else:
    per_host = (2, 2, 1)
  return Accelerator(name, gen, chips, grid, per_host, wrap)


def _table() -> dict[str, Accelerator]:
  out = {}
  for gen in GENERATIONS.values():
    grids = _GRIDS_3D if gen.dims == 3 else _GRIDS_2D
    for chips in grids:
      if gen.name == "v4" and chips > 2048:  # the largest v4 slice is v4-4096
        continue
      name = f"{gen.name}-{chips * gen.cores_per_chip_in_name}"
      out[name] = _make(gen, name, chips)
  return out


ACCELERATORS: dict[str, Accelerator] = _table()


def accelerator(name: str) -> Accelerator:
  """`"v5p-64"`, `"v5litepod-16"` / `"v5e-16"`, `"v4-32"`, `"v6e-8"` -> `Accelerator`."""
  m = re.fullmatch(r"([a-z0-9]+)-(\d+)", name.strip().lower())
  if m:
    key = f"{ALIASES.get(m.group(1), m.group(1))}-{m.group(2)}"
    if key in ACCELERATORS:
      return ACCELERATORS[key]
  by_gen: dict[str, list[str]] = {}
  for key, acc in ACCELERATORS.items():
    by_gen.setdefault(acc.generation.name, []).append(key.split("-")[1])
  valid = "; ".join(f"{g}-{{{','.join(n)}}}" for g, n in by_gen.items())
  raise Z1Error(f"unknown accelerator {name!r}: expected a Cloud TPU slice name, one of "
                f"{valid} (v5litepod-N is v5e-N; v4-N and v5p-N count TensorCores, 2 per chip)")


def resolve_mesh_shape(mesh_shape: Mapping[str, int] | Sequence[int] | None, devices: int,
                       axis_names: Sequence[str] = MESH_AXES) -> dict[str, int]:
  """`{"fsdp": -1}` / `(1, -1, 2)` / None (all on fsdp) -> a full `{axis: size}` over `devices`.

  Missing axes are 1; one axis may be -1 (the rest of the devices). Raises `Z1Error`.
  """
  if mesh_shape is None:
    mesh_shape = {"fsdp": -1}
  if not isinstance(mesh_shape, Mapping):
    if len(mesh_shape) != len(axis_names):
      raise Z1Error(f"mesh {tuple(mesh_shape)}: expected {len(axis_names)} sizes "
                    f"({', '.join(axis_names)})")
    mesh_shape = dict(zip(axis_names, mesh_shape))
  unknown = set(mesh_shape) - set(axis_names)
  if unknown:
    raise Z1Error(f"mesh axes {sorted(unknown)} unknown; expected {', '.join(axis_names)}")
  shape = {a: int(mesh_shape.get(a, 1)) for a in axis_names}
  text = ",".join(f"{a}={s}" for a, s in shape.items())
  if any(s == 0 or s < -1 for s in shape.values()):
    raise Z1Error(f"mesh {text}: sizes must be >= 1 (or one -1)")
  free = [a for a, s in shape.items() if s == -1]
  if len(free) > 1:
    raise Z1Error(f"mesh {text}: at most one axis may be -1")
  known = math.prod(s for s in shape.values() if s != -1)
  if free:
    if devices % known:
      raise Z1Error(f"mesh {text}: {devices} devices do not divide by {known}")
    shape[free[0]] = devices // known
  if math.prod(shape.values()) != devices:
    raise Z1Error(f"mesh {text} has {math.prod(shape.values())} devices; the target has "
                  f"{devices}")
  return shape


def topology_devices(acc: Accelerator | str, num_slices: int = 1) -> list:
  """The compile-only TPU devices of a slice (needs libtpu; no TPU chips needed)."""
  acc = accelerator(acc) if isinstance(acc, str) else acc
  try:
    import libtpu  # noqa: F401 - only to say clearly what is missing
  except ImportError:
    raise Z1Error(f"compiling for {acc.name} needs libtpu: pip install 'z1-jax[tpu]' (or plan "
                  "on CPU devices instead)") from None
  if not tpu_chips_on_host():
    # libtpu takes /tmp/libtpu_lockfile to guard the chips; with none here it only guards
    # compilers, and would fail a second process (a parallel test worker, another user).
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from jax.experimental import topologies
  with quiet_libtpu():
    topo = topologies.get_topology_desc(
        topology_name=acc.topology, platform="tpu", chip_config_name=acc.chip_config,
        chips_per_host_bounds=acc.chips_per_host, num_slices=num_slices, wrap=acc.wrap)
  return list(topo.devices)


def topology_mesh(acc: Accelerator | str,
                  mesh_shape: Mapping[str, int] | Sequence[int] | None = None,
                  axis_names: Sequence[str] = MESH_AXES):
  """A `Mesh` over the compile-only devices of one slice, e.g. `topology_mesh("v5p-64",
  {"data": 2, "fsdp": 16})`; devices are ordered along the torus (`create_device_mesh`)."""
  from jax.experimental import mesh_utils
  from jax.sharding import AxisType, Mesh
  acc = accelerator(acc) if isinstance(acc, str) else acc
  devices = topology_devices(acc)
  shape = resolve_mesh_shape(mesh_shape, len(devices), axis_names)
  # Splits a torus axis only when no product of whole axes matches (e.g. 8x2 on a 4x4 v5e).
  grid = mesh_utils.create_device_mesh(tuple(shape.values()), devices=devices,
                                       allow_split_physical_axes=True)
  return Mesh(grid, tuple(shape), axis_types=(AxisType.Auto,) * len(shape))


# -- what the command line runs on ------------------------------------------------------------

def tpu_chips_on_host() -> bool:
  """Whether this host has TPU chips: the device files libtpu opens (`/dev/accel*` on v2-v5e,
  `/dev/vfio/N` on v5p/v6e). Cheap, and without starting JAX."""
  import glob
  return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def select_platform() -> str | None:
  """The platform choice of the `z1` command line; call before JAX starts a backend.

  - `JAX_PLATFORMS` set: used as is (e.g. `JAX_PLATFORMS=tpu` on a TPU VM, `cpu` to force CPU).
  - Unset, libtpu installed, and no TPU chip on this host: z1 runs on the CPU (or GPU where an
    NVIDIA device is visible) and says so on stderr in one line, instead of letting libtpu
    probe for chips that are not there (slow and noisy). Compiling *for* a TPU slice
    (`z1 plan --accelerator`) still works: it needs libtpu, not chips.
  - Otherwise JAX's own choice (TPU chips or GPUs when present, else CPU).
  Returns the platforms chosen, or None when nothing was changed.
  """
  if os.environ.get("JAX_PLATFORMS"):
    return None
  import importlib.util
  if importlib.util.find_spec("libtpu") is None or tpu_chips_on_host():
    return None
  gpu = any(os.path.exists(p) for p in ("/dev/nvidia0", "/dev/nvidiactl", "/dev/dxg"))
  platforms = "cuda,cpu" if gpu else "cpu"
  if "jax" in sys.modules:  # JAX reads JAX_PLATFORMS when imported; after that, its config
    import jax
    jax.config.update("jax_platforms", platforms)
  else:
    os.environ["JAX_PLATFORMS"] = platforms
  print(f"z1: libtpu is installed but this host has no TPU chips: running on {platforms} "
        "(set JAX_PLATFORMS to choose)", file=sys.stderr)
  return platforms


# libtpu's start-up lines on a host without TPU chips (it probes the TPU VM metadata); they say
# nothing about compiling for a topology.
_NOISE = re.compile(
    r"could not determine TPU|Failed to find host bounds|Logging before InitGoogle|"
    r"unexpected worker hostname|=== Source Location Trace|libtpu_init_utils|"
    r"^\s*(learning|platforms|third_party)/\S+:\d+\s*$|TPU_WORKER_HOSTNAMES|"
    r"TPU_ACCELERATOR_TYPE|ALLOW_MULTIPLE_LIBTPU_LOAD")


def compile_only(lowered):
  """`lowered.compile()` for a plan: libtpu's start-up noise dropped, and JAX's persistent
  compilation cache bypassed (an executable for compile-only devices cannot be loaded back
  without a client: JAX would warn and compile again, and fill the cache with unusable entries)."""
  from z1_jax.compile_cache import bypassed
  with bypassed(), quiet_libtpu():
    return lowered.compile()


@contextlib.contextmanager
def quiet_libtpu():
  """Drops libtpu's start-up noise written to fd 2 inside the block; other lines pass."""
  try:
    fd = sys.stderr.fileno()
  except (AttributeError, ValueError, OSError):  # captured stderr (pytest): nothing to filter
    yield
    return
  sys.stderr.flush()
  saved = os.dup(fd)
  with tempfile.TemporaryFile(mode="w+b") as tmp:
    os.dup2(tmp.fileno(), fd)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, fd)
      os.close(saved)
      tmp.seek(0)
      kept = [line for line in tmp.read().decode(errors="replace").splitlines(keepends=True)
              if not _NOISE.search(line)]
      if kept:
        sys.stderr.write("".join(kept))
        sys.stderr.flush()
