"""The decode programs of the 7B shapes (bf16) compile ahead of time for TPU slices with the
serving rules: tensor=4 on v5e-4, data=2 x tensor=4 and tensor=8 on v5e-8 (28 query heads do
not divide over tensor=8: the serving rules then split head_dim, see
`model.sharding.serving_rules`). No weight is all-gathered per token and the KV cache is not
copied inside the loop. Compile-only TPU devices need libtpu, no chips.

Two of the 28 layers keep the test short (every layer is the same program);
`scripts/aot_decode.py` compiles all 28 and prints the memory figures.
"""

import math
import re

import pytest

pytest.importorskip("libtpu", reason="compiling for TPU needs libtpu (the tpu extra)")

from z1_jax.model.config import get_preset  # noqa: E402

CFG = get_preset("qwen2.5-coder-7b-instruct", param_dtype="bfloat16", dtype="bfloat16",
                 num_layers=2)


@pytest.mark.slow
@pytest.mark.parametrize("slice_name, mesh", [("v5e-4", {"tensor": 4}),
                                              ("v5e-8", {"data": 2, "tensor": 4}),
                                              ("v5e-8", {"tensor": 8})])
def test_7b_bf16_decode_compiles_for_tpu(slice_name, mesh):
  from z1_jax.infer.aot import compile_decode
  from z1_jax.topology import topology_mesh
  out = compile_decode(CFG, topology_mesh(slice_name, mesh), batch=8, prompt_width=256,
                       gen_width=512, prefill=slice_name == "v5e-4")
  loop = out["decode_loop"]["hlo"]
  # collectives per token: all-reduces of activations, and the [B, shards] argmax candidates
  gathered = re.findall(r"= \w+\[([\d,]*)\][^=]*? all-gather\(", loop)
  sizes = [math.prod(int(d) for d in s.split(",") if d) for s in gathered]
  tensor = mesh["tensor"]
  assert max(sizes, default=0) <= 8 * tensor, gathered
  rows = 8 // mesh.get("data", 1)
  # tensor=4: one of the 4 KV heads per chip; tensor=8: all 4 KV heads, 128/8 dims per chip
  kv_heads, head_dim = {4: (1, 128), 8: (4, 16)}[tensor]
  cache = re.escape(f"bf16[{rows},{kv_heads},768,{head_dim}]")
  assert re.search(cache, loop) and not re.search(cache + r"\{[^}]*\} copy\(", loop)
  per_chip_weights = 2 * CFG.num_params() / tensor
  assert out["decode_loop"]["argument_bytes"] < 1.2 * per_chip_weights + 2**30
