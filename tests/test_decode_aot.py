"""The decode programs of the 7B shapes (bf16) compile ahead of time for TPU slices with the
serving rules: tensor=4 on v5e-4, and data=2 x tensor=4 on v5e-8 (28 query heads do not
divide over tensor=8, which the sharding rules refuse). No weight is all-gathered per token
and the KV cache is not copied inside the loop. Compile-only TPU devices need libtpu, no chips.

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
                                              ("v5e-8", {"data": 2, "tensor": 4})])
def test_7b_bf16_decode_compiles_for_tpu(slice_name, mesh):
  from z1_jax.infer.aot import compile_decode
  from z1_jax.topology import topology_mesh
  out = compile_decode(CFG, topology_mesh(slice_name, mesh), batch=8, prompt_width=256,
                       gen_width=512, prefill=slice_name == "v5e-4")
  loop = out["decode_loop"]["hlo"]
  # collectives per token: all-reduces of activations, and the [B, shards] argmax candidates
  gathered = re.findall(r"= \w+\[([\d,]*)\][^=]*? all-gather\(", loop)
  sizes = [math.prod(int(d) for d in s.split(",") if d) for s in gathered]
  assert max(sizes, default=0) <= 8 * 4, gathered
  rows = 8 // mesh.get("data", 1)
  cache = re.escape(f"bf16[{rows},1,768,128]")  # 4 KV heads over tensor=4: one per chip
  assert re.search(cache, loop) and not re.search(cache + r"\{[^}]*\} copy\(", loop)
  per_chip_weights = 2 * CFG.num_params() / 4
  assert out["decode_loop"]["argument_bytes"] < 1.2 * per_chip_weights + 2**30


def test_tensor_8_is_refused_for_28_query_heads():
  from z1_jax.infer.aot import compile_decode
  from z1_jax.model.sharding import UnevenShardingError
  from z1_jax.topology import topology_mesh
  with pytest.raises(UnevenShardingError, match="size 28"):
    compile_decode(CFG, topology_mesh("v5e-8", {"tensor": 8}), batch=8, prompt_width=256,
                   gen_width=512)
