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


def port(text: str) -> int:
  """A TCP port 0..65535 (0: any free port)."""
  value = non_negative_int(text)
  if value > 65535:
    raise argparse.ArgumentTypeError(f"expected a port 0..65535 (0: any free one), got {text}")
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


def mesh_spec(text: str) -> dict[str, int]:
  """`D,F,T` or `data=D,fsdp=F,tensor=T` (axes in any order, missing ones 1) -> {axis: size};
  sizes are integers > 0, at most one may be -1 (all remaining devices). `--mesh -1,4,2` also
  parses (see `Z1Parser`)."""
  axes = ("data", "fsdp", "tensor")
  parts = [p.strip() for p in text.split(",")]
  try:
    if all("=" in p for p in parts):
      pairs = [p.split("=", 1) for p in parts]
      unknown = [k for k, _ in pairs if k.strip() not in axes]
      if unknown or len({k.strip() for k, _ in pairs}) != len(pairs):
        raise argparse.ArgumentTypeError(
            f"{text!r}: axes must be distinct names among {', '.join(axes)}")
      shape = {a: 1 for a in axes} | {k.strip(): int(v) for k, v in pairs}
    elif len(parts) == 3:
      shape = dict(zip(axes, (int(p) for p in parts)))
    else:
      raise ValueError
  except ValueError:
    raise argparse.ArgumentTypeError(
        f"{text!r}: expected DATA,FSDP,TENSOR (e.g. 1,4,2 or -1,4,2) or "
        "data=-1,fsdp=4,tensor=2") from None
  sizes = list(shape.values())
  if any(s == 0 or s < -1 for s in sizes) or sizes.count(-1) > 1:
    raise argparse.ArgumentTypeError(
        f"{text!r}: sizes must be integers > 0, with at most one -1 (all remaining devices)")
  return shape


def accelerator_name(text: str) -> str:
  """A Cloud TPU slice name (`v5p-64`, `v5litepod-16`, `v4-32`, `v6e-8`), canonical spelling."""
  from z1_jax.errors import Z1Error
  from z1_jax.topology import accelerator
  try:
    return accelerator(text).name
  except Z1Error as e:
    raise argparse.ArgumentTypeError(str(e)) from None


def byte_size(text: str) -> int:
  """`5GB`, `500MB`, `64KB` or a number of bytes -> bytes (> 0)."""
  import re
  m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?B)?\s*", text.upper())
  if not m:
    raise argparse.ArgumentTypeError(f"{text!r}: expected a size such as 5GB, 500MB or 1000000")
  value = int(float(m.group(1)) * {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9}[
      m.group(2) or "B"])
  if value <= 0:
    raise argparse.ArgumentTypeError(f"{text!r}: expected a size > 0")
  return value


def choice_of(names, what: str):
  """A `type=` that accepts one of `names` (a list, or a callable returning one when parsing,
  so a heavy module is imported only for the command that needs it)."""
  def check(text: str) -> str:
    known = list(names() if callable(names) else names)
    if text not in known:
      raise argparse.ArgumentTypeError(f"unknown {what} {text!r}; known: {', '.join(known)}")
    return text
  check.__name__ = what
  return check


class Z1HelpFormatter(argparse.RawDescriptionHelpFormatter):
  """Every option's help ends with its default: `(default: X)` unless the text already says
  what the default is; flags show `(default: off)`."""

  def _get_help_string(self, action):
    text = action.help or ""
    if "default" in text or action.default is argparse.SUPPRESS or not action.option_strings:
      return text
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
      return f"{text} (default: {'off' if action.default is False else 'on'})".strip()
    if action.default is None:
      return text  # the help text itself must say what happens without it (tests check)
    return f"{text} (default: %(default)s)".strip()


class Z1Parser(argparse.ArgumentParser):
  """The parser class of `z1` and (through `add_subparsers`) of all its subcommands: the help
  formatter above, and option values that start with `-` and a digit (`--mesh -1,4,2`) taken
  as values rather than as unknown flags."""

  def __init__(self, *args, **kwargs):
    kwargs.setdefault("formatter_class", Z1HelpFormatter)
    super().__init__(*args, **kwargs)

  def error(self, message):
    """One line naming the bad option, and where to look (not the whole usage block)."""
    self.exit(2, f"{self.prog}: error: {message}\n(see `{self.prog} --help`)\n")

  def parse_known_args(self, args=None, namespace=None):
    import sys
    args = list(sys.argv[1:] if args is None else args)
    joined, i = [], 0
    while i < len(args):
      a = args[i]
      if (a.startswith("--") and "=" not in a and i + 1 < len(args) and
          len(args[i + 1]) > 1 and args[i + 1][0] == "-" and args[i + 1][1].isdigit()):
        joined.append(f"{a}={args[i + 1]}")
        i += 2
      else:
        joined.append(a)
        i += 1
    return super().parse_known_args(joined, namespace)
