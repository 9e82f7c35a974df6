"""Pulling the answer out of a completion: last `\\boxed{}`, multiple-choice letter, code."""

from __future__ import annotations

import re

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_LETTER = re.compile(r"answer\s*(?:is)?\s*[:：]?\s*\(?\s*\**\s*([A-Da-d])\b(?![\w'])",
                            re.IGNORECASE)
_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


def last_boxed(text: str) -> str | None:
  """Content of the last `\\boxed{...}` (balanced braces), or None."""
  starts = [m.end() for m in _BOXED.finditer(text)]
  for start in reversed(starts):
    depth = 1
    for i in range(start, len(text)):
      if text[i] == "{":
        depth += 1
      elif text[i] == "}":
        depth -= 1
        if depth == 0:
          return text[start:i].strip()
  return None


def mc_letter(text: str) -> str | None:
  """Last `\\boxed{X}` if it holds a letter A-D, else the last `Answer: X`; upper case."""
  boxed = last_boxed(text)
  if boxed is not None:
    inner = re.sub(r"\\text\{([^}]*)\}|\\mathrm\{([^}]*)\}", r"\1\2", boxed).strip(" ().*$")
    if re.fullmatch(r"[A-Da-d]", inner):
      return inner.upper()
    m = re.match(r"([A-Da-d])[).:\s]", inner + " ")
    if m:
      return m.group(1).upper()
  matches = _ANSWER_LETTER.findall(text)
  return matches[-1].upper() if matches else None


def last_code_block(text: str, languages=("python", "py", "python3", "")) -> str | None:
  """The last fenced code block in one of `languages` ('' = no language tag), or None."""
  blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(text)]
  for lang, body in reversed(blocks):
    if lang in languages:
      return body
  return None
