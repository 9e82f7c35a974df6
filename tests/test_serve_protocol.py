"""`z1_jax.serve.protocol` without a server: how budgets, answer allowances and `max_tokens`
compose (every cell of the README's table), the chat prompt, the body loader, the reasoning /
answer rule streamed and whole (every case: plain, budget hit, ended inside the window,
append, s1) and the stream's incremental decoding against whole-text decoding."""

import dataclasses
import json
import random
import re
import time

import pytest
from hypothesis import given, settings, strategies as st

from z1_jax.data.format import ANSWER_TRIGGER, render_prompt
from z1_jax.serve import protocol
from z1_jax.serve.protocol import Defaults, ServeError

T = 12  # the z1 trigger's length in the Qwen tokenizer
CONTEXT, PROMPT = 128, 8  # the server's --max-seq-len and the prompt's tokens: room = 120
FIELDS = ("thinking_token_budget", "answer_tokens", "max_tokens", "max_completion_tokens",
          "placement", "mode")


@pytest.fixture(scope="module")
def tok():
  from z1_jax.data.tokenizer import load_tokenizer
  return load_tokenizer()


def _parse(**body):
  return protocol.parse_completion({"model": "m", "prompt": "x", **body}, "m")


def _limits(body, default_budget=None, default_answer=None, prompt=PROMPT):
  return protocol.limits(_parse(**body), Defaults(default_budget, default_answer), T, prompt,
                         CONTEXT)


# (README cell, request body, server defaults (B, A), prompt tokens) -> (B, A, M, placement)
SERVED = [
    ("B A M", {"thinking_token_budget": 20, "answer_tokens": 10, "max_tokens": 40}, (None, None),
     (20, 10, None, "replace")),
    ("B A -", {"thinking_token_budget": 20, "answer_tokens": 10}, (None, None),
     (20, 10, None, "replace")),
    ("B - M", {"thinking_token_budget": 20, "max_tokens": 40}, (None, None),
     (20, 20, None, "replace")),
    ("B - M append", {"thinking_token_budget": 20, "max_tokens": 40, "placement": "append"},
     (None, None), (20, 8, None, "append")),
    ("B - -", {"thinking_token_budget": 20}, (None, None), (20, 100, None, "replace")),
    ("B - - default A", {"thinking_token_budget": 20}, (None, 5), (20, 5, None, "replace")),
    ("D A M", {"answer_tokens": 10, "max_tokens": 100}, (30, None), (30, 10, None, "replace")),
    ("D A M shrinks D", {"answer_tokens": 10, "max_tokens": 30}, (30, None),
     (20, 10, None, "replace")),
    ("D A -", {"answer_tokens": 10}, (30, None), (30, 10, None, "replace")),
    ("D A - shrinks D", {"answer_tokens": 100}, (30, None), (20, 100, None, "replace")),
    ("D - M", {"max_tokens": 40}, (30, None), (30, 10, None, "replace")),
    ("D - M at or below D: plain", {"max_tokens": 30}, (30, None), (None, None, 30, None)),
    ("D - M below D: plain", {"max_tokens": 7}, (30, 5), (None, None, 7, None)),
    ("D - -", {}, (30, None), (30, 90, None, "replace")),
    ("D - - default A", {}, (30, 5), (30, 5, None, "replace")),
    ("D - - s1 appends", {"mode": "s1"}, (30, 5), (30, 5, None, "append")),
    ("- - M", {"max_tokens": 7}, (None, None), (None, None, 7, None)),
    ("- - -", {}, (None, None), (None, None, 120, None)),
]


@pytest.mark.parametrize("cell, body, defaults, expected", SERVED, ids=[c[0] for c in SERVED])
def test_every_served_cell_of_the_table(cell, body, defaults, expected):
  lim = _limits(body, *defaults)
  assert dataclasses.astuple(lim) == expected
  generated = (lim.max_new_tokens if lim.thinking_budget is None else
               lim.thinking_budget + lim.answer_tokens + (T if lim.placement == "append" else 0))
  cap = body.get("max_tokens", CONTEXT - PROMPT)
  assert generated <= cap  # served within max_tokens (and within the context)
  if "answer_tokens" in body:
    assert lim.answer_tokens == body["answer_tokens"]


