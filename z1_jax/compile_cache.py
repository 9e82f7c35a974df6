"""JAX's persistent compilation cache: where a training run puts it, and putting it back.

- `set_up(setting, out)`: `train.compilation_cache`. "" uses `JAX_COMPILATION_CACHE_DIR` when
  set, else `<out>/compile_cache` (gs:// when the run directory is); "off" disables (an
  environment's cache too); any other value is the directory (local or gs://). Every executable
  is cached (no minimum compile time), so the second start of a run loads its step instead of
  compiling it.
- `kept()`: the process's cache settings as they were, again on exit (a run called from Python
  leaves the cache where it found it: its own directory may be gone by then, an output written
  under a temporary name and renamed).
- `bypassed()`: no persistent cache inside the block (compiles for compile-only TPU devices:
  their executables cannot be loaded back without a client, so JAX would warn and compile again).

JAX decides whether it uses the cache, and binds its directory, at a process's first compile;
every change here resets the cache so that the next compile asks again.
"""

from __future__ import annotations

import contextlib
import os

_SETTINGS = ("jax_enable_compilation_cache", "jax_compilation_cache_dir",
             "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes")


def _update(**settings) -> None:
  import jax
  from jax.experimental.compilation_cache import compilation_cache as cc
  for name, value in settings.items():
    jax.config.update(name, value)
  cc.reset_cache()


def set_up(setting: str, out) -> str | None:
  """Points the cache at the run's directory; returns it (or None when "off")."""
  import jax
  if setting == "off":
    if jax.config.jax_compilation_cache_dir is not None:  # set by JAX_COMPILATION_CACHE_DIR
      _update(jax_compilation_cache_dir=None)
    return None
  where = setting or os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(out / "compile_cache")
  if jax.config.jax_compilation_cache_dir != where:
    _update(jax_compilation_cache_dir=where)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return where


@contextlib.contextmanager
def kept():
  """Puts the cache settings back as they were on exit, if anything in the block changed them."""
  import jax
  before = {name: getattr(jax.config, name) for name in _SETTINGS}
  try:
    yield
  finally:
    if any(getattr(jax.config, name) != value for name, value in before.items()):
      _update(**before)


@contextlib.contextmanager
def bypassed():
  """No persistent cache inside the block (neither read nor written)."""
  with kept():
    _update(jax_enable_compilation_cache=False)
    yield
