"""What a run was trained on: a fingerprint of the dataset and of its packed rows.

Recorded in the run's `z1_run.json`; a resumed run whose data differs is refused (its schedule
length and shuffle order would change), unless `train.resume_on_changed_data = true`. On a pod
the hosts compare their fingerprints before training (through the distributed runtime's
key-value store, no device collective), so a host that read another file (a local path that
differs per host, a dataset updated in between) stops the run with a message instead of
training on rows the others do not have.
"""

from __future__ import annotations

import hashlib

import numpy as np

from z1_jax.errors import Z1Error


def fingerprint(packed) -> dict:
  """{"examples", "tokens", "rows", "encoded": sha256 of the tokenized examples, "packed": sha256
  of the packing (rows, their members and lengths, seq_len)}."""
  enc = packed.encoded
  h = hashlib.sha256()
  for a in (enc.tokens, enc.offsets, enc.prompt_lens):
    h.update(np.ascontiguousarray(a).tobytes())
  p = hashlib.sha256(h.digest())
  p.update(np.asarray([packed.seq_len, packed.pad_id, len(packed.rows)], np.int64).tobytes())
  p.update(np.ascontiguousarray(packed.used, dtype=np.int64).tobytes())
  for row in packed.rows:
    p.update(np.asarray(row, np.int64).tobytes())
    p.update(b"|")
  return {"examples": len(enc), "tokens": int(enc.tokens.size), "rows": len(packed.rows),
          "encoded": h.hexdigest(), "packed": p.hexdigest()}


def check_same_on_every_host(fp: dict, what: str = "packed dataset") -> None:
  """All processes hold the same `fp` (a no-op for one process), else a Z1Error on each naming
  the processes that differ. Compared through the distributed runtime's key-value store
  (`distributed.gather`), as `train.loop.check_same_config` compares the configs."""
  import jax
  from z1_jax.distributed import gather
  every = gather("data", fp["packed"])
  differ = [i for i, v in enumerate(every) if v != every[0]]
  if differ:
    raise Z1Error(f"the hosts do not hold the same {what}: process(es) {differ} differ from "
                  f"process 0 (this is process {jax.process_index()}: {fp['rows']} rows, "
                  f"{fp['examples']} examples, packed sha256 {fp['packed'][:16]}...). Give every "
                  "host the same data.dataset (a path all hosts read alike, or a hub id)")


def check_resume(before: dict | None, now: dict, run_file, allow: bool) -> None:
  if before is None or allow:
    return
  for key in ("encoded", "packed"):
    if before.get(key) != now[key]:
      raise Z1Error(
          f"{run_file}: the data differs from the run's ({'tokenized examples' if key == 'encoded' else 'packed rows'}: "
          f"{before.get('examples')} examples / {before.get('rows')} rows then, "
          f"{now['examples']} / {now['rows']} now); resuming would change the schedule and the "
          "shuffle order. Use the same data, a new --out, or set "
          "train.resume_on_changed_data=true to resume anyway")
