"""The grain input pipeline: packed rows -> seeded shuffle per epoch -> this host's share ->
local batches -> global sharded `jax.Array`s.

Every host builds the same shuffled stream and takes rows `process_index::process_count`, so
hosts read disjoint rows whose union is the stream. The iterator state (`get_state` /
`set_state`, JSON-able) resumes on exactly the next batch; the trainer stores it in its Orbax
checkpoint.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import grain
import jax
import numpy as np
from jax.sharding import Mesh

from z1_jax.data.pack import ROW_FIELDS, Packed
from z1_jax.model.sharding import LogicalRules


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  global_batch: int
  seed: int = 42
  epochs: int = 2


class PackedSource:
  """grain random-access source over packed rows (row dicts built on demand)."""

  def __init__(self, packed: Packed):
    self.packed = packed

  def __len__(self) -> int:
    return len(self.packed)

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    row = self.packed[int(i)]
    row["row_id"] = np.asarray(i, np.int32)
    return row


def host_dataset(packed: Packed, cfg: PipelineConfig, process_index: int | None = None,
                 process_count: int | None = None) -> grain.MapDataset:
  """This host's batches: `global_batch / process_count` rows each; the tail is dropped."""
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  if cfg.global_batch % count:
    raise ValueError(f"global_batch={cfg.global_batch} is not divisible by {count} hosts")
  local_batch = cfg.global_batch // count
  if len(packed) < cfg.global_batch:
    raise ValueError(f"{len(packed)} packed rows cannot fill one global batch of "
                     f"{cfg.global_batch}; lower global_batch or add data")
  ds = grain.MapDataset.source(PackedSource(packed)).shuffle(seed=cfg.seed).repeat(cfg.epochs)
  return ds[index::count].batch(local_batch, drop_remainder=True)


class GlobalBatches:
  """Iterates global batches as `jax.Array`s sharded `(batch, seq)` over the mesh."""

  def __init__(self, packed: Packed, cfg: PipelineConfig, mesh: Mesh):
    self.dataset = host_dataset(packed, cfg)
    self._iter = iter(self.dataset.to_iter_dataset())
    self.rules = LogicalRules(mesh)
    self.sharding = self.rules.sharding(("batch", "seq"), (cfg.global_batch, packed.seq_len))
    if jax.process_count() > 1 and self.sharding.spec[0] is None:
      raise ValueError(f"global_batch={cfg.global_batch} must be divisible by the mesh's "
                       f"data*fsdp size {mesh.shape['data'] * mesh.shape['fsdp']} on "
                       f"{jax.process_count()} hosts (each host feeds its own rows)")

  def __len__(self) -> int:
    return len(self.dataset)

  def __iter__(self) -> Iterator[dict[str, jax.Array]]:
    return self

  def __next__(self) -> dict[str, jax.Array]:
    local = next(self._iter)
    out = {k: jax.make_array_from_process_local_data(self.sharding, local[k]) for k in ROW_FIELDS}
    out["row_id"] = local["row_id"]  # host-local, for inspection and tests
    return out

  def get_state(self) -> dict:
    return self._iter.get_state()

  def set_state(self, state: dict) -> None:
    self._iter.set_state(state)
