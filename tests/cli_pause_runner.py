"""Runs `z1 ARGV...` with one function made to pause, so a test can interrupt it there.

Usage: python cli_pause_runner.py MODULE:ATTR[.ATTR] MARKER_FILE -- ARGV...
The named function (e.g. `z1_jax.outputs:commit`, called when a finished output is about to
replace the previous one) writes MARKER_FILE on its first call and sleeps, and the test
sends SIGINT or SIGKILL. Nothing else is changed: the command runs through `z1_jax.cli.main`.
"""

import importlib
import sys
import time
from pathlib import Path


def main() -> int:
  target, marker, sep, *argv = sys.argv[1:]
  assert sep == "--", sys.argv
  module_name, attr_path = target.split(":")
  owner = importlib.import_module(module_name)
  *parents, name = attr_path.split(".")
  for p in parents:
    owner = getattr(owner, p)
  original = getattr(owner, name)

  def paused(*args, **kwargs):
    Path(marker).write_text("paused")
    time.sleep(120)
    return original(*args, **kwargs)

  setattr(owner, name, paused)
  from z1_jax.cli import main as z1_main
  sys.argv = ["z1", *argv]
  return z1_main()  # as the installed `z1` runs it


if __name__ == "__main__":
  sys.exit(main())
