"""Writing command outputs safely: checks before any work, atomic commits, no debris.

Every output is first written under a temporary name beside its target
(`.NAME.z1-partial-HOST-PID-XXXX`) and renamed onto the target at the end, so an interrupted
command leaves the previous output as it was. A Ctrl-C removes its temporary; one killed
outright (SIGKILL, OOM) leaves it, and the next write of the same target removes partials
whose process on this host is gone (`sweep_partials`). The checks refuse, before any loading:
an output that is a directory where a file is meant (or the reverse), an existing output
without the explicit replace flag, an output that is (or holds) an input or the current
directory, and locations that cannot be created or written.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import socket
import sys
import uuid
from pathlib import Path
from typing import Iterable, Iterator

from z1_jax.errors import Z1Error

_PARTIAL = "z1-partial"
_OLD = "z1-old"  # a previous output moved aside for the instant of a directory swap


def local_path(path: str | os.PathLike, flag: str) -> Path:
  """The absolute local path of an output: a plain path or a `file://` URI. Other URIs
  (`gs://`) are refused with a message: these outputs are committed by a local atomic rename,
  which object stores do not have (training checkpoints go to `gs://` through Orbax)."""
  text = str(path)
  if text.startswith("file://"):
    text = text[len("file://"):]
  elif "://" in text:
    raise Z1Error(f"{flag} {path}: this output is written on local disk (committed by "
                  "an atomic rename); write it locally, then copy it (`gcloud storage cp -r`)")
  return Path(text).expanduser().resolve()


def _host() -> str:
  return socket.gethostname().replace("-", "_").replace(".", "_") or "host"


def temp_sibling(out: str | os.PathLike, token: str | None = None, kind: str = _PARTIAL) -> Path:
  """A fresh temporary name beside `out` (same file system, so `os.replace` is atomic).
  `token`: the same on every process of a multi-host job that writes together."""
  out = Path(out)
  token = token or f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
  return out.parent / f".{out.name}.{kind}-{_host()}-{token}"


def sweep_partials(out: str | os.PathLike) -> list[Path]:
  """Removes temporaries of `out` left by processes of this host that no longer exist (and
  puts back a previous output that a killed process had moved aside, if `out` is missing)."""
  out = Path(out)
  removed = []
  if not out.parent.is_dir():
    return removed
  for kind in (_OLD, _PARTIAL):
    prefix = f".{out.name}.{kind}-{_host()}-"
    for p in sorted(out.parent.iterdir()):
      pid = p.name[len(prefix):].split("-")[0] if p.name.startswith(prefix) else ""
      if not pid.isdigit() or _alive(int(pid)):
        continue
      if kind == _OLD and not out.exists():
        os.replace(p, out)
        continue
      _remove(p)
      removed.append(p)
  return removed


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def _remove(p: Path) -> None:
  if p.is_dir() and not p.is_symlink():
    shutil.rmtree(p, ignore_errors=True)
  else:
    p.unlink(missing_ok=True)


def _inside(path: Path, root: Path) -> bool:
  return path == root or root in path.parents


def check_creatable(path: Path, flag: str) -> None:
  """The parent chain of `path` can hold it: every existing ancestor is a directory and the
  nearest one is writable (missing directories are created when writing)."""
  for parent in path.parents:
    if parent.exists():
      if not parent.is_dir():
        raise Z1Error(f"{flag} {path}: {parent} is a file, not a directory")
      if not os.access(parent, os.W_OK | os.X_OK):
        raise Z1Error(f"{flag} {path}: cannot write in {parent} (permission denied)")
      return


def _check_not_input(out: Path, flag: str, inputs: Iterable[tuple[str, str | os.PathLike]]):
  cwd = Path.cwd().resolve()
  if _inside(cwd, out):
    raise Z1Error(f"{flag} {out}: refusing to replace the current directory or one holding it")
  for in_flag, path in inputs:
    if path is None:
      continue
    p = Path(path).expanduser().resolve()
    if _inside(p, out):
      what = "is" if p == out else "holds"
      raise Z1Error(f"{flag} {out} {what} the input {in_flag} {path}: choose another output")
    if p.is_dir() and _inside(out, p):
      raise Z1Error(f"{flag} {out} is inside the input {in_flag} {path}: choose an output "
                    "outside it")


def check_output_file(path: str | os.PathLike, flag: str, overwrite: bool = False,
                      overwrite_flag: str = "--overwrite",
                      inputs: Iterable[tuple[str, str | os.PathLike]] = ()) -> Path:
  """Checks a file output before any work; returns its absolute path."""
  out = local_path(path, flag)
  if out.is_dir():
    raise Z1Error(f"{flag} {path} is a directory; name the file to write")
  _check_not_input(out, flag, inputs)
  if out.exists() and not overwrite:
    raise Z1Error(f"{flag} {path} exists; pass {overwrite_flag} to replace it")
  if out.exists() and not os.access(out.parent, os.W_OK | os.X_OK):
    raise Z1Error(f"{flag} {path}: cannot replace it (directory not writable)")
  check_creatable(out, flag)
  return out


def check_dir(path: str | os.PathLike, flag: str) -> Path:
  """A directory that is read and written (a cache): existing and writable, or creatable."""
  p = local_path(path, flag)
  if p.exists():
    if not p.is_dir():
      raise Z1Error(f"{flag} {path} is a file; expected a directory")
    if not os.access(p, os.W_OK | os.X_OK):
      raise Z1Error(f"{flag} {path}: directory not writable (permission denied)")
    return p
  check_creatable(p, flag)
  return p


def check_output_dir(path: str | os.PathLike, flag: str, overwrite: bool, is_previous,
                     what: str, overwrite_flag: str = "--overwrite",
                     inputs: Iterable[tuple[str, str | os.PathLike]] = ()) -> Path:
  """Checks a directory output before any work. An existing non-empty directory is replaced
  only with `overwrite` and only when `is_previous(dir)` says it is a previous output of this
  kind (`what`), never a directory holding an input or the current directory."""
  out = local_path(path, flag)
  if out.exists() and not out.is_dir():
    raise Z1Error(f"{flag} {path} is an existing file; {what} is a directory")
  if out.is_dir():
    _check_not_input(out, flag, inputs)
    entries = sorted(e.name for e in out.iterdir())
    if entries:
      if not is_previous(out):
        shown = ", ".join(entries[:5]) + (" ..." if len(entries) > 5 else "")
        raise Z1Error(f"{flag} {path} is a directory holding other files ({shown}), not a "
                      f"previous {what}; choose a new directory (nothing was written)")
      if not overwrite:
        raise Z1Error(f"{flag} {path} already holds a previous {what}; pass {overwrite_flag} to "
                      "replace it")
    if not os.access(out.parent, os.W_OK | os.X_OK):
      raise Z1Error(f"{flag} {path}: cannot replace it (parent directory not writable)")
  else:
    _check_not_input(out, flag, inputs)
  check_creatable(out, flag)
  return out


def commit(tmp: Path, out: Path) -> None:
  """Moves a finished temporary onto `out` (a file, or a directory replaced whole). A directory
  is swapped in one atomic step where the OS allows it (Linux `renameat2`), else moved aside
  for an instant (a kill in that instant is undone by the next `sweep_partials`)."""
  if out.is_dir() and not out.is_symlink():
    if _exchange(tmp, out):  # tmp now holds the previous output
      shutil.rmtree(tmp, ignore_errors=True)
      return
    old = temp_sibling(out, kind=_OLD)
    os.replace(out, old)
    try:
      os.replace(tmp, out)
    except BaseException:
      os.replace(old, out)
      raise
    shutil.rmtree(old, ignore_errors=True)
  else:
    os.replace(tmp, out)


def _exchange(a: Path, b: Path) -> bool:
  """Atomically swaps two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
  if sys.platform != "linux":
    return False
  import ctypes
  libc = ctypes.CDLL(None, use_errno=True)
  renameat2 = getattr(libc, "renameat2", None)
  if renameat2 is None:
    return False
  at_fdcwd, rename_exchange = -100, 2
  if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
    return True
  err = ctypes.get_errno()
  if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
    return False  # this file system cannot exchange
  raise OSError(err, os.strerror(err), str(b))


