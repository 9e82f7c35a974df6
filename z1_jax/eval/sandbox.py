"""Running untrusted (model-written) programs in a separate, confined process.

Each run gets its own temporary directory and runs under bubblewrap: read-only root, private
/tmp, every namespace unshared (no network, own PID namespace: every process the sample starts
dies with it), die-with-parent, a new session, a clean environment; plus resource limits (CPU
time, address space, file size, process count) and a wall-clock deadline after which the whole
process tree is killed. When the harness runs as root, the sample runs as `nobody`. stdout goes
to a size-capped file, never into the harness's memory.

Without bubblewrap the sandbox refuses to run unless `allow_unsandboxed=True` is passed, and
then it still applies the limits, the clean environment and the unprivileged user.
"""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import warnings
from pathlib import Path

from z1_jax.errors import Z1Error

NOBODY = 65534
# As root, each concurrent run gets its own unprivileged uid from this range: the process-count
# limit is then per run, and afterwards every process with that uid is killed, whatever it did
# (setsid, double fork) to detach.
RUN_UIDS = range(61000, 61256)
SANDBOX_DIR = "/tmp/sandbox"  # inside the private /tmp


class SandboxUnavailable(Z1Error):
  """bubblewrap is missing or cannot create namespaces: a known precondition with a documented
  fix (the CLI exits 2 with the message), not a crash."""


@dataclasses.dataclass(frozen=True)
class Limits:
  wall_s: float = 10.0
  cpu_s: int = 10
  memory_mb: int = 1024
  file_mb: int = 16  # also the cap on captured stdout
  procs: int = 64
  read_back_bytes: int = 1 << 20  # of stdout/stderr kept in the result


@dataclasses.dataclass
class RunResult:
  returncode: int
  stdout: str
  stderr: str
  timed_out: bool
  output_limited: bool
  wall_s: float


def _default_python() -> str:
  # The system interpreter: readable by `nobody` (a venv under /root is not) and without the
  # harness's site-packages.
  for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
    if os.path.exists(candidate):
      return candidate
  return shutil.which("python3") or "python3"


@functools.lru_cache(maxsize=None)
def bwrap_works(as_nobody: bool) -> bool:
  exe = shutil.which("bwrap")
  if exe is None:
    return False
  kw = dict(user=NOBODY, group=NOBODY, extra_groups=[]) if as_nobody else {}
  try:
    r = subprocess.run([exe, "--ro-bind", "/", "/", "--unshare-all", "--die-with-parent",
                        "true"], capture_output=True, timeout=20, **kw)
  except (OSError, subprocess.TimeoutExpired):
    return False
  return r.returncode == 0


