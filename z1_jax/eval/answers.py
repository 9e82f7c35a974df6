"""Scoring final answers: math equivalence (math-verify) and multiple choice letters.

math-verify's own timeouts use signals (main thread only), so they are disabled here and the
caller bounds the time instead (`score.py` runs each check in a worker process that it kills
at the sample's deadline).
"""

from __future__ import annotations

import logging

from z1_jax.errors import Z1Error
from z1_jax.eval.extract import last_boxed, mc_letter

logging.getLogger("math_verify").setLevel(logging.ERROR)


def score_math(gold: str, completion: str) -> tuple[bool, str | None, str | None]:
  """(correct, extracted answer, error kind). Only the last `\\boxed{}` is graded."""
  boxed = last_boxed(completion)
  if boxed is None:
    return False, None, "no_answer"
  ok, error = verify_boxed(gold, boxed)
  return ok, boxed, error


def verify_boxed(gold: str, boxed: str) -> tuple[bool, str | None]:
  """(correct, error kind) for the content of a `\\boxed{}` against the gold answer. Can hang
  in sympy: `score.Scorer` runs it in a worker process it kills at the deadline."""
  from math_verify import parse, verify
  gold_parsed = parse(f"${gold}$", parsing_timeout=None)
  pred_parsed = parse(f"\\boxed{{{boxed}}}", parsing_timeout=None)
  if not gold_parsed:
    raise Z1Error(f"gold answer {gold!r} does not parse")
  if not pred_parsed:
    return False, "unparsable_answer"
  ok = bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))
  return ok, None if ok else "wrong_answer"


def score_mc(gold: str, completion: str) -> tuple[bool, str | None, str | None]:
  letter = mc_letter(completion)
  if letter is None:
    return False, None, "no_answer"
  return letter == gold, letter, None if letter == gold else "wrong_answer"
