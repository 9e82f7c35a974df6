"""How every `z1` command handles SIGINT and SIGTERM (one place; `cli.main` calls `install()`).

A process started as a background job (`cmd &` in a non-interactive shell, or under `nohup`)
inherits SIGINT as *ignored*, and Python keeps an inherited ignore: Ctrl-C and `kill -INT` would
do nothing. `install()` sets our own handlers whatever was inherited:

- SIGINT raises `KeyboardInterrupt` (Python's default behaviour, restored); `cli.main` exits 130.
- SIGTERM raises `Terminated` (a `BaseException`, so `except Exception` does not swallow it);
  `cli.main` exits 143 (128 + 15).

The trainer finishes its step first: `train.interrupt.StopSignals` replaces these handlers
for the whole of `z1 train` (the first signal stops every process after the same step, saved;
a second one stops every process at once; exit 130/143) and restores them after.
"""

from __future__ import annotations

import signal

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class Terminated(BaseException):
  """SIGTERM arrived; `cli.main` exits 143."""

  def __init__(self, signum: int = signal.SIGTERM):
    super().__init__(f"signal {signal.Signals(signum).name}")
    self.signum = signum


def raise_for(signum: int) -> None:
  """Raises what the signal means to the command: KeyboardInterrupt or Terminated."""
  if signum == signal.SIGINT:
    raise KeyboardInterrupt
  raise Terminated(signum)


def _handler(signum: int, _frame) -> None:
  raise_for(signum)


def install() -> None:
  """Own handlers for SIGINT and SIGTERM, replacing any inherited disposition (SIG_IGN)."""
  for s in (signal.SIGINT, signal.SIGTERM):
    signal.signal(s, _handler)
