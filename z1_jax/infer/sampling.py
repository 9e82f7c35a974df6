"""Choosing the next token from logits: greedy, temperature, top-k, top-p.

Every row draws from its own key, `fold_in(fold_in(key(seed), row_id), t)` with `t` the index
of the generated token, so a row's samples depend on the seed, its id and the position only:
not on the rest of the batch, its padding, or how the prompts were split into batches.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from z1_jax.errors import Z1Error


@dataclasses.dataclass(frozen=True)
class Sampling:
  """temperature 0 is greedy (top_k / top_p then must be unset)."""
  temperature: float = 0.0
  top_k: int | None = None
  top_p: float | None = None

  def __post_init__(self):
    if not self.temperature >= 0 or self.temperature == float("inf"):
      raise Z1Error(f"temperature={self.temperature}: expected a finite number >= 0")
    if self.top_k is not None and self.top_k < 1:
      raise Z1Error(f"top_k={self.top_k}: expected an integer >= 1")
    if self.top_p is not None and not 0 < self.top_p <= 1:
      raise Z1Error(f"top_p={self.top_p}: expected a number in (0, 1]")
    if self.greedy and (self.top_k is not None or self.top_p is not None):
      raise Z1Error("top_k / top_p need a temperature > 0 (temperature 0 is greedy)")

  @property
  def greedy(self) -> bool:
    return self.temperature == 0


def row_keys(seed: jax.Array, row_ids: jax.Array, t: jax.Array) -> jax.Array:
  """One key per row for generated token `t`: `[B]` typed keys."""
  base = jax.random.key(seed)
  return jax.vmap(lambda r: jax.random.fold_in(jax.random.fold_in(base, r), t))(row_ids)


def filter_logits(logits: jax.Array, sampling: Sampling) -> jax.Array:
  """Temperature-scaled logits with everything outside top-k / top-p set to -inf."""
  logits = logits / sampling.temperature
  if sampling.top_k is not None and sampling.top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, sampling.top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if sampling.top_p is not None and sampling.top_p < 1:
    ordered = jnp.sort(logits, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(ordered, axis=-1)
    # keep the smallest prefix whose mass reaches top_p (always at least the best token)
    keep = (jnp.cumsum(probs, axis=-1) - probs) < sampling.top_p
    threshold = jnp.min(jnp.where(keep, ordered, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < threshold, -jnp.inf, logits)
  return logits


def choose(logits: jax.Array, sampling: Sampling, keys: jax.Array | None) -> jax.Array:
  """Next token per row (`[B]` int32) from fp32 logits `[B, V]`."""
  if sampling.greedy:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = filter_logits(logits, sampling)
  return jax.vmap(jax.random.categorical)(keys, logits).astype(jnp.int32)
