"""Choosing the next token from logits: greedy, temperature, top-k, top-p.

Every row draws from its own key, `fold_in(fold_in(key(seed), row_id), t)` with `t` the index
of the generated token, so a row's samples depend on its seed, its row id and the position
only: not on the rest of the batch, its slot, or when it entered. Settings are per row
(arrays), so one compiled step serves a batch of mixed requests.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from z1_jax.errors import Z1Error


MIN_TEMPERATURE = 1e-6  # smaller positive temperatures are refused (see Sampling)


@dataclasses.dataclass(frozen=True)
class Sampling:
  """temperature 0 is greedy (top_k / top_p then must be unset)."""
  temperature: float = 0.0
  top_k: int | None = None
  top_p: float | None = None

  def __post_init__(self):
    t = self.temperature
    if not t >= 0 or t == float("inf"):
      raise Z1Error(f"temperature={t}: expected a finite number >= 0")
    if 0 < t < MIN_TEMPERATURE:
      raise Z1Error(f"temperature={t}: a positive temperature below {MIN_TEMPERATURE} scales "
                    "the float32 logits towards overflow (and 0 < t underflows to 0 in float32 "
                    "below 1.4e-45); use temperature 0 for greedy decoding")
    if self.top_k is not None and (isinstance(self.top_k, bool) or
                                   int(self.top_k) != self.top_k):
      raise Z1Error(f"top_k={self.top_k}: expected an integer >= 1")
    if self.top_k is not None and self.top_k < 1:
      raise Z1Error(f"top_k={self.top_k}: expected an integer >= 1")
    if self.top_p is not None and not 0 < self.top_p <= 1:
      raise Z1Error(f"top_p={self.top_p}: expected a number in (0, 1]")
    if self.greedy and (self.top_k is not None or self.top_p is not None):
      raise Z1Error("top_k / top_p need a temperature > 0 (temperature 0 is greedy)")

  @property
  def greedy(self) -> bool:
    return self.temperature == 0


def row_keys(seeds: jax.Array, row_ids: jax.Array, t: jax.Array) -> jax.Array:
  """One key per row for generated token `t` (`[]` or `[B]`): `[B]` typed keys from each row's
  own seed and row id."""
  seeds, row_ids = jnp.broadcast_arrays(seeds, row_ids)
  t = jnp.broadcast_to(t, row_ids.shape)
  return jax.vmap(lambda s, r, i: jax.random.fold_in(jax.random.fold_in(jax.random.key(s), r),
                                                     i))(seeds, row_ids, t)


def filter_rows(scaled: jax.Array, top_k: jax.Array, top_p: jax.Array) -> jax.Array:
  """Temperature-scaled logits `[B, V]` with everything outside each row's top-k (`top_k[r]`,
  0 = off) and then top-p (`top_p[r]`, 1 = off) set to -inf. One sort serves both: the
  smallest prefix whose mass reaches top_p is kept (always at least the best token); ties with
  the k-th value are kept."""
  v = scaled.shape[-1]
  ordered = jnp.sort(scaled, axis=-1)[:, ::-1]
  use_k = ((top_k > 0) & (top_k < v))[:, None]
  kth = jnp.take_along_axis(ordered, jnp.clip(top_k - 1, 0, v - 1)[:, None], axis=1)
  scaled = jnp.where(use_k & (scaled < kth), -jnp.inf, scaled)
  ordered = jnp.where(use_k & (ordered < kth), -jnp.inf, ordered)
  probs = jax.nn.softmax(ordered, axis=-1)
  # the best token is kept whatever top_p is: a top_p that float32 holds as 0 (below its
  # smallest subnormal, or flushed) would otherwise keep nothing and sample token 0
  first = jnp.arange(v) == 0
  keep = ((jnp.cumsum(probs, axis=-1) - probs) < top_p[:, None]) | first[None]
  threshold = jnp.min(jnp.where(keep, ordered, jnp.inf), axis=-1, keepdims=True)
  return jnp.where((top_p < 1)[:, None] & (scaled < threshold), -jnp.inf, scaled)


VARIANTS = ("greedy", "sample", "filter")  # what a compiled step can do (static)


def variant(samplings) -> str:
  """The least compiled step that serves every one of `samplings`; a row's token does not
  depend on the variant (rows that do not use a feature take the unfiltered branch)."""
  samplings = list(samplings)
  if any(s.top_k is not None or s.top_p is not None for s in samplings):
    return "filter"
  return "sample" if any(not s.greedy for s in samplings) else "greedy"


def choose(logits: jax.Array, temperature: jax.Array, top_k: jax.Array, top_p: jax.Array,
           keys: jax.Array | None, kind: str) -> jax.Array:
  """Next token per row (`[B]` int32) from fp32 logits `[B, V]` and per-row settings
  (temperature 0 = greedy); `kind` one of `VARIANTS`."""
  greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  if kind == "greedy":
    return greedy
  t = jnp.where(temperature > 0, temperature, 1.0)
  scaled = logits / t[:, None]
  if kind == "filter":
    scaled = filter_rows(scaled, top_k, top_p)
  sampled = jax.vmap(jax.random.categorical)(keys, scaled).astype(jnp.int32)
  return jnp.where(temperature > 0, sampled, greedy)
