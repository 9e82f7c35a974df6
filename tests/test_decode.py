"""The decode loop, thinking budgets and the sweep against HF transformers greedy (fp32, CPU)."""

import numpy as np
import pytest
import torch

import z1_jax
from z1_jax.errors import Z1Error
from z1_jax.infer.generate import generate, sweep

# Prompts of 4, 11, 7 and 16 tokens for "untied-gqa4-theta"; with end id 281 the free greedy
# runs end after 7, 28 and 23 tokens and the last one not within 40: early ends, budget hits
# and rows running to the limit all occur below.
EOS = [281]
TRIGGER = [5, 6, 7]


@pytest.fixture(scope="module")
def tiny(hf_checkpoint):
  hf, path = hf_checkpoint("untied-gqa4-theta")
  rs = np.random.RandomState(1)
  prompts = [rs.randint(0, 320, n).tolist() for n in (4, 11, 7, 16)]
  return hf, z1_jax.load_hf(path), prompts


def hf_greedy(hf, ids, n, eos=EOS):
  """HF greedy continuation of one row: up to n tokens, the end id kept."""
  with torch.no_grad():
    out = hf.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False,
                      eos_token_id=list(eos), pad_token_id=0)
  return out[0, len(ids):].tolist()


def two_step_reference(hf, prompt, budget, answer, placement, eos=EOS):
  """The paper's two passes: greedy up to B tokens; a row that ended there is final; else its
  first B-T tokens (replace) or all B (append), the trigger ids, then the answer."""
  first = hf_greedy(hf, prompt, budget, eos)
  if first[-1] in eos:
    return first, len(first), False, 0
  if placement == "replace":
    first = first[:budget - len(TRIGGER)]
  answer_ids = hf_greedy(hf, prompt + first + TRIGGER, answer, eos)
  return first + TRIGGER + answer_ids, len(first), True, len(answer_ids)


def test_greedy_equals_hf_generate_for_ragged_batch(tiny):
  hf, model, prompts = tiny
  out = generate(model, prompts, max_new_tokens=30, eos_ids=EOS)
  refs = [hf_greedy(hf, p, 30) for p in prompts]
  assert [g.tokens for g in out] == refs
  assert [len(r) for r in refs] == [7, 28, 23, 30]  # three rows end by themselves, one runs on
  assert [g.ended for g in out] == [True, True, True, False]
  assert all(g.thinking_tokens == len(g.tokens) and not g.hit_budget for g in out)


@pytest.mark.parametrize("placement", ["replace", "append"])
def test_budget_equals_two_step_hf_reference(tiny, placement):
  hf, model, prompts = tiny
  out = generate(model, prompts, thinking_budget=16, answer_tokens=8, trigger_ids=TRIGGER,
                 placement=placement, eos_ids=EOS)
  for p, g in zip(prompts, out):
    tokens, thinking, hit, answer = two_step_reference(hf, p, 16, 8, placement)
    assert (g.tokens, g.thinking_tokens, g.hit_budget, g.answer_tokens) == (
        tokens, thinking, hit, answer)
  assert [g.hit_budget for g in out] == [False, True, True, True]
  # the row that ended inside its window is exactly its unbudgeted continuation
  assert out[0].tokens == generate(model, prompts[:1], max_new_tokens=40, eos_ids=EOS)[0].tokens
  if placement == "replace":
    assert all(g.tokens[13:16] == TRIGGER for g in out[1:])  # the window holds B tokens


@pytest.mark.parametrize("placement", ["replace", "append"])
def test_a_natural_end_in_the_last_trigger_positions_is_final(tiny, placement):
  """Row 1 ends by itself after 28 tokens: with B=29 (T=3) its end lies in (B-T, B], so it
  is final and never gets the trigger, for both placements (the old replace bug forced it)."""
  hf, model, prompts = tiny
  out = generate(model, prompts, thinking_budget=29, answer_tokens=5, trigger_ids=TRIGGER,
                 placement=placement, eos_ids=EOS)
  for p, g in zip(prompts, out):
    tokens, thinking, hit, answer = two_step_reference(hf, p, 29, 5, placement)
    assert (g.tokens, g.thinking_tokens, g.hit_budget, g.answer_tokens) == (
        tokens, thinking, hit, answer)
  assert len(out[1].tokens) == 28 and not out[1].hit_budget and out[1].finish_reason == "stop"
  assert out[3].hit_budget and out[3].finish_reason == "length"


