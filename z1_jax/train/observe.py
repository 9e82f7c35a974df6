"""Visibility of a run: the profiler window (the compilation cache: `z1_jax/compile_cache.py`).

- `train.profile_steps = "A:B"` (parsed by `config.parse_profile_steps`): a `jax.profiler`
  trace of optimizer steps A..B (1-based, inclusive) into `<out>/tb/plugins/profile/` on every host, for TensorBoard's profile tab
  (`pip install tensorboard tensorboard-plugin-profile; tensorboard --logdir <out>/tb`).
"""

from __future__ import annotations


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
