"""Worker processes with a per-call deadline: a call still running at its deadline has its
process killed (and replaced), so one hung call (a sympy simplification that never returns)
costs one deadline and nothing more. The deadline starts when the call starts in a ready worker,
not when it was queued, so a slow call never makes later calls time out.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import queue
import threading
from typing import Any, Callable


class CallTimeout(Exception):
  """The call ran past its deadline; its worker was killed."""


def _serve(conn, fn) -> None:
  conn.send("ready")
  while True:
    try:
      args = conn.recv()
    except EOFError:
      return
    try:
      conn.send((True, fn(*args)))
    except Exception as e:  # noqa: BLE001 - hand the failure to the caller
      conn.send((False, e))


class DeadlinePool:
  """`submit(*args)` runs `fn(*args)` (a picklable module-level function) in one of `workers`
  processes, started lazily with `spawn` (safe beside JAX's threads); the future holds the
  result, `fn`'s exception, or `CallTimeout` after `timeout_s` seconds of running."""

  def __init__(self, fn: Callable, workers: int, timeout_s: float):
    self.fn, self.timeout_s = fn, timeout_s
    self._ctx = mp.get_context("spawn")
    self._jobs: queue.Queue = queue.Queue()
    self._threads = [threading.Thread(target=self._slot, daemon=True, name=f"z1-deadline-{i}")
                     for i in range(workers)]
    self._started = False
    self._lock = threading.Lock()
    self._procs: set = set()

  def submit(self, *args: Any) -> cf.Future:
    with self._lock:
      if not self._started:
        for t in self._threads:
          t.start()
        self._started = True
    future: cf.Future = cf.Future()
    self._jobs.put((future, args))
    return future

  def _spawn(self):
    parent, child = self._ctx.Pipe()
    proc = self._ctx.Process(target=_serve, args=(child, self.fn), daemon=True)
    proc.start()
    child.close()
    with self._lock:
      self._procs.add(proc)
    if parent.recv() != "ready":  # imports done: the deadline must not pay for them
      raise RuntimeError("worker failed to start")
    return proc, parent

  def _slot(self) -> None:
    proc = conn = None
    while True:
      item = self._jobs.get()
      if item is None:
        break
      future, args = item
      if not future.set_running_or_notify_cancel():
        continue
      try:
        if proc is None:
          proc, conn = self._spawn()
        conn.send(args)
        if conn.poll(self.timeout_s):
          ok, value = conn.recv()
          future.set_result(value) if ok else future.set_exception(value)
          continue
        future.set_exception(CallTimeout(f"{self.timeout_s} s deadline"))
      except (EOFError, OSError, RuntimeError) as e:  # the worker died under the call
        future.set_exception(RuntimeError(f"worker process died: {e!r}"))
      self._stop(proc)
      proc = conn = None
    self._stop(proc)

  def close(self) -> None:
    """Stops every worker (a running call is killed; queued calls are cancelled)."""
    while True:
      try:
        item = self._jobs.get_nowait()
      except queue.Empty:
        break
      if item is not None:
        item[0].cancel()
    with self._lock:
      procs = list(self._procs)
    for proc in procs:
      proc.kill()
    if self._started:
      for _ in self._threads:
        self._jobs.put(None)
      for t in self._threads:
        t.join(timeout=self.timeout_s + 5)

  def _stop(self, proc) -> None:
    if proc is not None:
      proc.kill()
      proc.join()
      with self._lock:
        self._procs.discard(proc)