# (README cell, body, defaults, prompt tokens, the field the 400 names)
REFUSED = [
    ("B A M", {"thinking_token_budget": 20, "answer_tokens": 30, "max_tokens": 40}, (None, None),
     PROMPT, "max_tokens"),
    ("B A -", {"thinking_token_budget": 20, "answer_tokens": 101}, (None, None), PROMPT,
     "prompt"),
    ("B - M", {"thinking_token_budget": 20, "max_tokens": 20}, (None, None), PROMPT,
     "max_tokens"),
    ("B - M append", {"thinking_token_budget": 20, "max_tokens": 32, "placement": "append"},
     (None, None), PROMPT, "max_tokens"),
    ("B - M max_completion_tokens", {"thinking_token_budget": 20, "max_completion_tokens": 20},
     (None, None), PROMPT, "max_completion_tokens"),
    ("B - -", {"thinking_token_budget": 120}, (30, 5), PROMPT, "thinking_token_budget"),
    ("B <= T", {"thinking_token_budget": 12, "max_tokens": 99}, (None, None), PROMPT,
     "thinking_token_budget"),
    ("D A M", {"answer_tokens": 20, "max_tokens": 30}, (30, None), PROMPT, "answer_tokens"),
    ("D A -", {"answer_tokens": 110}, (30, None), PROMPT, "answer_tokens"),
    ("D - M s1 needs a window", {"mode": "s1", "max_tokens": 20}, (30, None), PROMPT, "mode"),
    ("D - M past the context", {"max_tokens": 121}, (30, None), PROMPT, "prompt"),
    ("- A -", {"answer_tokens": 3}, (None, None), PROMPT, "answer_tokens"),
    ("- A M", {"answer_tokens": 3, "max_tokens": 50}, (None, None), PROMPT, "answer_tokens"),
    ("- placement", {"placement": "append"}, (None, None), PROMPT, "placement"),
    ("- mode s1", {"mode": "s1"}, (None, None), PROMPT, "mode"),
    ("- - M past the context", {"max_tokens": 121}, (None, None), PROMPT, "prompt"),
]


@pytest.mark.parametrize("cell, body, defaults, prompt, param", REFUSED,
                         ids=[c[0] for c in REFUSED])
def test_every_refused_cell_names_only_fields_the_client_sent(cell, body, defaults, prompt,
                                                              param):
  with pytest.raises(ServeError) as e:
    _limits(body, *defaults, prompt=prompt)
  assert e.value.param == param and e.value.status == 400
  assert param in body or param == "prompt"
  named = set(re.findall(r"\b(?:%s)\b" % "|".join(FIELDS), e.value.message))
  # a field is named only when sent, or as what is missing where the server has no default
  missing = {"thinking_token_budget"} if defaults[0] is None else set()
  assert named <= set(body) | missing, (named, e.value.message)


def test_the_default_budget_never_breaks_a_plain_request_with_max_tokens():
  """Issue 25: a plain request with max_tokens at or below the default budget got a 400
  naming thinking_token_budget; one with only answer_tokens got "no server default"."""
  for m in range(1, CONTEXT - PROMPT + 1):
    lim = _limits({"max_tokens": m}, 30)
    total = lim.max_new_tokens or lim.thinking_budget + lim.answer_tokens
    assert total <= m
  assert _limits({"answer_tokens": 4}, 30).thinking_budget == 30


def test_parsed_numbers_fit_the_widths_the_engine_stores():
  for name, value in (("top_k", 2**31), ("seed", 2**31), ("max_tokens", 2**31),
                      ("thinking_token_budget", 2**31), ("answer_tokens", 10**400),
                      ("temperature", 10**400), ("top_p", 10**400), ("seed", -1)):
    with pytest.raises(ServeError) as e:
      _parse(**{name: value})
    assert e.value.param == name and len(e.value.message) < 200
  assert _parse(top_k=2**31 - 1, seed=2**31 - 1).top_k == 2**31 - 1
  assert _parse().seed is None and _parse(seed=5).seed == 5  # absent: the app draws one


