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
  whole = protocol.choice("chat", 0, s)["message"]
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


# -- stop strings: cut where they start, never sent before the cut ----------------------------------

def _stop_gen(tok, stop_in: str):
  """A generation whose text holds `stop_in`'s stop string in the middle (the engine keeps
  tokens up to the one completing it), as `engine.Generation` reports it."""
  before = tok.encode(TEXTS[0], add_special_tokens=False)
  stop = "x² 🙂"  # in TEXTS[0]: multi-byte, across tokens
  text = protocol.decode(tok, before)
  assert stop in text
  keep = next(j for j in range(len(before) + 1)
              if stop in protocol.decode(tok, before[:j]))
  ids = before[:keep]
  if stop_in == "answer":
    trigger = tok.encode(ANSWER_TRIGGER, add_special_tokens=False)
    think = tok.encode(TEXTS[2], add_special_tokens=False)
    gen = _Gen(think + trigger + ids, len(think), len(ids), True, True)
    return gen, stop, text[:text.index(stop)], len(trigger), True
  gen = _Gen(ids, len(ids), 0, False, True)
  return gen, stop, text[:text.index(stop)], 12, stop_in == "reasoning"


@pytest.mark.parametrize("stop_in", ["content", "reasoning", "answer"])
def test_a_stop_string_is_cut_and_a_stream_never_sends_what_it_removes(tok, stop_in):
  """Streamed in events of random sizes, every prefix of the deltas is a prefix of the final
  text (a stream that sent the held-back tail would send "x" of "x² 🙂" and then cut it)."""
  gen, stop, expected, t, budgeted = _stop_gen(tok, stop_in)
  gen.stop_reason = stop
  s = protocol.split_generation(gen, tok, t, (EOS,), budgeted)
  field = "content" if stop_in != "reasoning" else "reasoning"
  assert getattr(s, field) == expected and s.finish_reason == "stop" and s.stop_reason == stop
  for seed in range(8):
    rng = random.Random(seed)
    st_ = protocol.StreamText(tok, (EOS,), budgeted, (stop, "never"))
    trigger = gen.thinking_tokens if stop_in == "answer" else None
    sent, i = "", 0
    while i < len(gen.tokens):
      part = gen.tokens[i:i + rng.randint(1, 4)]
      done = i + len(part) >= len(gen.tokens)
      at = trigger - i if trigger is not None and i <= trigger < i + len(part) else None
      for f, x in st_.add(i, part, at, t, done, done, stop if done else None):
        if f == field:
          sent += x
          assert expected.startswith(sent), (seed, sent)
      i += len(part)
    assert sent == expected


def test_a_stop_token_id_ends_the_text_like_an_end_id(tok):
  ids = tok.encode(TEXTS[3], add_special_tokens=False)
  gen = _Gen(ids + [42], len(ids) + 1, 0, False, True)
  gen.stop_reason = 42
  s = protocol.split_generation(gen, tok, 0, (EOS,), False)
  assert s.content == TEXTS[3] and s.completion_tokens == len(ids) + 1
  st_ = protocol.StreamText(tok, (EOS,), False)
  assert "".join(x for _, x in st_.add(0, gen.tokens, None, 0, True, True, 42)) == TEXTS[3]


# -- parsing the OpenAI / vLLM controls --------------------------------------------------------------

def test_controls_parse_to_what_the_engine_takes():
  p = _parse(stop="\n\n", stop_token_ids=[7, 8], ignore_eos=True, min_tokens=2, max_tokens=5,
             n=3, logprobs=5, echo=True, seed=1)
  assert (p.stop, p.stop_token_ids, p.ignore_eos, p.min_tokens, p.n, p.logprobs, p.echo) == (
      ("\n\n",), (7, 8), True, 2, 3, 5, True)
  assert _parse(stop=["a", "b", "a"]).stop == ("a", "b") and _parse(stop=[]).stop == ()
  assert _parse(prompt=["a", [1, 2], "b"]).prompts == ("a", (1, 2), "b")
  assert _parse(prompt=[[5, 6]]).prompts == ((5, 6),) and _parse(prompt=[5, 6]).prompts == ((5, 6),)
  assert _parse(max_tokens=0, echo=True, logprobs=1).scores_prompt
  chat = protocol.parse_chat({"model": "m", "messages": [{"role": "user", "content": "x"}],
                              "logprobs": True, "top_logprobs": 20},
                             "m", protocol.ChatTemplate(None))
  assert chat.logprobs == 20 and protocol.parse_chat(
      {"model": "m", "messages": [{"role": "user", "content": "x"}], "logprobs": True}, "m",
      protocol.ChatTemplate(None)).logprobs == 0


