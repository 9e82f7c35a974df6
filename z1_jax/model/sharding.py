"""The one logical-axis table, and the mesh it maps onto.

Every parameter and every constrained activation names its dimensions with logical axes
(`embed`, `q_heads`, ...). `LogicalRules` maps those names onto the mesh axes `data`, `fsdp`,
`tensor`. A dimension whose size does not divide over its mesh axes is an error
(`UnevenShardingError`, naming the parameter or activation, the dimension, its size and the mesh
axes), never a silent copy of the work on every shard. The one exception is the allow-list
`REPLICATE_IF_UNEVEN`: K/V heads (`kv_heads`, `act_kv_heads`) are replicated over `tensor` when
there are fewer of them than tensor shards, e.g. 4 KV heads on tensor=8 (K/V projections and the
KV cache are then copied per shard, as Qwen2's few KV heads need; query heads stay split).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from z1_jax.errors import Z1Error


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

_HEAD_AXES = ("q_heads", "kv_heads", "act_heads", "act_kv_heads")


def serving_rules(mesh: Mesh, num_heads: int) -> "LogicalRules":
  """The serving table on `mesh` for a model with `num_heads` query heads.

  When the query heads do not divide over `tensor` (the 28 heads of 7B on tensor=8), attention
  is split over `head_dim` instead of heads: every shard holds all heads' slice of D (weights,
  queries and the KV cache), and scores and the o-projection are summed over `tensor`. An
  explicit layout choice that keeps the work split, instead of an error or a replication.
  """
  rules = SERVING_RULES
  if num_heads % mesh.shape["tensor"]:
    rules = tuple((name, () if name in _HEAD_AXES else ("tensor",) if name == "head_dim"
                   else axes) for name, axes in SERVING_RULES)
  return LogicalRules(mesh, rules)


# Logical axes replicated (not refused) when their size does not divide over their mesh axes.
REPLICATE_IF_UNEVEN = frozenset({"kv_heads", "act_kv_heads"})


class UnevenShardingError(Z1Error):
  """A dimension that does not divide over the mesh axes its logical axis maps to."""


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

  def spec(self, logical: Sequence[str | None], shape: Sequence[int] | None = None,
           name: str | None = None) -> P:
    """The `PartitionSpec` of an array with these logical axes (and, when given, this shape:
    checked to divide; `name` says which parameter or activation in the error)."""
    what = name or f"activation {tuple(logical)}"
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
        shards = math.prod(self.mesh.shape[a] for a in axes)
        if shape[i] % shards:
          if logical[i] not in REPLICATE_IF_UNEVEN:
            mesh_axes = " x ".join(f"{a}={self.mesh.shape[a]}" for a in axes)
            raise UnevenShardingError(
                f"{what} of shape {tuple(shape)}: dimension {i} ({logical[i]!r}, size "
                f"{shape[i]}) does not divide over mesh axes {mesh_axes} ({shards} shards); "
                f"choose a mesh whose {'*'.join(axes)} divides {shape[i]}")
          axes = ()  # allow-listed (K/V heads): replicated, see the module docstring
      for a in axes:
        if a in used:
          raise ValueError(f"mesh axis {a!r} used twice in one spec: by logical axes "
                           f"{used[a]!r} and {name!r} (spec {tuple(logical)})")
        used[a] = name
      out.append(axes[0] if len(axes) == 1 else (axes or None))
    return P(*out)

  def sharding(self, logical: Sequence[str | None], shape: Sequence[int] | None = None,
               name: str | None = None):
    return NamedSharding(self.mesh, self.spec(logical, shape, name))

  def constrain(self, x: jax.Array, logical: Sequence[str | None],
                name: str | None = None) -> jax.Array:
    return jax.lax.with_sharding_constraint(x, self.sharding(logical, x.shape, name))


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices=None) -> Mesh:
  """A `data x fsdp x tensor` mesh; one axis may be -1 (all remaining devices)."""
  devices = list(jax.devices() if devices is None else devices)
  shape = [data, fsdp, tensor]
  if shape.count(-1) > 1:
    raise Z1Error(f"mesh (data={data}, fsdp={fsdp}, tensor={tensor}): at most one axis -1")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if len(devices) % known:
      raise Z1Error(f"{len(devices)} devices do not divide into fsdp*tensor*data={known}")
    shape[shape.index(-1)] = len(devices) // known
  if math.prod(shape) != len(devices):
    raise Z1Error(f"mesh data={shape[0]} x fsdp={shape[1]} x tensor={shape[2]} needs "
                  f"{math.prod(shape)} devices, have {len(devices)}")
  if len(devices) == len(jax.devices()):
    # Topology-aware device order (ICI rings on TPU); plain reshape for a device subset.
    devices = mesh_utils.create_device_mesh(tuple(shape), devices=devices)
  else:
    devices = np.asarray(devices).reshape(shape)
  return Mesh(devices, MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def mesh_from_spec(shape: dict[str, int] | None, flag: str = "--mesh") -> Mesh | None:
  """A `--mesh` value (`cli_args.mesh_spec`: {"data", "fsdp", "tensor"}) -> Mesh, or None for
  one device; a shape that does not fit the devices is a `Z1Error` naming the flag."""
  if shape is None:
    return None
  try:
    return make_mesh(shape["data"], shape["fsdp"], shape["tensor"])
  except ValueError as e:
    text = ",".join(str(v) for v in shape.values())
    raise Z1Error(f"{flag} {text}: {e}") from None