@pytest.mark.parametrize("raw, message", [
    (b'{"model": "m", "prompt": "\xff"}', "not UTF-8 text (byte 26: b'\\xff')"),
    (b'{"model": "m", "prompt": "\\ud800"}', "prompt: a string holds a lone surrogate"),
    (b'{"model": "m", "prompt": "x", "seed": ' + b"9" * 4301 + b"}", "not valid JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b'{"model": "m", "prompt": ["\\udc00"]}', "prompt: a string holds a lone surrogate"),
])
def test_bodies_that_are_not_json_text_are_400(raw, message):
  with pytest.raises(ServeError) as e:
    protocol.load_body(raw)
  assert message in e.value.message and e.value.status == 400


def test_chat_prompt_is_the_z1_prompt():
  text = protocol.chat_prompt([{"role": "user", "content": "Q?"}],
                              protocol.DEFAULT_SYSTEM_PROMPT)
  assert text == render_prompt("Q?")


# -- the reasoning / answer rule, streamed and whole ----------------------------------------------

@dataclasses.dataclass
class _Gen:  # the fields of `engine.Generation` the protocol reads
  tokens: list
  thinking_tokens: int
  answer_tokens: int
  hit_budget: bool
  ended: bool
  prompt_tokens: int = 3

  @property
  def finish_reason(self):
    return "stop" if self.ended else "length"


TEXTS = ["你好，世界！ naïve café — ∑ x² 🙂 𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "日本語のテキスト 👨‍👩‍👧‍👦 and ASCII",
         "def f(x):\n    return x  # ok\n\n\n", "ÅÄÖ ąęł ſ ǅ 𝄞 🇺🇳"]
EOS = 151645


def _case(tok, name):
  """(generation, budgeted, trigger length): the five cases of the rule."""
  think = tok.encode(TEXTS[0], add_special_tokens=False)
  answer = tok.encode(TEXTS[1], add_special_tokens=False)
  trigger = tok.encode(ANSWER_TRIGGER, add_special_tokens=False)
  n, t = len(think), len(trigger)
  if name == "plain":
    return _Gen(think + answer, n + len(answer), 0, False, False), False, 0
  if name == "budget hit":
    ids = think + trigger + answer + [EOS]
    return _Gen(ids, n, len(answer) + 1, True, True), True, t
  if name == "ended inside the window":
    return _Gen(think + [EOS], n + 1, 0, False, True), True, t
  raise AssertionError(name)


def _stream(tok, gen, budgeted, t, rng):
  """The deltas of `gen` streamed in events of random sizes, as the engine sends them."""
  st_ = protocol.StreamText(tok, (EOS,), budgeted)
  trigger = gen.thinking_tokens if budgeted and gen.thinking_tokens < len(gen.tokens) else None
  out, i = [], 0
  while i < len(gen.tokens):
    k = rng.randint(1, 9)
    part = gen.tokens[i:i + k]
    done = i + k >= len(gen.tokens)
    at = trigger - i if trigger is not None and i <= trigger < i + len(part) else None
    out += st_.add(i, part, at, t, done, done and gen.ended)
    i += len(part)
  return out


@pytest.mark.parametrize("name", ["plain", "budget hit", "ended inside the window"])
def test_streamed_and_whole_agree_field_by_field(tok, name):
  """On crafted generations of multi-byte text (the engine's five cases, append and s1
  included, are in test_serve_app.py)."""
  gen, budgeted, t = _case(tok, name)
  s = protocol.split_generation(gen, tok, t, (EOS,), budgeted)
  for seed in range(5):
    deltas = _stream(tok, gen, budgeted, t, random.Random(seed))
    joined = {f: "".join(x for g, x in deltas if g == f) for f in ("reasoning", "content")}
    assert joined["content"] == s.content
    assert joined["reasoning"] == (s.reasoning or "")
    triggers = [g for g, _ in deltas if g == "trigger"]
    assert len(triggers) == (1 if budgeted and gen.hit_budget else 0)
  # the rule: reasoning before the trigger, the answer after it, nothing twice
  if name == "plain":
    assert (s.reasoning, s.content, s.reasoning_tokens) == (None, protocol.decode(
        tok, gen.tokens), 0)
  elif name == "ended inside the window":
    assert (s.reasoning, s.content) == (TEXTS[0], "")
    assert s.reasoning_tokens == s.thinking_tokens == len(gen.tokens)
  else:
    assert (s.reasoning, s.content) == (TEXTS[0], TEXTS[1])
    assert s.reasoning_tokens == s.thinking_tokens < s.completion_tokens
  whole = protocol.chat_response("id", "m", s)["choices"][0]["message"]
  assert whole["content"] == s.content
  assert whole.get("reasoning") == whole.get("reasoning_content") == s.reasoning


@settings(max_examples=150, deadline=None)
@given(pieces=st.lists(st.one_of(st.integers(0, 151935), st.sampled_from(TEXTS)), min_size=1,
                       max_size=12), seed=st.integers(0, 2**16), ended=st.booleans())
def test_incremental_decoding_equals_whole_text_decoding(tok, pieces, seed, ended):
  """Random ids (byte pieces of multi-byte characters, ids past the tokenizer's own, which
  decode to nothing) and real multi-byte texts, in events of random sizes."""
  ids = []
  for p in pieces:
    ids += tok.encode(p, add_special_tokens=False) if isinstance(p, str) else [p]
  if ended:
    ids.append(EOS)
  gen = _Gen(ids, len(ids), 0, False, ended)
  deltas = _stream(tok, gen, False, 0, random.Random(seed))
  body = ids[:-1] if ended else ids
  assert "".join(x for _, x in deltas) == protocol.decode(tok, body)


def _stream_cpu(tok, n: int) -> float:
  ids = (tok.encode(" ".join(TEXTS) * 400, add_special_tokens=False) * 2)[:n]
  best = float("inf")
  for _ in range(3):
    t0 = time.process_time()
    s = protocol.StreamText(tok, (EOS,), True)
    for i in range(0, n, 16):
      s.add(i, ids[i:i + 16], None, T, i + 16 >= n)
    best = min(best, time.process_time() - t0)
  return best


def test_stream_decoding_cost_grows_linearly(tok):
  """Re-decoding the whole text at every event cost 64x more for 8x the tokens (0.52 s of
  event-loop CPU for 8,192 tokens); decoding only the new tokens costs about 8x."""
  small, large = _stream_cpu(tok, 1024), _stream_cpu(tok, 8192)
  assert large < 24 * small, (small, large)


def test_error_bodies_are_openai_shaped():
  body = ServeError("x: bad", "x").body()
  assert json.loads(json.dumps(body)) == {"error": {"message": "x: bad", "type":
                                                    "invalid_request_error", "param": "x",
                                                    "code": None}}
