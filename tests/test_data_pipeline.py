"""grain pipeline: exact resume in a new process, and disjoint complete shards over 2 hosts."""

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

from z1_jax.data.encode import EncodeConfig, encode_dataset
from z1_jax.data.pack import pack
from z1_jax.data.pipeline import GlobalBatches, PipelineConfig, global_dataset
from z1_jax.data.sources import sample_dataset_path
from z1_jax.model.sharding import make_mesh

WORKER = str(Path(__file__).with_name("data_worker.py"))


def _packed(seq_len=128):
  return pack(encode_dataset(EncodeConfig(str(sample_dataset_path())), progress=False), seq_len,
              151643)


def _run(*args, timeout=240):
  subprocess.run([sys.executable, WORKER, *map(str, args)], check=True, timeout=timeout)


def test_epochs_are_complete_and_reshuffled():
  packed = _packed()
  ds = global_dataset(packed, PipelineConfig(global_batch=1, seed=5, epochs=2))
  ids = [int(ds[i][0]) for i in range(len(ds))]
  n = len(packed)
  assert sorted(ids[:n]) == list(range(n)) and sorted(ids[n:]) == list(range(n))
  assert ids[:n] != ids[n:]  # a new order each epoch
  again = global_dataset(packed, PipelineConfig(global_batch=1, seed=5, epochs=2))
  assert [int(again[i][0]) for i in range(len(again))] == ids  # seeded


def test_global_batches_are_sharded_arrays():
  packed = _packed()
  batches = GlobalBatches(packed, PipelineConfig(global_batch=4, seed=1), make_mesh(2, 2, 2))
  batch = next(batches)
  assert batch["inputs"].shape == (4, 128) and batch["inputs"].dtype == np.int32
  assert batch["inputs"].sharding.spec[0] == ("data", "fsdp")
  expected = np.stack([packed[int(i)]["inputs"] for i in batch["row_id"]])
  assert np.array_equal(np.asarray(batch["inputs"]), expected)


def test_resume_in_new_process_continues_exactly(tmp_path):
  _run("run", tmp_path / "full.json", 6)
  _run("run", tmp_path / "first.json", 3, "save", tmp_path / "state.json")
  _run("run", tmp_path / "rest.json", 3, "restore", tmp_path / "state.json")
  full = json.loads((tmp_path / "full.json").read_text())["batches"]
  first = json.loads((tmp_path / "first.json").read_text())["batches"]
  rest = json.loads((tmp_path / "rest.json").read_text())["batches"]
  assert first == full[:3]
  assert rest == full[3:]
  assert rest[0]["row_id"] != first[0]["row_id"] or rest[0]["inputs"] != first[0]["inputs"]


def test_two_hosts_get_disjoint_complete_shards(tmp_path):
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  procs = [subprocess.Popen([sys.executable, WORKER, "multihost",
                             str(tmp_path / f"h{i}.json"), str(i), str(port)])
           for i in range(2)]
  for p in procs:
    assert p.wait(timeout=240) == 0
  results = [json.loads((tmp_path / f"h{i}.json").read_text()) for i in range(2)]
  rows0, rows1 = results[0]["rows"], results[1]["rows"]
  assert set(rows0).isdisjoint(rows1)
  assert sorted(rows0 + rows1) == list(range(len(_packed())))  # 12 rows, 3 global batches
  assert all(shape == [4, 128] for r in results for shape in r["shapes"])
