"""Packing tokenized examples into fixed-length rows with segment ids.

A packed row of length `seq_len` holds whole examples one after another, then padding:
  inputs       token ids (padding: `pad_id`, a real token, so never used to build masks)
  segment_ids  1, 2, ... per example, 0 on padding
  positions    0.. restarting at every example
  targets      the next token *within the same example* (0 where there is none)
  loss_mask    1 iff `targets` is a target token of its example (response or `<|im_end|>`)
Targets never cross an example boundary, and attention (from segment ids) never does either.
"""

from __future__ import annotations

import bisect
import dataclasses
import os
from pathlib import Path

import numpy as np

from z1_jax.data.encode import Encoded
from z1_jax.data.sources import write_jsonl
from z1_jax.errors import Z1Error

ROW_FIELDS = ("inputs", "targets", "segment_ids", "positions", "loss_mask")


@dataclasses.dataclass
class FitReport:
  """What the overlong policy did: never silent."""
  kept: int = 0
  truncated: int = 0  # response cut to fit seq_len
  dropped: int = 0  # longer than seq_len (policy "drop"), or prompt alone does not fit


def fit_lengths(encoded: Encoded, seq_len: int, overlong: str = "truncate"):
  """Per example: tokens used (0 = dropped), after the overlong policy; and a report."""
  if overlong not in ("truncate", "drop"):
    raise Z1Error(f"overlong={overlong!r}: expected 'truncate' or 'drop'")
  lengths = encoded.lengths
  used = np.minimum(lengths, seq_len)
  over = lengths > seq_len
  if overlong == "drop":
    used[over] = 0
  else:
    used[over & (encoded.prompt_lens >= seq_len)] = 0  # not even one target token would fit
  report = FitReport(kept=int((used > 0).sum()), dropped=int((used == 0).sum()),
                     truncated=int((over & (used > 0)).sum()))
  return used, report


def select_by_tokens(lengths: np.ndarray, total_tokens: int, order: str = "shortest"):
  """Indices of examples, shortest- or longest-first, up to `total_tokens` tokens (Z1 ablation)."""
  if order not in ("shortest", "longest"):
    raise Z1Error(f"order={order!r}: expected 'shortest' or 'longest'")
  keys = lengths if order == "shortest" else -lengths
  idx = np.argsort(keys, kind="stable")
  within = np.cumsum(lengths[idx]) <= total_tokens
  return np.sort(idx[within])


def pack_best_fit(lengths: np.ndarray, seq_len: int) -> list[list[int]]:
  """Best-fit decreasing: each example (longest first) goes into the fullest row it fits.

  Zero lengths are skipped. Deterministic; rows list example indices in placement order.
  """
  order = sorted((i for i in range(len(lengths)) if lengths[i] > 0),
                 key=lambda i: (-int(lengths[i]), i))
  rows: list[list[int]] = []
  free: list[tuple[int, int]] = []  # sorted (remaining capacity, row id)
  for i in order:
    n = int(lengths[i])
    if n > seq_len:
      raise ValueError(f"example {i} has {n} tokens > seq_len {seq_len}; apply fit_lengths")
    j = bisect.bisect_left(free, (n, -1))
    if j < len(free):
      remaining, row = free.pop(j)
    else:
      remaining, row = seq_len, len(rows)
      rows.append([])
    rows[row].append(i)
    if remaining - n > 0:
      bisect.insort(free, (remaining - n, row))
  return rows


def build_row(encoded: Encoded, members: list[int], used: np.ndarray, seq_len: int,
              pad_id: int) -> dict[str, np.ndarray]:
  """The arrays of one packed row (see the module docstring)."""
  row = {name: np.zeros(seq_len, np.int32) for name in ROW_FIELDS}
  row["inputs"][:] = pad_id
  at = 0
  for seg, i in enumerate(members, start=1):
    n = int(used[i])
    ids = encoded.ids(i)[:n]
    row["inputs"][at:at + n] = ids
    row["segment_ids"][at:at + n] = seg
    row["positions"][at:at + n] = np.arange(n)
    row["targets"][at:at + n - 1] = ids[1:]
    # target at j is token j+1: a loss token iff j+1 lies in the response part
    row["loss_mask"][at + max(int(encoded.prompt_lens[i]) - 1, 0):at + n - 1] = 1
    at += n
  return row


@dataclasses.dataclass
class Packed:
  """Packed rows of an encoded dataset; rows are built on demand."""
  encoded: Encoded
  rows: list[list[int]]
  used: np.ndarray
  seq_len: int
  pad_id: int
  report: FitReport

  def __len__(self) -> int:
    return len(self.rows)

  def __getitem__(self, r: int) -> dict[str, np.ndarray]:
    return build_row(self.encoded, self.rows[r], self.used, self.seq_len, self.pad_id)

  @property
  def efficiency(self) -> float:
    """Non-padding fraction of all packed slots."""
    return float(self.used.sum()) / max(len(self.rows) * self.seq_len, 1)


def pack(encoded: Encoded, seq_len: int, pad_id: int, overlong: str = "truncate",
         select_tokens: int | None = None, select_order: str = "shortest") -> Packed:
  used, report = fit_lengths(encoded, seq_len, overlong)
  if select_tokens is not None:
    keep = np.zeros(len(used), bool)
    keep[select_by_tokens(used, select_tokens, select_order)] = True
    used = np.where(keep, used, 0)
  return Packed(encoded, pack_best_fit(used, seq_len), used, seq_len, pad_id, report)


def write_rows(packed: Packed, out: str | os.PathLike) -> Path:
  """Packed rows as JSONL (one row per line, with its example sources), written atomically."""

  def rows():
    for r, members in enumerate(packed.rows):
      row = {k: v.tolist() for k, v in packed[r].items()}
      row["examples"] = [packed.encoded.sources[i] for i in members]
      yield row

  return write_jsonl(rows(), out)
