"""Start-up and visibility of a run: the persistent compilation cache and the profiler window.

- `train.compilation_cache`: "" uses `JAX_COMPILATION_CACHE_DIR` when set, else
  `<out>/compile_cache` (gs:// when the run directory is); "off" disables; any other value is
  the directory (local or gs://). Every executable is cached (no minimum compile time), so the
  second start of a run loads its step instead of compiling it.
- `train.profile_steps = "A:B"` (parsed by `config.parse_profile_steps`): a `jax.profiler`
  trace of optimizer steps A..B (1-based, inclusive) into `<out>/tb/plugins/profile/` on every host, for TensorBoard's profile tab
  (`pip install tensorboard tensorboard-plugin-profile; tensorboard --logdir <out>/tb`).
"""

from __future__ import annotations

import contextlib
import os


def set_up_compilation_cache(setting: str, out) -> str | None:
  """Points JAX's persistent compilation cache at the run's directory; returns it (or None)."""
  import jax
  from jax.experimental.compilation_cache import compilation_cache as cc
  if setting == "off":
    if jax.config.jax_compilation_cache_dir is not None:  # set by JAX_COMPILATION_CACHE_DIR
      jax.config.update("jax_compilation_cache_dir", None)
      cc.reset_cache()
    return None
  where = setting or os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(out / "compile_cache")
  if jax.config.jax_compilation_cache_dir != where:
    jax.config.update("jax_compilation_cache_dir", where)
    cc.reset_cache()  # the cache binds its directory at first use: rebind for this run
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return where


@contextlib.contextmanager
def kept_compilation_cache():
  """Puts JAX's compilation-cache settings back as they were on exit: a run called from Python
  leaves the process's cache where it found it (its own directory may be gone by then: an
  output written under a temporary name and renamed)."""
  import jax
  from jax.experimental.compilation_cache import compilation_cache as cc
  names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
           "jax_persistent_cache_min_entry_size_bytes")
  before = {n: getattr(jax.config, n) for n in names}
  try:
    yield
  finally:
    if jax.config.jax_compilation_cache_dir != before["jax_compilation_cache_dir"]:
      for n, v in before.items():
        jax.config.update(n, v)
      cc.reset_cache()


class ProfileWindow:
  """Starts a trace before step `first` is dispatched and stops it once step `last` is done."""

  def __init__(self, steps: tuple[int, int] | None, log_dir):
    self.steps, self.log_dir, self.active, self.written = steps, log_dir, False, False

  def before(self, step: int) -> None:
    if self.steps and not self.active and not self.written and step == self.steps[0]:
      import jax
      jax.profiler.start_trace(str(self.log_dir))
      self.active = True

  def after(self, step: int, force: bool = False) -> None:
    if self.active and (step >= self.steps[1] or force):
      import jax
      jax.profiler.stop_trace()
      self.active, self.written = False, True
