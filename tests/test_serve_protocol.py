"""`z1_jax.serve.protocol` without a server: the cap/budget arithmetic, the chat prompt, the
reasoning/answer split and the stream's deltas."""

import dataclasses

import pytest

from z1_jax.data.format import render_prompt
from z1_jax.serve import protocol
from z1_jax.serve.protocol import Defaults, ServeError


def _parse(**body):
  return protocol.parse_completion({"model": "m", "prompt": "x", **body}, "m")


@pytest.mark.parametrize("body, expected", [
    ({"max_tokens": 40, "thinking_token_budget": 20}, (20, 20, None, "replace")),
    ({"max_tokens": 40, "thinking_token_budget": 20, "placement": "append"},
     (20, 8, None, "append")),
    ({"max_tokens": 40, "thinking_token_budget": 20, "answer_tokens": 20},
     (20, 20, None, "replace")),
    ({"max_tokens": 7}, (None, None, 7, None)),
    ({}, (None, None, 100, None)),
])
def test_limits(body, expected):
  lim = protocol.limits(_parse(**body), Defaults(), trigger_len=12, room=100)
  assert dataclasses.astuple(lim) == expected


@pytest.mark.parametrize("body, param", [
    ({"max_tokens": 20, "thinking_token_budget": 20}, "max_tokens"),
    ({"max_tokens": 32, "thinking_token_budget": 20, "placement": "append"}, "max_tokens"),
    ({"max_tokens": 30, "thinking_token_budget": 20, "answer_tokens": 11}, "max_tokens"),
    ({"thinking_token_budget": 12, "max_tokens": 99}, "thinking_token_budget"),
    ({"thinking_token_budget": 20}, "answer_tokens"),
    ({"answer_tokens": 3}, "answer_tokens"),
])
def test_limits_refuse_what_does_not_add_up(body, param):
  with pytest.raises(ServeError) as e:
    protocol.limits(_parse(**body), Defaults(), trigger_len=12, room=100)
  assert e.value.param == param and e.value.status == 400


def test_server_defaults_apply_when_the_request_names_no_budget():
  lim = protocol.limits(_parse(), Defaults(thinking_budget=30, answer_tokens=5), 12, 100)
  assert (lim.thinking_budget, lim.answer_tokens) == (30, 5)


def test_chat_prompt_is_the_z1_prompt():
  text = protocol.chat_prompt([{"role": "user", "content": "Q?"}],
                              protocol.DEFAULT_SYSTEM_PROMPT)
  assert text == render_prompt("Q?")


class _Tok:  # one character per id: decode is the characters
  def decode(self, ids):
    return "".join(chr(ord("a") + i) for i in ids)


@dataclasses.dataclass
class _Gen:
  tokens: list
  thinking_tokens: int
  answer_tokens: int
  hit_budget: bool
  ended: bool
  prompt_tokens: int = 3

  @property
  def finish_reason(self):
    return "stop" if self.ended else "length"


def test_split_and_stream_agree():
  tok, eos = _Tok(), (25,)
  # 4 thinking tokens, a 2-token trigger (7, 8), 3 answer tokens, then the end id
  gen = _Gen([0, 1, 2, 3, 7, 8, 4, 5, 25], 4, 3, True, True)
  s = protocol.split_generation(gen, tok, 2, eos)
  assert (s.reasoning, s.content, s.completion_tokens, s.finish_reason) == (
      "abcd", "ef", 9, "stop")
  st = protocol.StreamText(tok, eos, budgeted=True)
  out = []
  assert not st.add(0, [0, 1, 2], None, 2)
  out += st.deltas()
  assert st.add(3, [3, 7, 8, 4], 1, 2)
  out += st.deltas()
  st.add(7, [5, 25], None, 2)
  out += st.deltas(final=True, ended=True)
  joined = {f: "".join(t for g, t in out if g == f) for f in ("reasoning_content", "content")}
  assert joined == {"reasoning_content": s.reasoning, "content": s.content}


def test_a_row_that_ends_inside_its_window_is_all_content():
  tok = _Tok()
  gen = _Gen([0, 1, 25], 3, 0, False, True)
  s = protocol.split_generation(gen, tok, 2, (25,))
  assert (s.reasoning, s.content) == (None, "ab")
  st = protocol.StreamText(tok, (25,), budgeted=True)
  st.add(0, [0, 1, 25], None, 2)
  deltas = st.deltas(final=True, ended=True)
  assert [t for f, t in deltas if f == "content"] == ["ab"]
