"""Subprocess helper for the data pipeline tests (resume in a new process, multi-host).

usage: data_worker.py multihost OUT_JSON PROCESS_ID PORT
       data_worker.py run OUT_JSON N_BATCHES [save|restore STATE_JSON]
"""

import json
import os
import sys

mode, out_path = sys.argv[1], sys.argv[2]
if mode == "multihost":
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
else:
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"

import jax  # noqa: E402

if mode == "multihost":
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{sys.argv[4]}", num_processes=2,
                             process_id=int(sys.argv[3]))

import numpy as np  # noqa: E402

from z1_jax.data.encode import EncodeConfig, encode_dataset  # noqa: E402
from z1_jax.data.pack import pack  # noqa: E402
from z1_jax.data.pipeline import GlobalBatches, PipelineConfig  # noqa: E402
from z1_jax.data.sources import sample_dataset_path  # noqa: E402
from z1_jax.model.sharding import make_mesh  # noqa: E402

encoded = encode_dataset(EncodeConfig(str(sample_dataset_path())), progress=False)
packed = pack(encoded, 128, 151643)  # 12 examples, truncated to 128 tokens: 12 rows

if mode == "multihost":
  batches = GlobalBatches(packed, PipelineConfig(global_batch=4, seed=7, epochs=1),
                          make_mesh(2, 2, 2))
  rows, shapes = [], []
  for batch in batches:
    rows += batch["row_id"][batches.rows].tolist()  # the rows this host fed
    shapes.append(list(batch["inputs"].shape))
    local = [np.asarray(s.data) for s in batch["inputs"].addressable_shards]
    assert all(x.shape == (1, 128) for x in local), [x.shape for x in local]
  result = {"process": jax.process_index(), "rows": rows, "shapes": shapes}
else:
  batches = GlobalBatches(packed, PipelineConfig(global_batch=2, seed=3, epochs=2),
                          make_mesh(2, 1, 4))  # batch 2 over data*fsdp = 2 (must divide)
  action = sys.argv[4] if len(sys.argv) > 4 else None
  if action == "restore":
    batches.set_state(json.load(open(sys.argv[5])))
  result = {"batches": []}
  for _ in range(int(sys.argv[3])):
    b = next(batches)
    result["batches"].append({k: np.asarray(v).tolist() for k, v in b.items()})
  if action == "save":
    json.dump(batches.get_state(), open(sys.argv[5], "w"))
json.dump(result, open(out_path, "w"))
