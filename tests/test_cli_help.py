"""`--help` of every `z1` command documents every option with its default, every numeric option
is validated while parsing, and the README's "Command line" block matches the parser. These
walk `build_parser()`, so commands added later are checked without editing this file."""

import argparse
import re
from pathlib import Path

import pytest

from z1_jax import cli_args
from z1_jax.cli import build_parser

README = Path(__file__).parents[1] / "README.md"
GLOBAL_OPTIONS = {"--debug"}
VALIDATORS = {getattr(cli_args, n) for n in dir(cli_args) if callable(getattr(cli_args, n))}


def leaf_parsers(parser: argparse.ArgumentParser, words: tuple[str, ...] = ()):
  """(command words, parser) for every runnable command, e.g. (("convert", "hf-to-orbax"), p)."""
  for action in parser._actions:
    if isinstance(action, argparse._SubParsersAction):
      for name, sub in action.choices.items():
        yield from leaf_parsers(sub, words + (name,))
      return
  yield words, parser


def options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
  return {s: a for a in parser._actions for s in a.option_strings
          if s.startswith("--") and s != "--help"}


LEAVES = list(leaf_parsers(build_parser()))
IDS = [" ".join(w) for w, _ in LEAVES]


@pytest.mark.parametrize("words,parser", LEAVES, ids=IDS)
def test_help_documents_every_option_with_its_default(words, parser):
  assert isinstance(parser, cli_args.Z1Parser)  # the shared formatter and `--mesh -1,..` fix
  formatter = parser._get_formatter()
  parser.format_help()  # renders (a bad %-format in a help text would raise here)
  for name, action in options(parser).items():
    text = (formatter._get_help_string(action) or "") % {"default": action.default}
    assert "default" in text or (action.required and "required" in text), (
        f"z1 {' '.join(words)} {name}: help must say its default: {text!r}")


@pytest.mark.parametrize("words,parser", LEAVES, ids=IDS)
def test_numeric_options_are_validated(words, parser):
  """A number typed as plain int/float would accept 0, -1, nan: use a cli_args validator."""
  for name, action in options(parser).items():
    if isinstance(action.default, (int, float)) and not isinstance(action.default, bool):
      assert action.type in VALIDATORS, f"z1 {' '.join(words)} {name}: type={action.type}"
    assert action.type not in (int, float), f"z1 {' '.join(words)} {name}: type={action.type}"


def readme_commands() -> list[str]:
  """The `z1 ...` lines of the README's "Command line" block (`\\` continuations joined)."""
  text = README.read_text()
  block = re.search(r"## Command line\n+```bash\n(.*?)```", text, re.S)
  assert block, "README: no ```bash block under '## Command line'"
  joined = re.sub(r"\\\n\s*", " ", block.group(1))
  lines = [part.strip() for line in joined.splitlines() for part in line.split(" | ")]
  return [line for line in lines if line.startswith("z1 ")]


def test_readme_command_line_matches_the_parser():
  lines = readme_commands()
  top = build_parser()
  seen = set()
  for line in lines:
    words = line.split()[1:]
    named = tuple(w for w in words if not w.startswith(("-", "[")))
    match = [(w, p) for w, p in LEAVES if named[:len(w)] == w]
    mentioned = set(re.findall(r"--[a-z][a-z0-9-]*", line))
    if not match:  # a line about the whole program: only global options
      assert mentioned <= set(options(top)), f"README: unknown options in {line!r}"
      seen.add(())
      continue
    (leaf, parser), = match
    known = set(options(parser)) | GLOBAL_OPTIONS
    assert mentioned <= known, f"README: {sorted(mentioned - known)} unknown to z1 {' '.join(leaf)}"
    missing = set(options(parser)) - mentioned
    assert not missing, f"README line for z1 {' '.join(leaf)} lacks {sorted(missing)}"
    seen.add(leaf)
  undocumented = [" ".join(w) for w, _ in LEAVES if w not in seen]
  assert not undocumented, f"README 'Command line' has no line for: {undocumented}"
  assert any(GLOBAL_OPTIONS <= set(re.findall(r"--[a-z-]+", line)) for line in lines), (
      "README: the global --debug is not mentioned")


def test_mesh_accepts_the_documented_forms():
  parse = build_parser().parse_args
  base = ["convert", "hf-to-orbax", "--hf", "a", "--out", "b"]
  want = {"data": -1, "fsdp": 4, "tensor": 2}
  assert parse(base + ["--mesh", "-1,4,2"]).mesh == want
  assert parse(base + ["--mesh=-1,4,2"]).mesh == want
  assert parse(base + ["--mesh", "data=-1,fsdp=4,tensor=2"]).mesh == want
  assert parse(base + ["--mesh", "tensor=2,data=-1"]).mesh == {"data": -1, "fsdp": 1, "tensor": 2}


def test_error_hints_name_the_cli_flag_too():
  """A library hint such as `pass overwrite=True` surfaces through the CLI: it must also name
  the flag (`--overwrite`), in the same message."""
  root = Path(__file__).parents[1] / "z1_jax"
  offenders = []
  for path in root.rglob("*.py"):
    for n, line in enumerate(path.read_text().splitlines(), 1):
      hint = re.search(r"pass [a-z_]+=", line) and not line.strip().startswith("#")
      if hint and "--" not in line:
        offenders.append(f"{path.relative_to(root.parent)}:{n}: {line.strip()}")
  assert not offenders, "\n".join(offenders)
