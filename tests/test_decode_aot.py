"""The decode programs of the 7B shapes (bf16) compile ahead of time for TPU slices with the
serving rules: tensor=4 on v5e-4, data=2 x tensor=4 and tensor=8 on v5e-8 (28 query heads do
not divide over tensor=8: the heads are padded to 32 over 8 KV heads, `model/serving.py`), with
the Pallas ragged paged attention kernel over the paged KV cache. No weight is all-gathered per
token, the pool is not copied inside the loop, and at tensor=8 the collectives per token do not
grow with the pool. Compile-only TPU devices need libtpu, no chips.

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
  out = compile_decode(CFG, topology_mesh(slice_name, mesh), batch=8, pool_tokens=4096,
                       max_seq_len=1024, page_size=128,
                       prefill_tokens=256 if slice_name == "v5e-4" else None)
  loop = out["decode_loop"]["hlo"]
  # the Pallas ragged paged attention kernel, once per layer
  assert loop.count('custom_call_target="tpu_custom_call"') >= CFG.num_layers, loop[:3000]
  # collectives per token: all-reduces of activations, and the [B, shards] argmax candidates
  gathered = re.findall(r"= \w+\[([\d,]*)\][^=]*? all-gather\(", loop)
  sizes = [math.prod(int(d) for d in s.split(",") if d) for s in gathered]
  tensor = mesh["tensor"]
  assert max(sizes, default=0) <= 8 * tensor, gathered
  # one whole KV head (K and V interleaved) per chip, each data shard its own pages; the pool
  # is updated in place (no copy inside the loop)
  shards = mesh.get("data", 1)
  pages = out["decode_loop"]["pool_pages"] // shards
  pool = re.escape(f"bf16[{pages},128,2,128]")
  assert re.search(pool, loop) and not re.search(pool + r"\{[^}]*\} copy\(", loop)
  per_chip_weights = 2 * CFG.num_params() / tensor
  assert out["decode_loop"]["argument_bytes"] < 1.2 * per_chip_weights + 2**30
  if tensor == 8:  # twice the pool, the same bytes through collectives per token
    from z1_jax.collectives import collective_bytes
    longer = compile_decode(CFG, topology_mesh(slice_name, mesh), batch=8, pool_tokens=8192,
                            max_seq_len=1024, page_size=128)["decode_loop"]["hlo"]
    per_token = [{k: v.bytes for k, v in collective_bytes(h, 8, unknown_trips=1).items()}
                 for h in (loop, longer)]
    assert per_token[0] == per_token[1] and sum(per_token[0].values()) > 0