@contextlib.contextmanager
def atomic_path(out: str | os.PathLike, token: str | None = None,
                write: bool = True) -> Iterator[Path]:
  """Yields a temporary path beside `out` to write (file or directory); on success it replaces
  `out`, on any exception (Ctrl-C included) it is removed. `write=False`: a process that
  takes part in a multi-host write but does not commit."""
  out = local_path(out, "output")
  out.parent.mkdir(parents=True, exist_ok=True)
  if write:
    sweep_partials(out)
  tmp = temp_sibling(out, token)
  try:
    yield tmp
    if write:
      commit(tmp, out)
  finally:
    if write and tmp.exists():
      _remove(tmp)


def write_text_atomic(out: str | os.PathLike, text: str) -> Path:
  """Writes `text` to `out` through a temporary sibling: readers see the old file or the new."""
  with atomic_path(out) as tmp:
    tmp.write_text(text)
  return Path(out)


def resumable_out(out: str | os.PathLike, config_file: str, wanted: dict, what: str) -> Path:
  """The output directory of a resumable job (a sweep, a distillation): created with
  `config_file` holding `wanted`, or accepted when it holds the same (a resume); another job's
  directory, a non-empty foreign one or a file is refused, naming what differs."""
  import json
  out = local_path(out, "--out")
  if out.exists():
    if not out.is_dir():
      raise Z1Error(f"--out {out}: exists and is not a directory")
    held_path = out / config_file
    if held_path.exists():
      try:
        held = json.loads(held_path.read_text())
      except json.JSONDecodeError:
        raise Z1Error(f"--out {out}: {config_file} is not valid JSON; choose another --out")
      if held != wanted:
        diff = [f"{k}: {json.dumps(held.get(k))} there, {json.dumps(wanted.get(k))} now"
                for k in sorted(set(held) | set(wanted)) if held.get(k) != wanted.get(k)]
        raise Z1Error(f"--out {out} holds a {what} with different inputs ({'; '.join(diff)}); "
                      f"choose another --out (they are never mixed)")
      return out
    if any(out.iterdir()):
      raise Z1Error(f"--out {out}: not empty and holds no {what} ({config_file} missing); "
                    "choose an empty or new directory")
  out.mkdir(parents=True, exist_ok=True)
  write_text_atomic(out / config_file, json.dumps(wanted, indent=2) + "\n")
  return out
