"""The grain input pipeline: packed rows -> seeded shuffle per epoch -> global batches of row
ids -> the rows this host's devices hold -> global sharded `jax.Array`s.

Every host builds the same stream of global batches (row ids only: cheap). Which rows of a
batch a host must feed comes from the batch sharding's device-to-index map: the union of the
row ranges its addressable devices hold. With the batch split over `data`/`fsdp` and a `tensor`
axis that crosses hosts, two hosts hold (and feed) the same rows; with the batch axis across
hosts they feed disjoint rows. Each host builds only its own rows. The iterator state
(`get_state` / `set_state`, JSON-able) resumes on exactly the next batch; the trainer stores it
in its Orbax checkpoint.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import grain
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding

from z1_jax.data.pack import ROW_FIELDS, Packed
from z1_jax.errors import Z1Error
from z1_jax.model.sharding import LogicalRules


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  global_batch: int
  seed: int = 42
  epochs: int = 2
  shuffle: bool = True  # False: rows in order (held-out evaluation)


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


def global_dataset(packed: Packed, cfg: PipelineConfig) -> grain.MapDataset:
  """Global batches of row ids (`[global_batch]` int arrays); the tail of the stream is dropped."""
  if len(packed) < cfg.global_batch:
    raise Z1Error(f"{len(packed)} packed rows cannot fill one global batch of "
                  f"{cfg.global_batch}; lower global_batch or add data")
  ds = grain.MapDataset.range(len(packed))
  if cfg.shuffle:
    ds = ds.shuffle(seed=cfg.seed)
  return ds.repeat(cfg.epochs).batch(cfg.global_batch, drop_remainder=True)


def host_rows(sharding: NamedSharding, shape: tuple[int, ...]) -> np.ndarray:
  """Sorted positions along axis 0 that this process's devices hold under `sharding`."""
  rows: set[int] = set()
  for index in sharding.addressable_devices_indices_map(shape).values():
    rows.update(range(*index[0].indices(shape[0])))
  return np.asarray(sorted(rows), np.int64)


def batch_sharding(mesh: Mesh, global_batch: int, seq_len: int) -> NamedSharding:
  return LogicalRules(mesh).sharding(("batch", "seq"), (global_batch, seq_len))


class GlobalBatches:
  """Iterates global batches as `jax.Array`s sharded `(batch, seq)` over the mesh.

  `row_id` (host numpy, `[global_batch]`) names the packed rows of the whole batch, in order.
  """

  def __init__(self, packed: Packed, cfg: PipelineConfig, mesh: Mesh):
    self.packed = packed
    self.shape = (cfg.global_batch, packed.seq_len)
    self.sharding = batch_sharding(mesh, *self.shape)
    if jax.process_count() > 1 and self.sharding.spec[0] is None:
      raise Z1Error(f"global_batch={cfg.global_batch} must be divisible by the mesh's "
                    f"data*fsdp size {mesh.shape['data'] * mesh.shape['fsdp']} on "
                    f"{jax.process_count()} hosts (each host feeds its own rows)")
    self.rows = host_rows(self.sharding, self.shape)
    self.dataset = global_dataset(packed, cfg)
    self._iter = iter(self.dataset.to_iter_dataset())

  def __len__(self) -> int:
    return len(self.dataset)

  def __iter__(self) -> Iterator[dict[str, jax.Array]]:
    return self

  def _local(self, row_ids: np.ndarray) -> dict[str, np.ndarray]:
    built = [self.packed[int(r)] for r in row_ids[self.rows]]  # only the rows this host feeds
    return {k: np.stack([row[k] for row in built]) for k in ROW_FIELDS}

  def __next__(self) -> dict[str, jax.Array]:
    row_ids = np.asarray(next(self._iter))
    local = self._local(row_ids)

    def piece(name):
      def cb(index):
        wanted = np.arange(*index[0].indices(self.shape[0]))
        return local[name][np.searchsorted(self.rows, wanted)][:, index[1]]
      return cb

    out = {k: jax.make_array_from_callback(self.shape, self.sharding, piece(k))
           for k in ROW_FIELDS}
    out["row_id"] = row_ids
    return out

  def get_state(self) -> dict:
    return self._iter.get_state()

  def set_state(self, state: dict) -> None:
    self._iter.set_state(state)
