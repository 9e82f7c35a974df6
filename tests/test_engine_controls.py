"""The engine's OpenAI / vLLM controls: log-probabilities of generated and prompt tokens
against HF transformers, stop strings on decoded text (across token boundaries, never inside
the forced trigger), stop token ids, ignore_eos, min_tokens; and what batch invariance holds:
a request's log-probabilities alone and inside a busy batch differ by float rounding only."""

import numpy as np
import pytest
import torch

import z1_jax
from z1_jax.infer.engine import Engine, Request

EOS = [281]
TRIGGER = [5, 6, 7]


@pytest.fixture(scope="module")
def tiny(hf_checkpoint):
  hf, path = hf_checkpoint("untied-gqa4-theta")
  rs = np.random.RandomState(5)
  prompts = [rs.randint(0, 320, n).tolist() for n in (6, 13, 9, 4)]
  return hf, z1_jax.load_hf(path), prompts


def _engine(model, **kw):
  return Engine(model, **{"slots": 4, "max_seq_len": 96, "page_size": 8, "eos_ids": EOS,
                          "trigger_ids": TRIGGER, **kw})


def _hf_logprobs(hf, ids):
  with torch.no_grad():
    logits = hf(torch.tensor([ids])).logits[0].double()
  return torch.log_softmax(logits, -1).numpy()


def test_logprobs_of_generated_and_prompt_tokens_equal_hf(tiny):
  hf, model, prompts = tiny
  reqs = [Request(i, p, max_new_tokens=12, logprobs=5, prompt_logprobs=3)
          for i, p in enumerate(prompts)]
  reqs.append(Request("b", prompts[1], thinking_budget=10, answer_tokens=5, logprobs=2))
  for g, r in zip(_engine(model).run(reqs), reqs):
    full = list(r.prompt_ids) + g.tokens
    ref = _hf_logprobs(hf, full)
    n = len(r.prompt_ids)
    want = [ref[n - 1 + i, t] for i, t in enumerate(g.tokens)]  # the forced trigger included
    np.testing.assert_allclose(g.logprobs, want, atol=2e-4)
    for i, top in enumerate(g.top_logprobs):
      assert len(top) == r.logprobs
      assert [t for t, _ in top] == list(np.argsort(-ref[n - 1 + i])[:r.logprobs])
      np.testing.assert_allclose([v for _, v in top], np.sort(ref[n - 1 + i])[::-1][:r.logprobs],
                                 atol=2e-4)
    if r.prompt_logprobs is not None:
      assert g.prompt_logprobs[0] is None and g.prompt_top_logprobs[0] == []
      np.testing.assert_allclose(g.prompt_logprobs[1:],
                                 [ref[j - 1, r.prompt_ids[j]] for j in range(1, n)], atol=2e-4)
      assert [len(t) for t in g.prompt_top_logprobs[1:]] == [3] * (n - 1)
    else:
      assert g.prompt_logprobs is None


def test_scoring_a_prompt_without_generating(tiny):
  """lm-eval's loglikelihood: echo with max_tokens 0."""
  hf, model, prompts = tiny
  (g,) = _engine(model).run([Request("s", prompts[1], max_new_tokens=0, prompt_logprobs=0)])
  ref = _hf_logprobs(hf, prompts[1])
  assert g.tokens == [] and g.finish_reason == "length"
  np.testing.assert_allclose(g.prompt_logprobs[1:],
                             [ref[j - 1, prompts[1][j]] for j in range(1, len(prompts[1]))],
                             atol=2e-4)


def test_a_requests_logprobs_alone_and_in_a_busy_batch_differ_by_rounding_only(tiny):
  """What batch invariance holds: not bit-equality (the batch shape changes the order of the
  sums), but equality up to float rounding, measured here, well below any real margin."""
  _, model, prompts = tiny
  probe = Request("probe", prompts[2], max_new_tokens=20, logprobs=0)
  alone = _engine(model, slots=1).run([probe])[0]
  others = [Request(i, p, max_new_tokens=30, temperature=1.0, seed=i, row_id=i)
            for i, p in enumerate(prompts)]
  busy = _engine(model, slots=8, chunk_steps=3).run([*others[:2], probe, *others[2:]])[2]
  assert busy.tokens == alone.tokens
  diff = np.abs(np.asarray(busy.logprobs) - np.asarray(alone.logprobs)).max()
  assert diff < 1e-4, diff


