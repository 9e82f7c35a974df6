"""Pulling the answer out of a completion: last `\\boxed{}`, multiple-choice letter, code."""

from __future__ import annotations

import re

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
# "Answer: B", "the answer is (C)", "**Answer:** D": the word case-insensitive, the letter a
# capital only ("the answer is a consequence ..." is not A), standing alone.
_ANSWER_LETTER = re.compile(r"(?i:answer)\s*(?:(?i:is))?\s*[:：]?\s*\**\s*\(?\s*\**\s*"
                            r"([A-D])\b(?![\w'])")
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
  """Last `\\boxed{X}` if it holds a letter A-D (either case: a box is an answer position),
  else the last `Answer: X` with X a capital A-D."""
  boxed = last_boxed(text)
  if boxed is not None:
    inner = re.sub(r"\\text\{([^}]*)\}|\\mathrm\{([^}]*)\}", r"\1\2", boxed).strip(" ().*$")
    if re.fullmatch(r"[A-Da-d]", inner):
      return inner.upper()
    m = re.match(r"([A-Da-d])[).:\s]", inner + " ")
    if m:
      return m.group(1).upper()
  matches = _ANSWER_LETTER.findall(text)
  return matches[-1] if matches else None


def code_blocks(text: str, languages=("python", "py", "python3", "")) -> list[str]:
  """The fenced code blocks in one of `languages` ('' = no language tag), in order."""
  return [body for lang, body in _FENCE.findall(text) if lang.lower() in languages]


def last_code_block(text: str, languages=("python", "py", "python3", "")) -> str | None:
  """The last fenced code block in one of `languages` ('' = no language tag), or None."""
  blocks = code_blocks(text, languages)
  return blocks[-1] if blocks else None


def last_block_defining(blocks: list[str], pattern: str) -> str | None:
  """The last block with a line matching `pattern` (a definition), else the last block: a
  solution followed by a usage example (`print(add(1, 2))`) is still the solution."""
  for body in reversed(blocks):
    if re.search(pattern, body, re.MULTILINE):
      return body
  return blocks[-1] if blocks else None