class Sandbox:

  def __init__(self, limits: Limits = Limits(), python: str | None = None,
               allow_unsandboxed: bool = False, hide: tuple[str, ...] = ("/root", "/home")):
    self.limits = limits
    self.python = python or _default_python()
    self.as_nobody = os.geteuid() == 0
    self.isolated = bwrap_works(self.as_nobody)
    if not self.isolated:
      if not allow_unsandboxed:
        raise SandboxUnavailable(
            "bubblewrap (bwrap) is not available or cannot create namespaces here, so "
            "model-written code will not be run. Install it (apt-get install bubblewrap) or "
            "explicitly opt out of isolation (allow_unsandboxed=True / --allow-unsandboxed).")
      warnings.warn("running model code WITHOUT bubblewrap isolation (limits only)",
                    stacklevel=2)
    self.hide = tuple(h for h in hide if os.path.isdir(h) and
                      not os.path.realpath(self.python).startswith(h + "/"))

  def _prlimit(self) -> list[str]:
    # Limits through util-linux prlimit, not preexec_fn (unsafe with the worker threads).
    lim, mb = self.limits, 1 << 20
    return [shutil.which("prlimit") or "prlimit", f"--cpu={lim.cpu_s}:{lim.cpu_s + 1}",
            f"--as={lim.memory_mb * mb}", f"--fsize={lim.file_mb * mb}",
            f"--nproc={lim.procs}", "--core=0", "--"]

  def _command(self, workdir: Path, argv: list[str]) -> list[str]:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": SANDBOX_DIR, "LANG": "C.UTF-8",
           "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0"}
    if not self.isolated:
      return [*self._prlimit(), "env", "-i", *(f"{k}={v}" for k, v in env.items()), self.python,
              "-I", *argv]
    cmd = [*self._prlimit(), shutil.which("bwrap"), "--ro-bind", "/", "/", "--tmpfs", "/tmp", "--proc", "/proc",
           "--dev", "/dev"]
    for h in self.hide:
      cmd += ["--tmpfs", h]
    cmd += ["--bind", str(workdir), SANDBOX_DIR, "--chdir", SANDBOX_DIR, "--unshare-all",
            "--die-with-parent", "--new-session", "--clearenv"]
    for k, v in env.items():
      cmd += ["--setenv", k, v]
    return [*cmd, self.python, "-I", *argv]

  def run(self, files: dict[str, str], argv: list[str], stdin: str = "") -> RunResult:
    """Writes `files` into a fresh directory and runs `python -I *argv` there."""
    uid = _UIDS.acquire() if self.as_nobody else None
    try:
      return self._run(files, argv, stdin, uid)
    finally:
      if uid is not None:
        _kill_uid(uid)
        _UIDS.release(uid)

  def _run(self, files, argv, stdin, uid) -> RunResult:
    workdir = Path(tempfile.mkdtemp(prefix="z1-sandbox-"))
    try:
      for name, text in files.items():
        (workdir / name).write_text(text)
      (workdir / ".stdin").write_text(stdin)
      if uid is not None:
        for p in [workdir, *workdir.iterdir()]:
          os.chown(p, uid, NOBODY)
      out_path, err_path = workdir / ".stdout", workdir / ".stderr"
      kw = dict(user=uid, group=NOBODY, extra_groups=[]) if uid is not None else {}
      start = time.perf_counter()
      with open(workdir / ".stdin", "rb") as fin, open(out_path, "wb") as fout, \
          open(err_path, "wb") as ferr:
        proc = subprocess.Popen(self._command(workdir, argv), stdin=fin, stdout=fout,
                                stderr=ferr, cwd=workdir, start_new_session=True,
                                close_fds=True, **kw)
        timed_out = False
        try:
          proc.wait(timeout=self.limits.wall_s)
        except subprocess.TimeoutExpired:
          timed_out = True
        finally:
          _kill_tree(proc)
      wall = time.perf_counter() - start
      size = out_path.stat().st_size
      stdout = _head(out_path, self.limits.read_back_bytes)
      stderr = _tail(err_path, self.limits.read_back_bytes)
      limited = size >= self.limits.file_mb * (1 << 20) or proc.returncode in (
          -signal.SIGXFSZ, 128 + signal.SIGXFSZ)
      return RunResult(proc.returncode, stdout, stderr, timed_out, limited, wall)
    finally:
      shutil.rmtree(workdir, ignore_errors=True)


class _UidPool:
  """Run uids leased through lock files, so concurrent harness processes never share one."""

  def __init__(self, uids):
    self.uids = list(uids)
    self.held: dict[int, int] = {}  # uid -> locked fd
    self.lock = threading.Lock()

  def acquire(self) -> int:
    while True:
      for uid in self.uids:
        fd = os.open(os.path.join(tempfile.gettempdir(), f"z1-sandbox-uid-{uid}.lock"),
                     os.O_RDWR | os.O_CREAT, 0o600)
        try:
          fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
          os.close(fd)
          continue
        with self.lock:
          self.held[uid] = fd
        return uid
      time.sleep(0.05)

  def release(self, uid: int) -> None:
    with self.lock:
      fd = self.held.pop(uid)
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


_UIDS = _UidPool(RUN_UIDS)


def _pids_of(uid: int) -> list[int]:
  """Live processes of `uid` (zombies are already dead: their reaper collects them)."""
  pids = []
  for entry in os.listdir("/proc"):
    if entry.isdigit():
      try:
        with open(f"/proc/{entry}/status") as f:
          fields = dict(line.split(":", 1) for line in f if ":" in line)
      except OSError:
        continue
      if int(fields.get("Uid", "-1").split()[0]) == uid and fields["State"].split()[0] not in "ZX":
        pids.append(int(entry))
  return pids


def _kill_uid(uid: int, timeout_s: float = 10.0) -> None:
  """SIGKILL every process running as `uid` until none is left."""
  deadline = time.monotonic() + timeout_s
  while pids := _pids_of(uid):
    for pid in pids:
      try:
        os.kill(pid, signal.SIGKILL)
      except ProcessLookupError:
        pass
    if time.monotonic() > deadline:
      raise RuntimeError(f"sandbox processes of uid {uid} survive SIGKILL: {pids}")
    time.sleep(0.02)


def _kill_tree(proc: subprocess.Popen) -> None:
  """SIGKILL the process group (bwrap; its PID namespace dies with it) and reap."""
  try:
    os.killpg(proc.pid, signal.SIGKILL)
  except (ProcessLookupError, PermissionError):
    pass
  proc.wait()


def _head(path: Path, n: int) -> str:
  with open(path, "rb") as f:
    return f.read(n).decode("utf-8", "replace")


def _tail(path: Path, n: int) -> str:
  with open(path, "rb") as f:
    f.seek(max(path.stat().st_size - n, 0))
    return f.read().decode("utf-8", "replace")