@pytest.mark.parametrize("body, param", [
    ({"n": 129}, "n"), ({"n": 0}, "n"), ({"best_of": 3, "n": 2}, "best_of"),
    ({"stop": ["a"] * 17}, "stop"), ({"stop": [""]}, "stop"), ({"stop": 5}, "stop"),
    ({"stop_token_ids": list(range(9))}, "stop_token_ids"), ({"stop_token_ids": [-1]},
                                                             "stop_token_ids"),
    ({"logprobs": 6}, "logprobs"), ({"logprobs": True}, "logprobs"),
    ({"top_logprobs": 2}, "top_logprobs"), ({"max_tokens": 0}, "max_tokens"),
    ({"max_completion_tokens": 0}, "max_completion_tokens"),
    ({"min_tokens": 6, "max_tokens": 5}, "min_tokens"), ({"ignore_eos": 1}, "ignore_eos"),
    ({"echo": True, "logprobs": 1, "thinking_token_budget": 20}, "echo"),
    ({"prompt": ["a", ""]}, "prompt"), ({"prompt": [[1], [-2]]}, "prompt"),
    ({"prompt": []}, "prompt"), ({"repetition_penalty": 1.2}, "repetition_penalty"),
    ({"include_stop_str_in_output": True}, "include_stop_str_in_output"),
    ({"prompt_logprobs": 1}, "prompt_logprobs"), ({"suffix": "x"}, "suffix"),
    ({"stream_options": {"continuous_usage_stats": True}}, "stream_options"),
])
def test_unsupported_or_bad_controls_are_400_naming_the_field(body, param):
  with pytest.raises(ServeError) as e:
    _parse(**body)
  assert e.value.param == param and e.value.status == 400, e.value.message


@pytest.mark.parametrize("body, param", [
    ({"logprobs": 2}, "logprobs"), ({"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
    ({"top_logprobs": 2}, "top_logprobs"), ({"echo": True}, "echo"),
    ({"chat_template_kwargs": {"x": 1}}, "chat_template_kwargs"),
])
def test_chat_controls_are_checked_as_chat_takes_them(body, param):
  with pytest.raises(ServeError) as e:
    protocol.parse_chat({"model": "m", "messages": [{"role": "user", "content": "x"}], **body},
                        "m", protocol.ChatTemplate(None))
  assert e.value.param == param, e.value.message


# -- the chat template ------------------------------------------------------------------------------

def test_a_z1_export_carries_the_training_prompt_as_its_chat_template(tok, tmp_path):
  """`save_hf` writes Z1's template: the exported tokenizer's `apply_chat_template` (and so
  `z1 serve`, transformers and vLLM) renders `data.format.render_prompt`; the offline
  tokenizer's own (Qwen3's) does not (no default system prompt)."""
  import z1_jax
  from z1_jax.data.tokenizer import load_tokenizer
  question = [{"role": "user", "content": "Is 1001 prime?"}]
  assert protocol.ChatTemplate(tok).render(question) != render_prompt("Is 1001 prime?")
  out = z1_jax.save_hf(z1_jax.create_model(z1_jax.get_preset("tiny")), tmp_path / "hf",
                       dtype="float32", tokenizer=tok)
  exported = load_tokenizer(out)
  template = protocol.ChatTemplate(exported)
  assert template.source == "the tokenizer's chat_template"
  assert template.render(question) == render_prompt("Is 1001 prime?")
  turns = [{"role": "system", "content": "S"}, {"role": "user", "content": "a"},
           {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
  assert template.render(turns) == protocol.chat_prompt(turns, None)
  config = json.loads((out / "tokenizer_config.json").read_text())
  assert config.get("chat_template", (out / "chat_template.jinja").read_text()) == (
      (out / "chat_template.jinja").read_text())


def test_chat_template_override_and_fallback(tok):
  custom = protocol.ChatTemplate(tok, "{% for m in messages %}[{{ m['content'] }}]{% endfor %}"
                                 "{% if add_generation_prompt %}>{% endif %}", "t.jinja")
  assert custom.render([{"role": "user", "content": "q"}]) == "[q]>"
  assert custom.source == "--chat-template t.jinja"
  none = protocol.ChatTemplate(None)
  assert none.template is None and none.render([{"role": "user", "content": "Q?"}]) == (
      render_prompt("Q?"))
  refusing = protocol.ChatTemplate(tok, "{{ raise_exception('no system turns') }}", "r.jinja")
  with pytest.raises(ServeError) as e:
    refusing.render([{"role": "user", "content": "q"}])
  assert e.value.param == "messages" and "no system turns" in e.value.message


# -- log-probability shapes ------------------------------------------------------------------------

def test_token_bytes_join_to_the_text_and_offsets_index_it(tok):
  from z1_jax.serve import logprobs
  ids = tok.encode(TEXTS[0] + TEXTS[1], add_special_tokens=False) + [EOS]
  text = logprobs.TokenText(tok)
  assert bytes(b for i in ids for b in text.bytes(i)).decode() == protocol.decode(tok, ids)
  assert any(text.text(i) == "\ufffd" for i in ids)  # a piece of a character alone
  offsets = logprobs.Offsets(tok, 3).add(ids)
  whole = protocol.decode(tok, ids)
  for k, off in enumerate(offsets):
    prefix = protocol.decode(tok, ids[:k])
    assert off == 3 + len(prefix.rstrip("\ufffd")), k
  shape = logprobs.completion(text, ids[:2], [None, -1.5], [None, [(5, -0.5)]], offsets[:2])
  assert shape["top_logprobs"] == [None, {text.text(5): -0.5, text.text(ids[1]): -1.5}]
  assert logprobs.chat(text, [5], [-1e30], [[]])["content"][0]["logprob"] == -9999.0
  assert whole.endswith("<|im_end|>")
