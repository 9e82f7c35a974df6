"""The padded-head serving layout (`model/serving.py`): query heads that do not divide over
`tensor` are padded with zero heads and KV heads repeated, which computes the same function
with whole heads per shard; and, unlike splitting head_dim, its per-token collectives do not
grow with the cache length (read from the compiled decode chunk's HLO)."""

import numpy as np
import pytest

from z1_jax.infer.generate import generate
from z1_jax.model.config import get_preset
from z1_jax.model.serving import _query_source, padded_config

TRIGGER = list(range(1, 13))


def test_7b_on_tensor_8_pads_to_32_query_heads_over_8_kv_heads():
  cfg = get_preset("qwen2.5-coder-7b-instruct")
  p = padded_config(cfg, 8)
  assert (p.num_heads, p.num_kv_heads, p.dim_per_head) == (32, 8, 128)
  src = _query_source(cfg, 8)
  assert sorted(src[src >= 0]) == list(range(28)) and (src < 0).sum() == 4
  # each padded query head attends with a copy of its original KV head
  group, group2 = 28 // 4, 32 // 8
  for new, old in enumerate(src):
    if old >= 0:
      assert (new // group2) // 2 == old // group
  assert padded_config(cfg, 4) is cfg  # 28 heads divide over 4: nothing to pad


@pytest.fixture(scope="module")
def six_heads(tmp_path_factory):
  """A random HF model with 6 query heads in 2 KV groups (tensor=4 divides neither)."""
  import torch
  import transformers
  torch.manual_seed(0)
  cfg = transformers.Qwen2Config(vocab_size=256, hidden_size=48, intermediate_size=64,
                                 num_hidden_layers=2, num_attention_heads=6,
                                 num_key_value_heads=2, max_position_embeddings=128,
                                 tie_word_embeddings=False)
  model = transformers.Qwen2ForCausalLM(cfg).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.normal_(0.0, 0.2)
  path = tmp_path_factory.mktemp("six-heads")
  model.save_pretrained(path)
  return path


def test_padded_model_on_tensor_4_equals_one_device(six_heads):
  from z1_jax.infer.load import load_for_decoding
  from z1_jax.model.sharding import make_mesh
  one = load_for_decoding(hf=str(six_heads))
  served = load_for_decoding(hf=str(six_heads), mesh=make_mesh(2, 1, 4))
  assert (served.cfg.num_heads, served.cfg.num_kv_heads) == (8, 4)  # r=2, 3 -> 2 per copy
  q = served.layers[0].attn.q_proj[...]
  assert q.shape == (48, 8, 8) and q.sharding.spec[1] == "tensor"
  ids = np.asarray([[5, 6, 7, 8, 9, 10, 11, 12], [20, 21, 22, 23, 24, 25, 26, 27]])
  np.testing.assert_allclose(np.asarray(served(ids)), np.asarray(one(ids)), rtol=0, atol=2e-5)
  prompts = [[5, 6, 7, 8, 9], [10, 11], [3], [40, 41, 42]]
  kw = dict(thinking_budget=14, answer_tokens=4, trigger_ids=TRIGGER, eos_ids=[255])
  assert generate(served, prompts, **kw) == generate(one, prompts, **kw)


def _decode_collectives(cfg, mesh, pool_tokens):
  from z1_jax.collectives import collective_bytes
  from z1_jax.infer.aot import compile_decode
  hlo = compile_decode(cfg, mesh, batch=8, pool_tokens=pool_tokens, max_seq_len=pool_tokens,
                       page_size=16, chunk_steps=4)["decode_loop"]["hlo"]
  # the chunk's loop stops when every row is done: count its body once, i.e. per token
  stats = collective_bytes(hlo, devices=8, unknown_trips=1)
  return {k: v.bytes for k, v in stats.items() if v.count}


def test_padded_decode_collectives_do_not_grow_with_the_cache_on_8_cpu_devices(monkeypatch):
  """7B's head structure (28 query heads, 4 KV heads, head_dim 128) at tensor=8, one layer and
  small pools for a quick compile: padded heads, the same bytes at 2x the pool. Without the
  padding (28 heads, 4 KV heads on 8 shards) the paged cache refuses the layout, naming it:
  it would need whole KV heads on every shard."""
  from z1_jax.errors import Z1Error
  from z1_jax.infer import aot
  from z1_jax.model.sharding import make_mesh
  cfg = get_preset("qwen2.5-coder-7b-instruct", num_layers=1, vocab_size=512,
                   intermediate_size=512)
  mesh = make_mesh(1, 1, 8)
  padded = [_decode_collectives(cfg, mesh, w) for w in (256, 512)]
  assert padded[0] == padded[1] and padded[0], padded
  monkeypatch.setattr(aot, "padded_config", lambda c, t: c)
  with pytest.raises(Z1Error, match="whole KV heads on every shard: 4 KV heads do not divide over the tensor"):
    _decode_collectives(cfg, mesh, 256)
