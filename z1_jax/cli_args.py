"""argparse `type=` validators shared by every `z1` command: bad values are refused while the
arguments are parsed, before anything is loaded or compiled, with a message naming the value.
"""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
  value = _int(text)
  if value <= 0:
    raise argparse.ArgumentTypeError(f"{text!r}: expected an integer > 0")
  return value


def non_negative_int(text: str) -> int:
  value = _int(text)
  if value < 0:
    raise argparse.ArgumentTypeError(f"{text!r}: expected an integer >= 0")
  return value


def positive_float(text: str) -> float:
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r}: expected a number") from None
  if not value > 0 or value == float("inf"):
    raise argparse.ArgumentTypeError(f"{text!r}: expected a finite number > 0")
  return value


def non_negative_float(text: str) -> float:
  value = _float(text)
  if not value >= 0 or value == float("inf"):
    raise argparse.ArgumentTypeError(f"{text!r}: expected a finite number >= 0")
  return value


def probability(text: str) -> float:
  """A number in (0, 1] (top-p)."""
  value = _float(text)
  if not 0 < value <= 1:
    raise argparse.ArgumentTypeError(f"{text!r}: expected a number in (0, 1]")
  return value


def _float(text: str) -> float:
  try:
    return float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r}: expected a number") from None


def float_dtype(text: str) -> str:
  """Weight dtypes: only floating types can hold weights."""
  allowed = ("float32", "bfloat16", "float16")
  if text not in allowed:
    raise argparse.ArgumentTypeError(f"{text!r}: expected one of {', '.join(allowed)}")
  return text


def int_list(text: str) -> list[int]:
  """`1,2,3` -> [1, 2, 3] (non-empty, integers >= 0)."""
  try:
    values = [int(x) for x in text.split(",")]
  except ValueError:
    raise argparse.ArgumentTypeError(
        f"{text!r}: expected comma-separated integers, e.g. 1,2,3") from None
  if any(v < 0 for v in values):
    raise argparse.ArgumentTypeError(f"{text!r}: expected integers >= 0")
  return values


def _int(text: str) -> int:
  try:
    return int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r}: expected an integer") from None
