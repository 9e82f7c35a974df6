"""One process of a 2-process x 4-CPU-device training run (test_train.py).

usage: train_worker.py OUT_DIR PROCESS_ID PORT DATA_JSONL
Trains 3 steps twice: on make_mesh(2, 2, 2) (the data axis crosses the processes) and on a
data=1 x fsdp=4 x tensor=2 mesh whose tensor axis crosses them. Process 0 writes the metrics;
each process records which batch rows it fed, and whether it tokenized or read the cache.
"""

import json
import os
import sys
from pathlib import Path

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
sys.path.insert(0, str(Path(__file__).parent))

out, pid, port, data = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], Path(sys.argv[4])

from z1_jax.distributed import initialize  # noqa: E402

initialize(f"127.0.0.1:{port}", 2, pid)

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import AxisType, Mesh  # noqa: E402

from train_helpers import TINY, arith_overrides  # noqa: E402
from z1_jax.config import load_config  # noqa: E402
from z1_jax.data.pipeline import batch_sharding, host_rows  # noqa: E402
from z1_jax.model.sharding import MESH_AXES, make_mesh  # noqa: E402
from z1_jax.train.loop import train  # noqa: E402

assert jax.process_count() == 2 and len(jax.devices()) == 8
cfg = load_config(TINY, arith_overrides(data, **{"train.max_steps": 3}))
by_process = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
# [fsdp=4, tensor=2]: tensor pairs device i of process 0 with device i of process 1
tensor_across = Mesh(np.asarray(by_process).reshape(2, 4).T.reshape(1, 4, 2), MESH_AXES,
                     axis_types=(AxisType.Auto,) * 3)
meshes = {"data_across": make_mesh(2, 2, 2), "tensor_across": tensor_across}
rows = {}
for name, mesh in meshes.items():
  train(cfg, out / name, mesh, progress=False)
  rows[name] = host_rows(batch_sharding(mesh, 8, 48), (8, 48)).tolist()
for name, r in rows.items():
  (out / f"{name}.rows{pid}").write_text(json.dumps(r))
# the tokenization cache of a pod: process 0 writes it, process 1 reads it
from z1_jax.data.encode import EncodeConfig, encode_shared  # noqa: E402

enc = encode_shared(EncodeConfig(dataset=str(data), system_prompt=""), out / "shared-cache",
                    progress=False)
(out / f"encoded{pid}.json").write_text(json.dumps({"from_cache": enc.from_cache,
                                                    "tokens": enc.tokens.tolist()}))
from jax.experimental import multihost_utils  # noqa: E402

multihost_utils.sync_global_devices("rows written")
if pid == 0:
  result = {name: [json.loads((out / f"{name}.rows{i}").read_text()) for i in range(2)]
            for name in rows}
  (out / "rows.json").write_text(json.dumps(result))
