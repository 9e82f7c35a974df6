"""Stopping a run: SIGINT and SIGTERM (a Spot VM's preemption notice, `z1 launch stop`), on one
process or on every process of a pod, and peers that die.

`StopSignals` is a context manager around all of `train()`:

- A first signal asks to stop: the loop finishes the step it is on, saves it (waited for), and
  `train` returns with `stopped_by` = "SIGINT" / "SIGTERM"; the command line exits 130 / 143.
  A signal during start-up (reading data, restoring, compiling) stops after the attempt's first
  step, saved like any other.
- A second signal on the same process (either kind) stops now, on every process, without
  saving: exit 130 / 143. The last checkpoint stays the resume point.
- Several processes must stop after the same step, or the save's collectives hang. The first
  signal any process gets is posted to the distributed runtime's key-value store; every
  process's watcher sees it and they agree on a step as JAX's preemption service would (each
  reports the last step its loop has checked, `begin(step)` before the first; all stop after
  max + 1, and `stop_reason(step)` blocks only while the reports are exchanged), but with the
  step numbers the loop uses from the attempt's start (JAX's counters start at 0, so its sync
  point 1 never came in a resumed run) and for every signal (its C handler swallows all
  SIGTERMs after the first; it is disabled, `z1_jax.distributed.initialize`).
- A peer that dies (no heartbeat for `peer_timeout_s`) or leaves with an error stops every
  process now with an error naming it (exit 1), instead of hanging in the next collective
  until JAX's own watchdog aborts it (100 s). A collective that fails first because the
  peer's connection dropped (gloo: "Connection closed by peer") waits for that verdict before
  its error ends the process. If process 0 dies, the distributed runtime it hosts ends the
  others at once (JAX's own message: the leader task died).

Signals are read by a watcher thread from `signal.set_wakeup_fd`, so they act while the main
thread is inside a long C call (compiling, waiting on a collective), where a Python signal
handler would not run; the watcher also sends this process's heartbeat and checks the peers'
every second. The pod's "stop" and "stop now" notices are long polls on the key-value store,
seen by every process as soon as they are posted.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import sys
import threading
import time

import jax

from z1_jax.errors import Z1Error

EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}
POLL_S = 1.0  # the watcher's heartbeat and peer-check interval
LISTEN_S = 0.25  # the length of one long poll for the pod's notices
AGREE_TIMEOUT_S = 300.0  # for every process to report its step once a stop was asked
NOW_ACK_S = 3.0  # process 0 (which hosts the store) waits this long for the others to read "now"


def _ignore(signum, frame) -> None:
  """Python's part of a signal: nothing (the watcher thread acts on the wakeup byte)."""


