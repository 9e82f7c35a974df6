"""The filters a teacher's trajectory passes, in order; a row is counted at the first that removes
it (`FATES`, the report's funnel).

  length_cap   the teacher reached `generation.max_tokens` without ending (Z1 cut its traces at
               8,192 tokens): removed with `filters.on_length_cap = "drop"`, kept (and counted)
               with "keep".
  empty        the response is blank.
  malformed    the response holds text a finished answer cannot: the Unicode replacement
               character (bytes that decode to no character: a trajectory cut inside a
               character, or a tokenizer mismatch), a chat-control token (`<|im_start|>`,
               `<|im_end|>`, `<|endoftext|>`: the teacher wrote past its turn), or, when
               `filters.answer_pattern` is set, no match of it (no final answer).
  repetition   repetitive reasoning (Z1 removed about 3% of its traces for it): the share of
               repeated n-grams, `repeated_ngram_share`, above `filters.repetition_max_share`.
  check        (optional, `checks.py`) the answer run in the sandbox failed: removed, or kept in
               the separate `failed` split with `filters.on_fail = "split"`.

The repetition detector: over the response's tokens t_1..t_L (the teacher's own ids) and n =
`filters.repetition_ngram`, the share of the L - n + 1 n-grams that already occurred earlier in
the response, 1 - distinct / total (0 when L < n). A trajectory that loops ("Wait, let me check
again. Wait, let me check again. ...") tends to 1 - period / L; reasoning that merely reuses
phrases, or writes its final code once more after drafting it, stays well below 0.5 at n = 20
(`tests/test_distill_filters.py` has both kinds). Tokens rather than words: it works the same on
code, prose and any language.
"""

from __future__ import annotations

import re
from typing import Sequence

from z1_jax.data.format import IM_END, IM_START
from z1_jax.data.tokenizer import ENDOFTEXT

FATES = ("length_cap", "empty", "malformed", "repetition", "check")  # removal reasons, in order
CONTROL_TOKENS = (IM_START, IM_END, ENDOFTEXT)


def repeated_ngram_share(ids: Sequence[int], n: int) -> float:
  """The share of the n-grams of `ids` that occurred earlier in `ids` (module docstring)."""
  total = len(ids) - n + 1
  if total <= 0:
    return 0.0
  seen = {tuple(ids[i:i + n]) for i in range(total)}
  return 1.0 - len(seen) / total


def malformed_reason(response: str, answer_pattern: str = "") -> str | None:
  """Why a non-empty response is malformed (module docstring), or None."""
  if "\ufffd" in response:
    return "replacement character"
  for token in CONTROL_TOKENS:
    if token in response:
      return f"control token {token}"
  if answer_pattern and re.search(answer_pattern, response) is None:
    return "no match of filters.answer_pattern"
  return None


def extract_answer(response: str, answer_pattern: str) -> str | None:
  """The last match of `answer_pattern` in the response: its group 1 (the whole match when the
  pattern has no group), stripped; None without a match."""
  matches = list(re.finditer(answer_pattern, response))
  if not matches:
    return None
  m = matches[-1]
  return (m.group(1) if m.re.groups else m.group(0)).strip()


def fate(response: str, ids: Sequence[int], hit_cap: bool, filters) -> tuple[str | None, float]:
  """(the first filter that removes the row or None, the row's repeated n-gram share); the
  check, which needs the sandbox, is `checks.py`'s."""
  share = repeated_ngram_share(ids, filters.repetition_ngram)
  if hit_cap and filters.on_length_cap == "drop":
    return "length_cap", share
  if not response.strip():
    return "empty", share
  if malformed_reason(response, filters.answer_pattern) is not None:
    return "malformed", share
  if share > filters.repetition_max_share:
    return "repetition", share
  return None, share
