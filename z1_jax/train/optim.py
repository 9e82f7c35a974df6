"""optax optimizer of a run: global-norm clipping, then AdamW on a warmup + cosine schedule."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from z1_jax.config import TrainSection


def make_schedule(t: TrainSection, total_steps: int) -> optax.Schedule:
  """Linear warmup 0 -> peak over `warmup_steps`, then cosine to `min_lr_ratio * peak` at
  `decay_steps` (0: `total_steps`, the whole run) or constant. Independent of `max_steps`, so a
  run stopped early and resumed follows the same schedule as an uninterrupted one."""
  decay = t.decay_steps or total_steps
  if t.schedule == "constant":
    return optax.join_schedules([optax.linear_schedule(0.0, t.peak_lr, max(t.warmup_steps, 1)),
                                 optax.constant_schedule(t.peak_lr)], [t.warmup_steps])
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=t.peak_lr, warmup_steps=t.warmup_steps,
      decay_steps=max(decay, t.warmup_steps + 1), end_value=t.peak_lr * t.min_lr_ratio)


def decay_mask(params, decay_norms_and_biases: bool = False):
  """True where weight decay applies: every parameter but norm scales and biases (unless set)."""
  def keep(path, _):
    name = str(getattr(path[-1], "key", path[-1]))
    return decay_norms_and_biases or not (name == "scale" or name.endswith("bias"))
  return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(t: TrainSection, total_steps: int):
  """(optax transformation, schedule)."""
  schedule = make_schedule(t, total_steps)
  adamw = optax.adamw(schedule, b1=t.adam_b1, b2=t.adam_b2, eps=t.adam_eps,
                      weight_decay=t.weight_decay, mu_dtype=jnp.dtype(t.opt_state_dtype),
                      mask=lambda p: decay_mask(p, t.decay_norms_and_biases))
  parts = [optax.clip_by_global_norm(t.max_grad_norm)] if t.max_grad_norm > 0 else []
  return optax.chain(*parts, adamw), schedule
