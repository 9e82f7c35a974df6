"""The engine's thread: one background thread owns the engine and calls `step()` in a loop (JAX
calls from one thread); the asyncio side talks to it through thread-safe queues.

- `submit(req, sink)` / `cancel(id)` put commands in an inbox; the thread applies them at the
  next chunk boundary, so a cancelled (disconnected) request frees its slot within one chunk.
- Each `Event` goes to its request's `Sink` (an asyncio queue fed with
  `loop.call_soon_threadsafe`; the choices of one HTTP request share one, their events tell
  them apart by id); a finished or failed request's sink is dropped.
- One request cannot stop the others: a request the engine refuses fails alone (400), and every
  field a request can hold is range-checked before it gets here (`engine.check_request`). A
  step that raises all the same (a bug) fails the requests in the engine at that moment (500:
  which of them caused it is not known), the engine is made afresh (`make_engine`: its
  programs stay compiled) and serving goes on. Only a failure to compile or to make the
  engine marks the runner `failed` (`/health` 503).
- Counters (`stats()`): requests accepted and not yet answered, the engine's active slots and
  queue; the load test checks they are back at zero.
- Pod slice: every process runs a `Runner`; process 0's inbox is the only one fed (HTTP runs
  there) and each loop turn broadcasts that turn's commands to the others, so every process
  calls `submit` / `cancel` / `step` with identical inputs in the same order. A turn's commands
  are JSON: its size and first 64 KiB go in one fixed-size broadcast (the common case is one
  collective per turn), the rest, when there is more (a long prompt), in a second one whose size
  is a power of two (few shapes, each compiled once).
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import queue
import sys
import threading
import time
import traceback

import numpy as np

_LOG_EVERY_S = 10.0  # the serve log shows the engine's rows, queue and pages this often
_IDLE_WAIT_S = 0.05  # how long an idle loop turn waits for a command
_BROADCAST_BYTES = 1 << 16  # the first broadcast of each turn on a pod: size + first bytes


class Sink:
  """Where one request's events go: an asyncio queue on the server's event loop."""

  def __init__(self, loop: asyncio.AbstractEventLoop):
    self.loop, self.queue = loop, asyncio.Queue()

  def put(self, item) -> None:
    try:
      self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
    except RuntimeError:  # the event loop is closed: nobody is listening any more
      pass


@dataclasses.dataclass(frozen=True)
class Failed:
  """Sent to a sink when the engine refused or dropped the request."""
  message: str
  status: int = 500


class Runner:
  """`make_engine()` -> a fresh engine (called now, and again after a step that raised)."""

  def __init__(self, make_engine, *, warmup: bool = True, log=None):
    self._make_engine = make_engine
    self.engine = make_engine()
    engine = self.engine
    self._warmup = warmup
    self._inbox: queue.SimpleQueue = queue.SimpleQueue()
    self._sinks: dict = {}
    self._stop = threading.Event()
    self.ready = threading.Event()
    self.failed: str | None = None
    self.accepted = 0  # requests handed to the engine and not yet answered (any thread reads)
    self.served = 0
    self._count = threading.Lock()
    self._stats = engine.stats()
    self._logged = 0.0  # when the serve log last showed the engine's state
    self._log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    import jax
    self._pod = jax.process_count() > 1
    self._lead = jax.process_index() == 0
    self._thread = threading.Thread(target=self._main, name="z1-engine", daemon=True)

  # -- the asyncio side ----------------------------------------------------------------------
  def start(self) -> None:
    self._thread.start()

  def submit(self, req, sink: Sink) -> None:
    with self._count:
      self.accepted += 1
    self._inbox.put(("submit", req, sink))

  def cancel(self, rid) -> None:
    self._inbox.put(("cancel", rid, None))

  def stop(self, timeout: float | None = None) -> None:
    self._inbox.put(("stop", None, None))
    self._thread.join(timeout)

  def stats(self) -> dict:
    return {**self._stats, "in_flight": self.accepted, "served": self.served}

  # -- the engine thread ---------------------------------------------------------------------
  def _main(self) -> None:
    try:
      if self._warmup:
        t0 = time.perf_counter()
        self._log(f"z1 serve: compiling the engine ({self.engine.slots} slots, "
                  f"{self.engine.max_seq_len} positions)...")
        self.engine.warmup()
        self._log(f"z1 serve: compiled in {time.perf_counter() - t0:.1f} s")
      self.ready.set()
      self._loop()
    except BaseException as e:  # noqa: BLE001 - every waiting request hears of it
      self.failed = f"{type(e).__name__}: {e}"
      self._log(f"z1 serve: the engine failed: {self.failed}")
      for sink in self._sinks.values():
        sink.put(Failed(f"the engine failed: {self.failed}"))
      self._sinks.clear()
      self.ready.set()

  def _commands(self) -> list:
    """This turn's commands (waits a little when there is nothing to decode)."""
    out = []
    if self._lead:
      block = not self.engine.has_work()
      try:
        out.append(self._inbox.get(timeout=_IDLE_WAIT_S) if block else self._inbox.get_nowait())
        while True:
          out.append(self._inbox.get_nowait())
      except queue.Empty:
        pass
    if self._pod:
      out = self._broadcast(out)
    return out

  def _broadcast(self, commands: list) -> list:
    """Process 0's commands to every process (the sinks stay on process 0)."""
    from jax.experimental import multihost_utils
    payload = b""
    if self._lead:
      payload = json.dumps([[kind, dataclasses.asdict(value) if kind == "submit" else value]
                            for kind, value, _ in commands]).encode()
    room = _BROADCAST_BYTES - 8
    head = np.zeros((_BROADCAST_BYTES,), np.uint8)
    if self._lead:
      head[:8] = np.frombuffer(np.int64(len(payload)).tobytes(), np.uint8)
      first = payload[:room]
      head[8:8 + len(first)] = np.frombuffer(first, np.uint8)
    head = np.asarray(multihost_utils.broadcast_one_to_all(head))
    size = int(np.frombuffer(head[:8].tobytes(), np.int64)[0])
    rest = b""
    if size > room:  # a long prompt: the rest in one more broadcast, padded to a power of two
      n = size - room
      tail = np.zeros((1 << (n - 1).bit_length(),), np.uint8)
      if self._lead:
        tail[:n] = np.frombuffer(payload[room:], np.uint8)
      rest = np.asarray(multihost_utils.broadcast_one_to_all(tail))[:n].tobytes()
    if self._lead:
      return commands
    from z1_jax.infer.engine import Request
    out = []
    data = head[8:8 + min(size, room)].tobytes() + rest
    for kind, value in json.loads(data) if size else []:
      if kind == "submit":  # (JSON has lists where the Request has tuples)
        for name in ("prompt_ids", "stop", "stop_token_ids"):
          value[name] = tuple(value[name])
        out.append((kind, Request(**value), None))
      else:
        out.append((kind, value, None))
    return out

  def _loop(self) -> None:
    stopping = False
    while True:
      engine = self.engine
      for kind, value, sink in self._commands():
        if kind == "stop":
          stopping = True
        elif kind == "cancel":
          engine.cancel(value)
        else:
          try:
            engine.submit(value)
          except Exception as e:  # noqa: BLE001 - validated before; refused here all the same
            self._finish(value.id, sink, Failed(str(e), 400))
            continue
          if sink is not None:
            self._sinks[value.id] = sink
      if stopping and not engine.has_work():
        break
      if engine.has_work():
        failure = None
        try:
          events = engine.step()
        except Exception as e:  # noqa: BLE001 - a bug: fail what was decoding, keep serving
          failure = f"{type(e).__name__}: {e}", traceback.format_exc()
        if failure is not None:
          del engine  # (and the traceback, with the frames that held it, is gone)
          self._restart(*failure)
          continue
        for ev in events:
          sink = self._sinks.get(ev.id)
          if ev.error is not None:
            self._finish(ev.id, sink, Failed(ev.error, 499))
          elif ev.finished is not None:
            self._finish(ev.id, sink, ev)
          elif sink is not None:
            sink.put(ev)
      self._stats = engine.stats()
      self._log_state()

  def _log_state(self) -> None:
    """Every `_LOG_EVERY_S` while there is work: rows, queue, pages, preemptions, prefix
    cache, on the serve log (the same figures as GET /health)."""
    now = time.monotonic()
    s = self._stats
    if now - self._logged < _LOG_EVERY_S or not (s["active"] or s["queued"]):
      return
    self._logged = now
    self._log(f"z1 serve: {s['active']} rows running, {s['queued']} queued; KV pages "
              f"{s['pages_used']}/{s['pages_total']} used ({s['pages_cached']} cached), "
              f"{s['preemptions']} preemptions, prefix cache hit rate "
              f"{s['prefix_cache_hit_rate']:.0%}")

  def _restart(self, error: str, trace: str) -> None:
    """After a step that raised: the requests in the engine fail, a fresh engine takes over
    (it finds the old one's compiled programs: the shapes are the same)."""
    message = f"the engine's step failed: {error}"
    self._log(f"z1 serve: {message}; failing the {len(self._sinks)} requests in the engine "
              "and starting it afresh\n" + trace)
    self.engine = None  # its cache is freed before the new one is made (HBM holds one)
    gc.collect()
    self.engine = self._make_engine()
    for rid, sink in list(self._sinks.items()):  # once the server can take their retries
      self._finish(rid, sink, Failed(message, 500))

  def _finish(self, rid, sink, item) -> None:
    self._sinks.pop(rid, None)
    if self._lead:
      with self._count:
        self.accepted -= 1
        self.served += 1
    if sink is not None:
      sink.put(item)