class StopSignals:

  def __init__(self, peer_timeout_s: float = 20.0):
    self.received: str | None = None  # the signal that asked this run to stop (any process)
    self.last_saved: int | None = None  # told by the loop, for the messages
    self.multi = jax.process_count() > 1
    self.peer_timeout_s = peer_timeout_s
    self._previous: dict[int, object] = {}
    self._local = 0  # signals this process got
    self._lock = threading.Lock()
    self._begun = threading.Event()
    self._done = threading.Event()
    self._exiting = threading.Lock()
    self._counter: int | None = None
    self._stop_at: int | None = None
    self._watcher: threading.Thread | None = None
    self._listeners: list[threading.Thread] = []
    self._sockets: tuple[socket.socket, socket.socket] | None = None
    self._wakeup = -1
    if self.multi:
      from z1_jax import distributed
      self._client = distributed.client()
      self._key = distributed.unique_key("train")
      self._me, self._n = jax.process_index(), jax.process_count()

  # -- the loop's side ------------------------------------------------------------------------

  def begin(self, step: int) -> None:
    """The step this attempt starts from (0, or the checkpoint it resumed)."""
    with self._lock:
      self._counter = step
    self._begun.set()

  def stop_reason(self, step: int) -> str | None:
    """Why to stop after `step` (None: go on). Call after every step on every process."""
    if not self.multi:
      return self.received
    with self._lock:  # held while the processes exchange their steps
      self._counter = step
      return self.received if self._stop_at == step else None

  # -- set-up ---------------------------------------------------------------------------------

  def __enter__(self) -> "StopSignals":
    if threading.current_thread() is not threading.main_thread():
      return self  # signal handlers can only be set from the main thread
    read, write = socket.socketpair()
    read.setblocking(False)
    write.setblocking(False)
    self._sockets = (read, write)
    self._wakeup = signal.set_wakeup_fd(write.fileno(), warn_on_full_buffer=False)
    for s in (signal.SIGINT, signal.SIGTERM):
      self._previous[s] = signal.getsignal(s)
      signal.signal(s, _ignore)
    if self.multi:
      self._client.key_value_increment(self._beat_key(self._me), 1)
    self._watcher = threading.Thread(target=self._watch, name="z1-stop-signals", daemon=True)
    self._watcher.start()
    if self.multi:  # the pod's notices reach every process at once (long polls), not per poll
      for name, handle in (("notice", self._on_notice), ("now", self._on_now)):
        listener = threading.Thread(target=self._listen, args=(name, handle),
                                    name=f"z1-stop-{name}", daemon=True)
        listener.start()
        self._listeners.append(listener)
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if self._watcher is None:
      return
    if (self.multi and exc_type is not None and issubclass(exc_type, Exception) and
        not issubclass(exc_type, Z1Error)):
      # A collective fails as soon as a peer's connection drops ("Gloo ... Connection closed by
      # peer"): before that error ends this process, give the watcher the time it needs to
      # name the peer that died (it then stops every process, exit 1).
      deadline = time.monotonic() + self.peer_timeout_s + 3 * POLL_S
      while time.monotonic() < deadline:
        time.sleep(0.1)
    self._done.set()
    self._begun.set()  # releases an agreement still waiting for this process's first step
    self._sockets[1].send(b"\0")  # wakes the watcher
    # joined, not left behind: a thread inside a key-value RPC when the interpreter exits
    # aborts the process
    for thread in (self._watcher, *self._listeners):
      thread.join()
    if self.multi:
      status = "ok" if exc_type is None else f"error: {exc_type.__name__}: {exc}"[:500]
      try:
        self._client.key_value_set(f"{self._key}/left/{self._me}", status)
      except Exception:  # noqa: BLE001 - the store is gone: the others see that themselves
        pass
    signal.set_wakeup_fd(self._wakeup)
    for s, previous in self._previous.items():
      signal.signal(s, previous if previous is not None else signal.SIG_DFL)
    for sock in self._sockets:
      sock.close()

  # -- the watcher thread ---------------------------------------------------------------------

  def _beat_key(self, process: int) -> str:
    return f"{self._key}/beat/{process}"

  def _watch(self) -> None:
    read = self._sockets[0]
    seen: dict[int, tuple[str, float]] = {}  # peer -> (heartbeat value, when it last changed)
    started = time.monotonic()
    while not self._done.is_set():
      ready, _, _ = select.select([read], [], [], POLL_S)
      try:
        if ready:
          try:
            data = read.recv(64)
          except BlockingIOError:
            data = b""
          for signum in data:
            if signum in (signal.SIGINT, signal.SIGTERM) and not self._done.is_set():
              self._on_signal(signal.Signals(signum).name)
        if self.multi and not self._done.is_set():
          self._poll(seen, started)
      except Exception as e:  # noqa: BLE001 - the store itself failed
        if not self._done.is_set():
          self._exit(1, f"the coordination service (process 0) stopped answering ({e})")

  def _on_signal(self, name: str) -> None:
    self._local += 1
    if self._local >= 2:
      self._stop_everyone(EXIT_CODES[name],
                          f"a second signal ({name}) on process {self._me if self.multi else 0}")
    self.received = self.received or name
    print(f"z1 train: {name} caught: stopping after the current step, which is saved (a second "
          "signal stops at once, without saving)", file=sys.stderr, flush=True)
    if self.multi:
      self._post(f"{self._key}/notice", f"{name}|{self._me}")

  def _post(self, key: str, value: str) -> bool:
    """Sets `key` unless it is there already (the first writer wins); True if this one won."""
    try:
      self._client.key_value_set(key, value)
      return True
    except Exception as e:  # noqa: BLE001
      if "ALREADY_EXISTS" in str(e):
        return False
      raise

  def _get(self, key: str) -> str | None:
    from z1_jax.distributed import missing
    try:
      return self._client.key_value_try_get(key)
    except Exception as e:  # noqa: BLE001
      if missing(e):
        return None
      raise

  def _listen(self, name: str, handle) -> None:
    """Waits for the pod's `name` key (posted by any process) and hands it to `handle`."""
    from z1_jax.distributed import missing
    while not self._done.is_set():
      try:
        value = self._client.blocking_key_value_get(f"{self._key}/{name}", int(LISTEN_S * 1000))
      except Exception as e:  # noqa: BLE001 - not there yet; or the store is gone (the
        if missing(e):        # watcher's heartbeat reports that)
          continue
        return
      if not self._done.is_set():
        handle(value)
      return

  def _on_notice(self, value: str) -> None:
    self.received = self.received or value.split("|")[0]
    self._agree()

  def _on_now(self, value: str) -> None:
    code, who, why = value.split("|", 2)
    if who == str(self._me):
      return  # this process posted it and is ending itself
    self._exit(int(code), f"process {who} stopped every process ({why})", ack=True)

  def _poll(self, seen: dict, started: float) -> None:
    c, key = self._client, self._key
    c.key_value_increment(self._beat_key(self._me), 1)
    left = {int(k.rsplit("/", 1)[1]): v for k, v in c.key_value_dir_get(f"{key}/left/")}
    beats = {int(k.rsplit("/", 1)[1]): v for k, v in c.key_value_dir_get(f"{key}/beat/")}
    clock = time.monotonic()
    for peer in range(self._n):
      if peer == self._me:
        continue
      if peer in left:
        if left[peer].startswith("error"):
          # grace: when every process fails alike, each reports its own error itself
          first = seen.setdefault(("left", peer), ("", clock))[1]
          if clock - first > min(self.peer_timeout_s, 10.0):
            self._stop_everyone(1, f"process {peer} stopped with {left[peer]}")
        continue
      value = beats.get(peer, "")
      last = seen.get(peer)
      if last is None or last[0] != value:
        seen[peer] = (value, clock if last is not None or value else started)
      elif clock - last[1] > self.peer_timeout_s:
        self._stop_everyone(1, f"process {peer} sent no heartbeat for {clock - last[1]:.0f} s "
                               "(train.peer_timeout_s): it died or hangs")

  def _agree(self) -> None:
    """The pod's stop step: max over the processes' last checked steps, plus 1. Holds the lock
    (the loop waits in `stop_reason`) until every process has reported; a process that has
    left `train` meanwhile ended its run, so there is nothing left to agree on."""
    self._begun.wait()
    c, key = self._client, self._key
    with self._lock:
      if self._done.is_set():
        return
      c.key_value_set(f"{key}/step/{self._me}", str(self._counter))
      deadline = time.monotonic() + AGREE_TIMEOUT_S
      while not self._done.is_set():
        steps = {int(k.rsplit("/", 1)[1]): int(v) for k, v in c.key_value_dir_get(f"{key}/step/")}
        if len(steps) == self._n:
          self._stop_at = max(steps.values()) + 1
          return
        left = {int(k.rsplit("/", 1)[1]) for k, _ in c.key_value_dir_get(f"{key}/left/")}
        if left - set(steps):
          return
        if time.monotonic() > deadline:
          late = sorted(set(range(self._n)) - set(steps))
          self._stop_everyone(1, f"process(es) {late} did not report their step within "
                                 f"{AGREE_TIMEOUT_S:g} s of the stop request")
        time.sleep(0.05)

  # -- stopping now ---------------------------------------------------------------------------

  def _stop_everyone(self, code: int, why: str) -> None:
    if self.multi:
      try:
        if not self._post(f"{self._key}/now", f"{code}|{self._me}|{why}"):
          now = self._get(f"{self._key}/now")  # another process was first: follow its word
          code, who, why = int(now.split("|")[0]), *now.split("|", 2)[1:]
          self._exit(code, f"process {who} stopped every process ({why})", ack=True)
      except Exception:  # noqa: BLE001 - no store: stop this process, the others see it
        pass
    self._exit(code, why, ack=True)

  def _exit(self, code: int, why: str, ack: bool = False) -> None:
    """Ends this process now (no save): the main thread may be inside a collective that will
    never finish. Process 0 hosts the key-value store, so it waits briefly for the others to
    have read the stop before it goes."""
    if not self._exiting.acquire(blocking=False):
      time.sleep(3600)  # another thread of this process is ending it
    where = self.last_saved
    print(f"z1 train: {why}; stopping now without saving (the last checkpoint, "
          f"{'step ' + str(where) if where is not None else 'if any'}, is where a rerun "
          "resumes)", file=sys.stderr, flush=True)
    if self.multi and ack:
      try:
        self._client.key_value_set(f"{self._key}/gone/{self._me}", str(code))
        if self._me == 0:
          deadline = time.monotonic() + NOW_ACK_S
          while time.monotonic() < deadline and len(
              self._client.key_value_dir_get(f"{self._key}/gone/")) < self._n:
            time.sleep(0.05)
      except Exception:  # noqa: BLE001
        pass
    sys.stdout.flush()
    os._exit(code)
