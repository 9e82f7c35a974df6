"""The `z1` command line: the top-level parser, exit codes and dispatch. Each stage declares its
own subcommands beside their handlers (`z1_jax/<stage>/command.py`, `add_parser`); heavy imports
happen inside each handler."""

from __future__ import annotations

import sys

from z1_jax.cli_args import Z1Parser

# (module, in the order `z1 --help` lists them); each has `add_parser(subparsers)`.
COMMAND_MODULES = ("z1_jax.demo.command", "z1_jax.checkpoint.command", "z1_jax.data.command",
                   "z1_jax.infer.command", "z1_jax.train.command", "z1_jax.eval.command",
                   "z1_jax.launch.command", "z1_jax.serve.command", "z1_jax.bench.command",
                   "z1_jax.distill.command")


def build_parser() -> Z1Parser:
  """Every option has a `type=` validator from `cli_args` (bad values are refused before any
  work) and a help text that ends with its default (`Z1HelpFormatter`; a test checks)."""
  import importlib
  p = Z1Parser(prog="z1", description="z1-jax: Z1 (efficient test-time scaling with code) in JAX.",
               epilog="exit codes: 0 done, 2 bad usage or input (one message naming the flag, "
                      "file or row), 1 unexpected failure, 130 interrupted (SIGINT), 143 terminated "
                      "(SIGTERM). `z1 COMMAND --help` "
                      "lists a command's options with their defaults.")
  p.add_argument("--debug", action="store_true",
                 help="show Python tracebacks on errors (or set Z1_DEBUG=1)")
  sub = p.add_subparsers(dest="command", required=True)
  for name in COMMAND_MODULES:
    importlib.import_module(name).add_parser(sub)
  return p


def _exit_now(code: int) -> None:
  import os
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)


def main(argv: list[str] | None = None) -> int:
  """Runs one command. Exit codes: 0 done, 2 bad usage or input (a `Z1Error`, an argparse usage
  error, or a file error on a path: one message, no traceback), 1 an unexpected failure (any
  other exception, including a bare ValueError/KeyError: a bug, not the user's mistake), 130
  interrupted (SIGINT), 143 terminated (SIGTERM). `--debug` or Z1_DEBUG=1 re-raises for a
  traceback. `argv=None` (the real command line) exits at once on a signal; a list returns the
  code instead. SIGINT/SIGTERM handling is installed first (`z1_jax.signals.install`), so a
  disposition inherited from `nohup` or a background job (SIG_IGN) does not stick."""
  import os
  from z1_jax import signals
  from z1_jax.errors import Z1Error
  from z1_jax.topology import select_platform
  if argv is None:
    signals.install()
  args = build_parser().parse_args(argv)
  debug = args.debug or os.environ.get("Z1_DEBUG", "") not in ("", "0")
  select_platform()  # before JAX starts: no TPU probing on hosts without chips (see there)
  try:
    code = args.fn(args)
  except (KeyboardInterrupt, signals.Terminated) as e:
    if debug:
      raise
    killed = isinstance(e, signals.Terminated)
    print(f"z1 {args.command}: {'terminated (SIGTERM)' if killed else 'interrupted'}; the "
          f"previous output, if any, is left as it was", file=sys.stderr)
    code = 143 if killed else 130
    if argv is None:
      # The real command line: exit now rather than wait for worker threads still running
      # (a sample being scored); `finally` blocks have run, sandboxes die with this process.
      _exit_now(code)
    return code
  except (Z1Error, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
          PermissionError) as e:
    if debug:
      raise
    print(f"z1 {args.command}: error: {e}", file=sys.stderr)
    return 2
  except Exception as e:  # noqa: BLE001 - the one place that turns crashes into a message
    if debug:
      raise
    print(f"z1 {args.command}: unexpected {type(e).__name__}: {e}\n"
          f"(rerun with --debug or Z1_DEBUG=1 for the traceback)", file=sys.stderr)
    return 1
  if argv is None:  # done: a Ctrl-C while Python shuts down exits quietly with this code
    import signal
    signal.signal(signal.SIGINT, lambda *_: _exit_now(code))
  return code


if __name__ == "__main__":
  sys.exit(main())