def test_sweep_equals_per_budget_runs(tiny):
  _, model, prompts = tiny
  budgets = [8, 12, 16, 21]  # stops 14..27: generated widths 16 and 32 (fewer compiles)
  for kw in (dict(), dict(temperature=0.9, top_k=40, seed=7)):
    swept = sweep(model, prompts, budgets, answer_tokens=6, trigger_ids=TRIGGER, eos_ids=EOS,
                  **kw)
    assert sorted(swept) == budgets
    for b in budgets:
      single = generate(model, prompts, thinking_budget=b, answer_tokens=6,
                        trigger_ids=TRIGGER, eos_ids=EOS, **kw)
      assert swept[b] == single, (kw, b)
    assert any(g.hit_budget for g in swept[21]) and not all(g.hit_budget for g in swept[21])


def test_sampling_reproducible_and_independent_of_batch(tiny):
  _, model, prompts = tiny
  kw = dict(max_new_tokens=12, eos_ids=EOS, temperature=1.0, top_p=0.9, seed=3)
  out = generate(model, prompts, **kw)
  assert generate(model, prompts, **kw) == out
  assert generate(model, prompts, batch_size=1, **kw) == out
  # a row alone (with its row id) gets the same tokens as inside the batch
  assert generate(model, [prompts[2]], row_ids=[2], **kw)[0].tokens == out[2].tokens
  other_seed = generate(model, prompts, **{**kw, "seed": 4})
  assert [g.tokens for g in other_seed] != [g.tokens for g in out]
  greedy = generate(model, prompts, max_new_tokens=12, eos_ids=EOS)
  assert [g.tokens for g in greedy] != [g.tokens for g in out]  # it does sample


def test_s1_mode_wait_and_answer_marker(tiny):
  hf, model, prompts = tiny
  marker, wait = [9, 10], [11]

  def reference(prompt, budget, answer, min_thinking):
    out = []
    while len(out) < budget:
      tok = hf_greedy(hf, prompt + out, 1, eos=[-1])[0]
      if tok in EOS:
        if len(out) >= min_thinking:
          break
        out += wait[:budget - len(out)]
      else:
        out.append(tok)
    think = len(out)
    return out + marker + hf_greedy(hf, prompt + out + marker, answer), think

  out = generate(model, prompts, mode="s1", thinking_budget=12, answer_tokens=4,
                 trigger_ids=marker, wait_ids=wait, min_thinking=9, eos_ids=EOS)
  for p, g in zip(prompts, out):
    tokens, think = reference(p, 12, 4, 9)
    assert g.tokens == tokens and g.thinking_tokens == think
  assert wait[0] in out[0].tokens  # row 0 wanted to stop after 6 tokens: "Wait" instead


def test_scanned_layers_model_decodes_unrolled(hf_checkpoint, tiny):
  _, model, prompts = tiny
  _, path = hf_checkpoint("untied-gqa4-theta")
  scanned = z1_jax.load_hf(path, scan_layers=True)
  kw = dict(thinking_budget=10, answer_tokens=4, trigger_ids=TRIGGER, eos_ids=EOS)
  assert generate(scanned, prompts, **kw) == generate(model, prompts, **kw)


def test_default_trigger_is_the_z1_phrase_in_12_qwen_tokens():
  from z1_jax.infer.budget import marker_ids
  assert marker_ids("z1", None, None, None) == (271, 40, 916, 60565, 432, 11, 279, 1590, 4226,
                                                 1265, 387, 1447)


@pytest.mark.parametrize("kwargs, prompts, message", [
    (dict(max_new_tokens=4), [[1, 2], []], "prompt 1: prompt_ids is empty"),
    (dict(max_new_tokens=4), [[1, 400]], "prompt 0: prompt_ids: id 400 is outside the model's vocabulary"),
    (dict(max_new_tokens=4), [list(range(1, 258))], "257 tokens are longer than the model's "
     "maximum of 256"),
    (dict(thinking_budget=3, answer_tokens=4, trigger_ids=TRIGGER), [[1]],
     "thinking_budget=3 must exceed the trigger length"),
    (dict(thinking_budget=8, answer_tokens=4, trigger_ids=[5, 999]), [[1]],
     "trigger ids: id 999 is outside"),
    (dict(max_new_tokens=4, tokenizer="/no/such/tokenizer"), [[1]],
     "tokenizer '/no/such/tokenizer': cannot load it"),
    (dict(max_new_tokens=4, thinking_budget=8, answer_tokens=2), [[1]], "not both"),
    (dict(thinking_budget=8, trigger_ids=TRIGGER), [[1]], "needs answer_tokens"),
    (dict(max_new_tokens=4, temperature=0, top_k=3), [[1]], "need a temperature"),
])
def test_bad_input_is_a_clear_error(tiny, kwargs, prompts, message):
  _, model, _ = tiny
  with pytest.raises(Z1Error, match=message):
    generate(model, prompts, **kwargs)