def test_stop_token_ids_ignore_eos_and_min_tokens(tiny):
  _, model, prompts = tiny
  free = _engine(model, eos_ids=[]).run([Request(0, prompts[0], max_new_tokens=30)])[0].tokens
  stop_id = free[7]
  k = free.index(stop_id)  # its first occurrence
  engine = _engine(model, eos_ids=[stop_id])
  ended, ignored, floor, by_id = engine.run([
      Request("eos", prompts[0], max_new_tokens=30),
      Request("ignore", prompts[0], max_new_tokens=30, ignore_eos=True),
      Request("min", prompts[0], max_new_tokens=30, min_tokens=k + 3),
      Request("id", prompts[0], max_new_tokens=30, stop_token_ids=(free[3],))])
  assert ended.tokens == free[:k + 1] and ended.ended and ended.stop_reason is None
  assert ignored.tokens == free and not ignored.ended  # the end id did not end it
  assert floor.tokens[:k] == free[:k] and stop_id not in floor.tokens[:k + 3]
  assert len(floor.tokens) >= k + 3
  j = free.index(free[3])
  assert by_id.tokens == free[:j + 1] and by_id.ended and by_id.stop_reason == free[3]


@pytest.fixture(scope="module")
def qwen_tiny():
  """A tiny random model with the Qwen vocabulary, and the real tokenizer."""
  from z1_jax.data.tokenizer import load_tokenizer
  from z1_jax.model.config import get_preset
  from z1_jax.model.qwen2 import create_model
  return create_model(get_preset("tiny"), seed=2), load_tokenizer()


def test_stop_strings_end_the_row_at_the_match_across_token_boundaries(qwen_tiny):
  model, tok = qwen_tiny
  prompt = tok.encode("def add(a, b):", add_special_tokens=False)
  engine = Engine(model, slots=2, max_seq_len=128, tokenizer=tok, chunk_steps=4)
  free = engine.run([Request(0, prompt, max_new_tokens=40, ignore_eos=True)])[0]
  pieces = [tok.decode(free.tokens[:i]) for i in range(len(free.tokens) + 1)]
  i = next(i for i in range(12, 30) if len(pieces[i]) > len(pieces[i - 1]) >= 2)
  stop = pieces[i][len(pieces[i - 1]) - 2:len(pieces[i - 1]) + 1]  # spans two tokens
  cut = free.text.find(stop)
  (g,) = engine.run([Request(1, prompt, max_new_tokens=40, ignore_eos=True, stop=("@@@", stop))])
  assert g.text == free.text[:cut] and g.ended and g.stop_reason == stop
  assert g.finish_reason == "stop" and g.tokens == free.tokens[:len(g.tokens)]
  assert stop in tok.decode(g.tokens) and stop not in tok.decode(g.tokens[:-1])


def test_a_stop_string_inside_the_trigger_does_not_end_the_row(qwen_tiny):
  """The trigger is forced, not generated: stop strings are looked for in the thinking and in
  the answer, never in the trigger (so lm-eval's usual `until` of "\\n\\n" cannot cut a
  budgeted row at its own trigger)."""
  model, tok = qwen_tiny
  prompt = tok.encode("Is 1001 prime?", add_special_tokens=False)
  engine = Engine(model, slots=2, max_seq_len=128, tokenizer=tok)
  kw = dict(thinking_budget=24, answer_tokens=8, ignore_eos=True)
  plain = engine.run([Request(0, prompt, **kw)])[0]
  stops = ("I overthought it", "the final answer should be")
  assert not any(s in tok.decode(plain.tokens[:plain.thinking_tokens]) for s in stops)
  assert not any(s in tok.decode(plain.tokens[-plain.answer_tokens:]) for s in stops)
  stopped = engine.run([Request(1, prompt, stop=stops, **kw)])[0]
  assert stopped.tokens == plain.tokens
  assert stopped.hit_budget and not stopped.ended and stopped.stop_reason is None


def test_a_slot_freed_by_a_stop_string_serves_the_next_request_whole(qwen_tiny):
  """The stopped row's slot is released before the next row is written into it (in the other
  order, the next request came back finished with no tokens). One-token prompts need no
  prefill, so the next row is written in the step the slot frees."""
  model, tok = qwen_tiny
  prompts = [[tok.encode(t, add_special_tokens=False)[0]] for t in ("a", "b", "c")]
  engine = Engine(model, slots=1, max_seq_len=128, tokenizer=tok, chunk_steps=4)
  free = [engine.run([Request(i, p, max_new_tokens=20, ignore_eos=True)])[0]
          for i, p in enumerate(prompts)]
  stops = [g.text[len(g.text) // 2:len(g.text) // 2 + 2] for g in free]
  got = engine.run([Request(i, p, max_new_tokens=20, ignore_eos=True, stop=(s,))
                    for i, (p, s) in enumerate(zip(prompts, stops))])
  for g, f, s in zip(got, free, stops):
    assert g.text == f.text[:f.text.find(s)] and g.stop_reason == s, (g, f.text, s)
