"""Thinking budgets: where the answer trigger goes, and the ids it is made of.

z1 (Shifted Thinking Window): a row still thinking when its window of B tokens is about to
close gets the trigger (T tokens) forced into the window's last T positions (`replace`: the
window holds exactly B tokens, trigger included), then answers for at most A tokens. `append`
puts the trigger after B generated tokens instead, as the paper's two-pass vLLM code did.
s1 (budget forcing): an explicit answer marker is placed when the budget runs out or when the
model ends its thinking by itself; an end before `min_thinking` tokens is replaced by "Wait".

The trigger is one text (`data.format.ANSWER_TRIGGER`), tokenized once per tokenizer.
"""

from __future__ import annotations

import dataclasses
import functools

from z1_jax.data.format import ANSWER_TRIGGER, IM_END, S1_ANSWER_MARKER, S1_WAIT
from z1_jax.errors import Z1Error

PLACEMENTS = ("replace", "append")
MODES = ("z1", "s1")


@dataclasses.dataclass(frozen=True)
class Budget:
  """A resolved budget: `thinking` (B) and `answer` (A) tokens, the marker ids (T of them)."""
  thinking: int
  answer: int
  marker_ids: tuple[int, ...]
  placement: str = "replace"

  def __post_init__(self):
    t = len(self.marker_ids)
    if self.placement not in PLACEMENTS:
      raise Z1Error(f"placement={self.placement!r}: expected one of {PLACEMENTS}")
    if self.answer < 1:
      raise Z1Error(f"answer_tokens={self.answer}: expected an integer >= 1")
    if t == 0:
      raise Z1Error("the answer trigger is empty: pass trigger text or trigger_ids")
    if self.thinking <= t:
      raise Z1Error(f"thinking_budget={self.thinking} must exceed the trigger length ({t} "
                    "tokens): the trigger fills the last positions of the window")

  @property
  def trigger_step(self) -> int:
    """Index of the generated token where the trigger starts for rows still thinking."""
    return self.thinking - len(self.marker_ids) if self.placement == "replace" else self.thinking

  @property
  def stop(self) -> int:
    """Most tokens a row can generate: window (and trigger), then the answer."""
    return self.trigger_step + len(self.marker_ids) + self.answer


@functools.lru_cache(maxsize=8)
def _encode_cached(tokenizer, text: str) -> tuple[int, ...]:
  return tuple(tokenizer.encode(text, add_special_tokens=False))


def encode(tokenizer, text: str) -> tuple[int, ...]:
  """Token ids of `text` alone (no special tokens added), computed once per tokenizer."""
  try:
    return _encode_cached(tokenizer, text)
  except TypeError:  # an unhashable tokenizer object: no cache
    return tuple(tokenizer.encode(text, add_special_tokens=False))


@functools.lru_cache(maxsize=1)
def default_tokenizer():
  """The offline Qwen2.5 tokenizer (Z1 models are Qwen2.5): used for the default trigger when
  no tokenizer is given."""
  from z1_jax.data.tokenizer import load_tokenizer
  return load_tokenizer(None)


def marker_ids(mode: str, trigger: str | None, trigger_ids, tokenizer) -> tuple[int, ...]:
  """The ids forced at the budget: explicit ids, else `trigger` text (default: the z1 trigger
  or the s1 answer marker) tokenized with `tokenizer` (default: the offline Qwen2.5 one)."""
  if mode not in MODES:
    raise Z1Error(f"mode={mode!r}: expected one of {MODES}")
  if trigger_ids is not None:
    if trigger is not None:
      raise Z1Error("pass the trigger as text or as ids, not both")
    return tuple(int(i) for i in trigger_ids)
  if trigger is None:
    trigger = ANSWER_TRIGGER if mode == "z1" else S1_ANSWER_MARKER
  return encode(tokenizer or default_tokenizer(), trigger)


def wait_ids(tokenizer) -> tuple[int, ...]:
  return encode(tokenizer or default_tokenizer(), S1_WAIT)


def default_eos_ids(tokenizer) -> tuple[int, ...]:
  """`<|im_end|>` and `<|endoftext|>`: from the tokenizer when given, else the Qwen2.5 ids."""
  from z1_jax.data.tokenizer import ENDOFTEXT
  if tokenizer is None:
    return (151645, 151643)
  ids = []
  for name in (IM_END, ENDOFTEXT):
    i = tokenizer.convert_tokens_to_ids(name)
    if i is not None and i != tokenizer.unk_token_id:
      ids.append(int(i))
  if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
    ids.append(int(tokenizer.eos_token_id))
  return tuple(ids)
