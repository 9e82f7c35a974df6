"""Stopping a run at a step boundary: SIGINT, SIGTERM and Cloud TPU preemption notices.

`StopSignals` is a context manager around the training loop. A stop request is honoured at the
next step boundary: the loop saves that step (Orbax, waited for), then `train` returns with
`stopped_by` set and the command line exits 130 (SIGINT) or 143 (SIGTERM, preemption).

- One process: Python handlers for SIGINT and SIGTERM record the signal (a second one of either
  kind falls back to the previous handler: a second Ctrl-C interrupts at once).
- Several processes (a pod): every host must stop at the same step, or the save's collectives
  hang. JAX's preemption service (started by `jax.distributed.initialize`) catches SIGTERM on any
  host and agrees on a step with the others; `reached_preemption(step)` (Orbax, called every
  step, no device sync) says when that step has come. SIGINT is forwarded to this process as
  SIGTERM so that it takes the same agreed path.
"""

from __future__ import annotations

import os
import signal
import threading

import jax

EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143, "preemption": 143}


class StopSignals:

  def __init__(self):
    self.received: str | None = None
    self.multi = jax.process_count() > 1
    self._previous: dict[int, object] = {}

  def _record(self, signum, frame):
    name = signal.Signals(signum).name
    if self.received is not None:  # a second signal: the previous behaviour, at once
      previous = self._previous.get(signum)
      if callable(previous):
        previous(signum, frame)
      elif previous != signal.SIG_IGN:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
      return
    self.received = name

  def _forward(self, signum, frame):
    self.received = self.received or "SIGINT"
    os.kill(os.getpid(), signal.SIGTERM)  # into JAX's preemption notifier

  def __enter__(self) -> "StopSignals":
    if threading.current_thread() is not threading.main_thread():
      return self  # signal handlers can only be set from the main thread
    signals = (signal.SIGINT,) if self.multi else (signal.SIGINT, signal.SIGTERM)
    for s in signals:
      self._previous[s] = signal.getsignal(s)
      signal.signal(s, self._forward if self.multi else self._record)
    return self

  def __exit__(self, *exc) -> None:
    for s, previous in self._previous.items():
      signal.signal(s, previous if previous is not None else signal.SIG_DFL)

  def stop_reason(self, step: int, manager) -> str | None:
    """Why to stop after `step` (None: go on). Call at every step on every process."""
    if self.multi:
      if manager.reached_preemption(step):
        return self.received or "preemption"
      return None
    return self.received
