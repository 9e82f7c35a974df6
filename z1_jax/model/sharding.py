"""The one logical-axis table, and the mesh it maps onto.

Every parameter and every constrained activation names its dimensions with logical axes
(`embed`, `q_heads`, ...). `LogicalRules` maps those names onto the mesh axes `data`, `fsdp`,
`tensor`. A dimension whose size is not divisible by its mesh axes is replicated instead: this
is how 4 KV heads run on a tensor axis of 8 (K/V projections and the KV cache are replicated
over `tensor`; the 28 query heads of 7B likewise fall back to replicated when tensor=8, while
their MLP and vocab dimensions stay split).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axes. Parameters use the plain names; activations the `act_` ones.
DEFAULT_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("batch", ("data", "fsdp")),
    ("seq", ()),
    ("cache_seq", ()),
    ("layers", ()),
    ("embed", ("fsdp",)),
    ("vocab", ("tensor",)),
    ("q_heads", ("tensor",)),
    ("kv_heads", ("tensor",)),
    ("head_dim", ()),
    ("mlp", ("tensor",)),
    ("norm", ()),
    ("act_embed", ()),
    ("act_heads", ("tensor",)),
    ("act_kv_heads", ("tensor",)),
    ("act_mlp", ("tensor",)),
    ("act_vocab", ("tensor",)),
)

# Serving (decode) table, chosen at load time (`LogicalRules(mesh, SERVING_RULES)`): every
# weight is read once per token, so none may be gathered per step. Batch over `data`, heads /
# MLP / vocab over `tensor`, nothing over `fsdp` (serving meshes have fsdp=1).
SERVING_RULES: tuple[tuple[str, tuple[str, ...]], ...] = tuple(
    (name, ("data",) if name == "batch" else () if name == "embed" else axes)
    for name, axes in DEFAULT_RULES)


@dataclasses.dataclass(frozen=True)
class LogicalRules:
  """Maps logical axis names to mesh axes for one mesh."""
  mesh: Mesh
  rules: tuple[tuple[str, tuple[str, ...]], ...] = DEFAULT_RULES

  def __post_init__(self):
    names = [name for name, _ in self.rules]
    if len(set(names)) != len(names):
      raise ValueError(f"logical axis named twice in rules: {names}")
    for name, axes in self.rules:
      unknown = set(axes) - set(self.mesh.axis_names)
      if unknown:
        raise ValueError(f"rule {name!r} -> {axes} uses mesh axes {sorted(unknown)} not in "
                         f"mesh {self.mesh.axis_names}")

  def spec(self, logical: Sequence[str | None], shape: Sequence[int] | None = None) -> P:
    table = dict(self.rules)
    used: dict[str, str] = {}
    out = []
    for i, name in enumerate(logical):
      if name is None:
        out.append(None)
        continue
      if name not in table:
        raise KeyError(f"logical axis {name!r} has no rule; known: {sorted(table)}")
      axes = tuple(a for a in table[name] if self.mesh.shape[a] > 1)
      if shape is not None and axes:
        if shape[i] % math.prod(self.mesh.shape[a] for a in axes):
          axes = ()  # not divisible: replicate this dimension (see module docstring)
      for a in axes:
        if a in used:
          raise ValueError(f"mesh axis {a!r} used twice in one spec: by logical axes "
                           f"{used[a]!r} and {name!r} (spec {tuple(logical)})")
        used[a] = name
      out.append(axes[0] if len(axes) == 1 else (axes or None))
    return P(*out)

  def sharding(self, logical: Sequence[str | None], shape: Sequence[int] | None = None):
    return NamedSharding(self.mesh, self.spec(logical, shape))

  def constrain(self, x: jax.Array, logical: Sequence[str | None]) -> jax.Array:
    return jax.lax.with_sharding_constraint(x, self.sharding(logical, x.shape))


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices=None) -> Mesh:
  """A `data x fsdp x tensor` mesh; one axis may be -1 (all remaining devices)."""
  devices = list(jax.devices() if devices is None else devices)
  shape = [data, fsdp, tensor]
  if shape.count(-1) > 1:
    raise ValueError(f"mesh (data={data}, fsdp={fsdp}, tensor={tensor}): at most one axis -1")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if len(devices) % known:
      raise ValueError(f"{len(devices)} devices do not divide into fsdp*tensor*data={known}")
    shape[shape.index(-1)] = len(devices) // known
  if math.prod(shape) != len(devices):
    raise ValueError(f"mesh data={shape[0]} x fsdp={shape[1]} x tensor={shape[2]} needs "
                     f"{math.prod(shape)} devices, have {len(devices)}")
  if len(devices) == len(jax.devices()):
    # Topology-aware device order (ICI rings on TPU); plain reshape for a device subset.
    devices = mesh_utils.create_device_mesh(tuple(shape), devices=devices)
  else:
    devices = np.asarray(devices).reshape(shape)
  return Mesh(devices, MESH_AXES, axis_types=(AxisType.Auto,) * 3)

