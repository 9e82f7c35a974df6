"""Every `z1` command line in the README's code blocks parses with the real parser and passes
the checks the command itself makes before any work (its config and overrides, its mesh over
the slice the walkthrough uses, `z1 launch`'s name, zone and --out), so a documented command
cannot drift from the code (issue 29: the pod walkthrough's sweep used a mesh decoding refuses).
"""

import re
import shlex
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Lines of the README's code blocks skipped as synopses, not commands: the command-line
# reference writes optional parts in brackets and alternatives with a bar. Nothing else is
# skipped: MY_BUCKET, MY_PROJECT and ~/paths are real arguments and parse.
SYNOPSIS_MARKERS = ("[", "|")
DECODING = ("generate", "sweep", "serve", "distill")


def _z1_argv(words: list[str]) -> list[str] | None:
  """The arguments after `z1` (or `.../bin/z1`), looking into gcloud's --command='...'."""
  for i, word in enumerate(words):
    if word == "z1" or word.endswith("/z1"):
      return words[i + 1:]
    if word.startswith("--command="):
      inner = _z1_argv(shlex.split(word[len("--command="):]))
      if inner is not None:
        return inner
  return None


def documented_commands() -> list[tuple[str, list[str], str | None]]:
  """(line, z1 arguments, the slice named by --accelerator in the same code block)."""
  found = []
  for block in re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S):
    slice_name = next(iter(re.findall(r"--accelerator (\S+)", block)), None)
    line = ""
    for part in re.sub(r"\\\n\s*", " ", block).splitlines():
      line += part
      try:
        words = shlex.split(line, comments=True)
      except ValueError:  # a quoted argument goes on (curl -d '{...}')
        line += "\n"
        continue
      if not any(m in line for m in SYNOPSIS_MARKERS):
        argv = _z1_argv(words)
        if argv is not None:
          found.append((line.strip(), argv, slice_name))
      line = ""
  return found


COMMANDS = documented_commands()


def test_the_readme_documents_the_pod_walkthrough_and_serving():
  names = [" ".join(argv[:2]) if argv[0] in ("launch", "convert") else argv[0]
           for _, argv, _ in COMMANDS]
  for expected in ("plan", "launch tpu", "launch status", "launch logs", "launch stop",
                   "launch delete", "convert orbax-to-hf", "sweep", "serve"):
    assert expected in names
  sweeps = [argv for _, argv, slice_name in COMMANDS if argv[0] == "sweep"]
  assert sweeps and all("--mesh" in argv for argv in sweeps)


@pytest.mark.parametrize("line, argv, slice_name", COMMANDS, ids=[c[0][:60] for c in COMMANDS])
def test_documented_command_parses_and_passes_its_checks(line, argv, slice_name, monkeypatch):
  from z1_jax.cli import build_parser
  from z1_jax.config import load_config
  from z1_jax.topology import accelerator, resolve_mesh_shape
  monkeypatch.chdir(ROOT)  # the README's paths are relative to the clone
  args = build_parser().parse_args(argv)  # argparse exits 2 on anything it refuses
  if getattr(args, "config", None) and hasattr(args, "overrides"):
    load_config(args.config, list(args.overrides))  # unknown keys, wrong types, bad values
  mesh = getattr(args, "mesh", None)
  if mesh is not None:
    name = getattr(args, "accelerator", None) or slice_name
    if name is not None:  # a block about a slice: the mesh must divide its chips
      shape = resolve_mesh_shape(mesh, accelerator(name).chips)
    else:  # a block about any host: its own devices are checked when it runs
      shape = {axis: max(size, 1) for axis, size in mesh.items()}
    if args.command in DECODING:
      from z1_jax.infer.load import check_serving_mesh
      check_serving_mesh(types.SimpleNamespace(shape=shape))
  if args.command == "launch":
    from z1_jax.launch import tpu
    tpu.check_name(args.name)
    tpu.check_zone(args.zone)
    if args.action == "tpu":
      tpu.check_out(args.out, tpu.accelerator_type(args.accelerator)[1].hosts)
      tpu.check_overrides(list(args.overrides))


def test_a_refused_mesh_is_caught():
  """What the check above would have said about the walkthrough's old sweep."""
  from z1_jax.errors import Z1Error
  from z1_jax.infer.load import check_serving_mesh
  from z1_jax.topology import resolve_mesh_shape
  with pytest.raises(Z1Error, match="decoding with fsdp > 1"):
    check_serving_mesh(types.SimpleNamespace(shape=resolve_mesh_shape((1, -1, 1), 32)))

