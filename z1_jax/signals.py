"""How every `z1` command handles SIGINT and SIGTERM (one place; `cli.main` calls `install()`).

A process started as a background job (`cmd &` in a non-interactive shell, or under `nohup`)
inherits SIGINT as *ignored*, and Python keeps an inherited ignore: Ctrl-C and `kill -INT` would
do nothing. `install()` sets our own handlers whatever was inherited:

- SIGINT raises `KeyboardInterrupt` (Python's default behaviour, restored); `cli.main` exits 130.
- SIGTERM raises `Terminated` (a `BaseException`, so `except Exception` does not swallow it);
  `cli.main` exits 143 (128 + 15).

Long loops that want to finish a unit of work first (the trainer saves the current step) use
`deferred()`: inside it a signal only records itself, the loop polls `stop_requested()` at step
boundaries (it returns the signal number, or None) and exits by calling `raise_for(signum)`.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}

_requested: int | None = None
_deferring = 0


class Terminated(BaseException):
  """SIGTERM arrived (outside `deferred()`); `cli.main` exits 143."""

  def __init__(self, signum: int = signal.SIGTERM):
    super().__init__(f"signal {signal.Signals(signum).name}")
    self.signum = signum


def raise_for(signum: int) -> None:
  """Raises what the signal means to the command: KeyboardInterrupt or Terminated."""
  if signum == signal.SIGINT:
    raise KeyboardInterrupt
  raise Terminated(signum)


def _handler(signum: int, _frame) -> None:
  global _requested
  if _deferring:
    if _requested is not None and _requested == signum:
      raise_for(signum)  # the same signal twice: stop now, do not wait for the step
    _requested = signum
    return
  raise_for(signum)


def install() -> None:
  """Own handlers for SIGINT and SIGTERM, replacing any inherited disposition (SIG_IGN)."""
  global _requested
  _requested = None
  for s in (signal.SIGINT, signal.SIGTERM):
    signal.signal(s, _handler)


def stop_requested() -> int | None:
  """The signal that arrived inside `deferred()` (signal.SIGINT / SIGTERM), or None."""
  return _requested


@contextlib.contextmanager
def deferred() -> Iterator[None]:
  """Inside: SIGINT/SIGTERM are recorded (see `stop_requested`), not raised; a second of the
  same signal raises at once. On leaving, a recorded signal is raised (unless already cleared
  by the caller with `clear()`)."""
  global _deferring
  _deferring += 1
  try:
    yield
  finally:
    _deferring -= 1
  if not _deferring and _requested is not None:
    signum = _requested
    clear()
    raise_for(signum)


def clear() -> None:
  """Forgets a recorded signal (after the caller has acted on it)."""
  global _requested
  _requested = None