def test_a_position_past_the_page_table_is_dropped_not_clamped():
  """The engine never asks (every request is bounded by max_seq_len), but a position past a
  row's page table must not land on its last page."""
  import numpy as np
  from z1_jax.infer.engine.programs import DROP, _slots_of
  pages = np.array([[3, 5]], np.int32)  # page size 4: positions 0..7
  slots = _slots_of(pages, np.array([[1, 6, 8, 40]], np.int32), 4, np.ones((1, 4), bool))
  assert slots.tolist() == [[13, 22, DROP, DROP]]


def test_eight_device_serving_mesh_equals_one_device(hf_checkpoint, tiny):
  from z1_jax.model.sharding import SERVING_RULES, LogicalRules, make_mesh
  _, model, prompts = tiny
  _, path = hf_checkpoint("untied-gqa4-theta")
  rules = LogicalRules(make_mesh(data=4, fsdp=1, tensor=2), SERVING_RULES)
  sharded = z1_jax.load_hf(path, rules=rules)
  assert len(sharded.layers[0].mlp.down[...].sharding.device_set) == 8
  kw = dict(thinking_budget=12, answer_tokens=6, trigger_ids=TRIGGER, eos_ids=EOS)
  assert generate(sharded, prompts, **kw) == generate(model, prompts, **kw)


def test_a_head_dim_split_layout_is_refused_by_the_paged_cache(hf_checkpoint):
  """`serving_rules` split head_dim when the heads do not divide over tensor (how a checkpoint
  loads before its heads are padded); decoding needs whole heads per shard, so the engine
  refuses that layout by name instead of replicating attention (`load_for_decoding` pads)."""
  from jax.sharding import PartitionSpec as P
  from z1_jax.model.sharding import make_mesh, serving_rules
  _, path = hf_checkpoint("tied-gqa2")  # 4 query heads on tensor=8: head_dim (16) is split
  one = z1_jax.load_hf(path)
  sharded = z1_jax.load_hf(path, rules=serving_rules(make_mesh(1, 1, 8), one.cfg.num_heads))
  assert sharded.layers[0].attn.q_proj[...].sharding.spec == P(None, None, "tensor")
  kw = dict(thinking_budget=14, answer_tokens=4, trigger_ids=TRIGGER, eos_ids=[255])
  with pytest.raises(Z1Error, match="whole KV heads on every shard.*load_for_decoding"):
    generate(sharded, [[5, 6, 7, 8, 9]], **kw)


def test_engine_step_updates_the_donated_pool_in_place(tiny):
  import re
  import jax
  import numpy as np
  from z1_jax.infer.engine import Engine
  from z1_jax.infer.engine.programs import decode_chunk
  _, model, _ = tiny
  engine = Engine(model, slots=2, max_seq_len=48, eos_ids=EOS, trigger_ids=TRIGGER,
                  page_size=8)
  state = engine._state
  args = (engine.graphdef, engine.params, state, engine.sched.table, np.bool_(False))
  kw = dict(markers=engine.markers, steps=16, logprobs=False)
  hlo = decode_chunk.lower(*args, kind="filter", **kw).compile().as_text()
  pool = state.pools[0].shape
  flat = re.escape(f"f32[{pool[0] * pool[1]},{pool[2]},{pool[3]}]")
  # each token's K/V written by a scatter into the (flattened) pool; no copy of the pool
  assert re.search(flat + r"\{[^}]*\} scatter\(", hlo), hlo[:2000]
  for shape in (flat, re.escape(f"f32[{','.join(map(str, pool))}]")):
    assert not re.search(shape + r"\{[^}]*\} copy\(", hlo)
  out = decode_chunk(*args, kind="greedy", **kw)
  jax.block_until_ready(out)
  assert state.pools[0].is_deleted()  # donated: the chunk reused its buffers
