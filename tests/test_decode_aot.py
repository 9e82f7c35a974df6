"""The decode programs of the 7B shapes (bf16) compile ahead of time for TPU slices, with the
serving rules: tensor=4 on v5e-4 and tensor=8 on v5e-8, no weight all-gathered per token and
no copy of the KV cache inside the loop. Compile-only TPU devices need libtpu, not chips.

Two of the 28 layers keep the test short (every layer is the same program);
`scripts/aot_decode.py` compiles all 28 and prints the memory figures.
"""

import math
import os
import re

import pytest

pytest.importorskip("libtpu", reason="compiling for TPU needs libtpu (the tpu extra)")


def _tpu_mesh(grid, tensor):
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from jax.experimental import mesh_utils, topologies
  from jax.sharding import AxisType, Mesh
  topo = topologies.get_topology_desc(
      topology_name=f"v5e:{grid}", platform="tpu", chip_config_name="default",
      chips_per_host_bounds=(2, 2, 1), num_slices=1, wrap=(False, False, False))
  devices = mesh_utils.create_device_mesh((len(topo.devices) // tensor, 1, tensor),
                                          devices=topo.devices)
  return Mesh(devices, ("data", "fsdp", "tensor"), axis_types=(AxisType.Auto,) * 3)


@pytest.mark.slow
@pytest.mark.parametrize("grid, tensor", [("2x2", 4), ("2x4", 8)])
def test_7b_bf16_decode_compiles_for_tpu(grid, tensor):
  from z1_jax.infer.aot import compile_decode
  from z1_jax.model.config import get_preset
  cfg = get_preset("qwen2.5-coder-7b-instruct", param_dtype="bfloat16", dtype="bfloat16",
                   num_layers=2)
  out = compile_decode(cfg, _tpu_mesh(grid, tensor), batch=8, prompt_width=256,
                       gen_width=512, prefill=tensor == 4)
  loop = out["decode_loop"]["hlo"]
  assert "TPU" in loop or "tpu" in loop.lower()
  # collectives per token: all-reduces of activations, and the [B, shards] argmax candidates
  gathered = re.findall(r"= \w+\[([\d,]*)\][^=]*? all-gather\(", loop)
  sizes = [math.prod(int(d) for d in s.split(",") if d) for s in gathered]
  assert max(sizes, default=0) <= 8 * tensor, gathered
  kv_heads = {4: 1, 8: 4}[tensor]  # 4 KV heads do not divide over 8: replicated there
  cache = re.escape(f"bf16[8,{kv_heads},768,128]")
  assert not re.search(cache + r"\{[^}]*\} copy\(", loop)  # the cache is updated in place
  per_device_weights = 2 * cfg.num_params() / tensor
  assert out["decode_loop"]["argument_bytes"] < 1.6 * per_device_weights + 2**30
