"""The decode engine: continuous batching, per-request settings, streaming, validation."""

import numpy as np
import pytest

import z1_jax
from z1_jax.errors import Z1Error
from z1_jax.infer.engine import Engine, Request

EOS = [281]
TRIGGER = [5, 6, 7]


@pytest.fixture(scope="module")
def tiny(hf_checkpoint):
  _, path = hf_checkpoint("untied-gqa4-theta")
  rs = np.random.RandomState(1)
  prompts = [rs.randint(0, 320, n).tolist() for n in (4, 11, 7, 16, 3, 20, 1, 9)]
  return z1_jax.load_hf(path), prompts


def _engine(model, slots=4, **kw):
  return Engine(model, slots=slots, max_seq_len=96, eos_ids=EOS, trigger_ids=TRIGGER,
                s1_marker_ids=[9, 10], wait_ids=[11], **kw)


def _mixed(prompts):
  """Requests that differ in everything a request sets."""
  kinds = [dict(max_new_tokens=30),
           dict(thinking_budget=16, answer_tokens=8),
           dict(thinking_budget=29, answer_tokens=5, placement="append"),
           dict(max_new_tokens=12, temperature=1.0, top_p=0.9, seed=3),
           dict(thinking_budget=20, answer_tokens=6, temperature=0.8, top_k=40, seed=5),
           dict(mode="s1", thinking_budget=12, answer_tokens=4, min_thinking=9),
           dict(max_new_tokens=7, temperature=1.3, seed=1),
           dict(thinking_budget=14, answer_tokens=3, temperature=0.7, seed=2, row_id=9)]
  return [Request(f"r{i}", p, **k) for i, (p, k) in enumerate(zip(prompts, kinds))]


def test_a_request_alone_equals_it_inside_a_busy_mixed_batch(tiny):
  model, prompts = tiny
  requests = _mixed(prompts)
  busy = _engine(model, slots=4, chunk_steps=5).run(requests)  # 8 requests through 4 slots
  alone = [_engine(model, slots=4, chunk_steps=16).run([r])[0] for r in requests]
  assert busy == alone
  assert [g.id for g in busy] == [r.id for r in requests]
  assert any(g.hit_budget for g in busy) and any(g.ended for g in busy)


def test_streamed_events_rebuild_each_generation(tiny):
  model, prompts = tiny
  engine = _engine(model, slots=3, chunk_steps=4)
  requests = _mixed(prompts)
  for r in requests:
    engine.submit(r)
  assert engine.stats()["queued"] == 8
  streams, finished, seen_trigger = {}, {}, {}
  while engine.has_work():
    for e in engine.step():
      assert e.offset == len(streams.get(e.id, []))  # final tokens only: nothing retracted
      if e.trigger_at is not None:
        seen_trigger[e.id] = e.offset + e.trigger_at
      streams.setdefault(e.id, []).extend(e.new_tokens)
      if e.finished is not None:
        finished[e.id] = e.finished
  assert engine.stats()["active"] == 0 and engine.stats()["queued"] == 0
  for r in requests:
    g = finished[r.id]
    assert streams[r.id] == g.tokens
    if g.answer_tokens or g.hit_budget:
      assert seen_trigger[r.id] == g.thinking_tokens
    else:
      assert r.id not in seen_trigger


def test_cancel_frees_the_slot_and_the_others_go_on(tiny):
  model, prompts = tiny
  engine = _engine(model, slots=2, chunk_steps=4)
  reqs = [Request(i, prompts[i], max_new_tokens=40) for i in range(3)]
  for r in reqs:
    engine.submit(r)
  engine.step()
  engine.cancel(0)
  engine.cancel(2)  # still queued
  events = engine.step()
  assert {e.id for e in events if e.error == "cancelled"} == {0, 2}
  out = {}
  while engine.has_work():
    out.update({e.id: e.finished for e in engine.step() if e.finished})
  assert set(out) == {1}
  assert out[1] == _engine(model, slots=2).run([reqs[1]])[0]


@pytest.mark.parametrize("fields, message", [
    (dict(max_new_tokens=4, temperature=1e-300), "temperature=1e-300"),
    (dict(max_new_tokens=4, temperature=float("inf")), "finite number"),
    (dict(thinking_budget=3, answer_tokens=4), "thinking_budget=3 must exceed the trigger"),
    (dict(thinking_budget=8), "needs answer_tokens"),
    (dict(max_new_tokens=0), "max_new_tokens=0"),
    (dict(thinking_budget=60, answer_tokens=40), "do not fit the engine.s 96 positions"),
    (dict(max_new_tokens=4, top_k=3), "need a temperature"),
    (dict(max_new_tokens=4, seed=-1), "seed=-1"),
    (dict(mode="s1", max_new_tokens=4), "needs a thinking_budget"),
    (dict(max_new_tokens=4, min_thinking=3), "'s1' only"),
])
def test_bad_requests_are_refused_naming_the_request(tiny, fields, message):
  model, _ = tiny
  engine = _engine(model)
  with pytest.raises(Z1Error, match=f"request 'bad': .*{message}"):
    engine.submit(Request("bad", [1, 2, 3], **fields))
  with pytest.raises(Z1Error, match="request 'x': prompt_ids: id 999 is outside"):
    engine.submit(Request("x", [1, 999], max_new_tokens=3))
  engine.submit(Request("ok", [1, 2, 3], max_new_tokens=3))
  with pytest.raises(Z1Error, match="request 'ok': the id is already queued"):
    engine.submit(Request("ok", [4], max_new_tokens=3))
  assert engine.run([Request("next", [4, 5], max_new_tokens=3)])[0].id == "next"


def test_sweep_forks_branches_equal_to_separate_runs(tiny):
  model, prompts = tiny
  budgets = [8, 12, 16, 21]
  for kw in (dict(), dict(temperature=0.9, top_k=40, seed=7)):
    requests = [Request(i, p, answer_tokens=6, **kw) for i, p in enumerate(prompts[:5])]
    engine = _engine(model, slots=4, chunk_steps=3)
    swept = engine.sweep(requests, budgets)
    for b in budgets:
      single = _engine(model, slots=4).run(
          [Request(i, p, thinking_budget=b, answer_tokens=6, **kw)
           for i, p in enumerate(prompts[:5])])
      assert swept[b] == single, (kw, b)


def test_warmup_compiles_and_the_engine_then_decodes(tiny):
  model, prompts = tiny
  engine = Engine(model, slots=2, max_seq_len=32, eos_ids=EOS, trigger_ids=TRIGGER)
  engine.warmup()
  out = engine.run([Request(0, prompts[0], max_new_tokens=5)])
  assert out == _engine(model, slots=2).run([Request(0, prompts[0], max_new_tokens=5)])
