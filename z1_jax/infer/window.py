"""The Shifted Thinking Window, exactly: the per-row state machine every decode runs.

One definition, used by `generate`, `sweep`, the engine behind `z1 serve`, and the report:

- Thinking window B. A row that ends by itself (an end id) within its first B generated tokens
  is final, for every placement (Z1's pass 1; it is never re-answered).
- A row still thinking when it has generated B tokens gets the trigger (T tokens): `replace`
  rewinds it to B-T and forces the trigger into positions B-T..B-1 (the window holds exactly
  B tokens; the cache slots written past B-T are overwritten as the trigger is fed, and the
  rewound position makes them invisible until then: a key is seen only by queries at or after
  its position); `append` forces the trigger at B..B+T-1 (the paper's two-pass code). Then at
  most A answer tokens.
- s1 budget forcing: an end of thinking before `min_thinking` tokens is replaced by "Wait"
  (`wait_ids`); a later end places the answer marker; the budget places it as above.

Per row, `phase`:
  THINK  -> sampled tokens; at the budget a still-thinking row gets the marker
  MARKER -> the trigger (z1) / answer marker (s1) is forced, one token per step
  ANSWER -> sampled tokens, at most `answer` of them
  WAIT   -> s1 only: "Wait" is forced, then THINK again
A row is done at an end id sampled in THINK (z1) or ANSWER, when its answer is full, or at its
`stop` (the most tokens it may generate). End ids are the model's (`Markers.eos_ids`, unless
the row ignores them) and the row's own `stop_ids`. A row at `pause_at` while thinking waits (the
sweep forks it there). Counting (`Generation`): `thinking_tokens` = the tokens before the
trigger (B-T with replace, B with append, all of them for a row that ended inside its window),
`answer_tokens` = the tokens after it.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

THINK, MARKER, WAIT, ANSWER = 0, 1, 2, 3
NEVER = 2**30  # a budget or pause point no row reaches


@dataclasses.dataclass(frozen=True)
class Markers:
  """The forced id sequences and end ids (static: compiled in)."""
  eos_ids: tuple[int, ...]
  z1_ids: tuple[int, ...] = ()  # the answer trigger
  s1_ids: tuple[int, ...] = ()  # the s1 answer marker
  wait_ids: tuple[int, ...] = ()  # s1: replaces an early end of thinking


class Rows(NamedTuple):
  """Per-row state and controls, `[slots]` each. A free slot is `done`."""
  last: jax.Array  # int32: the token fed next
  feed: jax.Array  # int32: its position (= its cache slot)
  start: jax.Array  # int32: prompt length: generated token i sits at position start + i
  n: jax.Array  # int32: tokens in place (index of the next one)
  phase: jax.Array  # int32
  forced_at: jax.Array  # int32: index where the current forced sequence began
  marker_at: jax.Array  # int32: index of the first trigger/marker token, -1 if none
  hit: jax.Array  # bool: the budget placed the marker
  ended: jax.Array  # bool: done by an end id (else by a length limit)
  done: jax.Array  # bool
  pause_at: jax.Array  # int32: a thinking row with n == pause_at waits (NEVER: never)
  window: jax.Array  # int32: B (NEVER without a budget)
  replace: jax.Array  # bool: replace placement (else append)
  stop: jax.Array  # int32: most tokens the row may generate
  answer: jax.Array  # int32: answer limit A (NEVER without a budget)
  min_thinking: jax.Array  # int32: s1
  s1: jax.Array  # bool: s1 mode
  seed: jax.Array  # int32
  row_id: jax.Array  # int32: sampling keys derive from (seed, row_id, index)
  temperature: jax.Array  # float32, 0 = greedy
  top_k: jax.Array  # int32, 0 = off
  top_p: jax.Array  # float32, 1 = off
  ignore_eos: jax.Array  # bool: the model's end ids do not end the row
  min_tokens: jax.Array  # int32: end ids are suppressed (in the logits) before this many tokens
  stop_ids: jax.Array  # int32 [slots, S]: the request's own end ids (-1: none)
  rewind_token: jax.Array  # int32: the token at index B-T-1 (see `feed_of`)


def live(rows: Rows) -> jax.Array:
  """Rows that advance this step."""
  thinking = (rows.phase == THINK) | (rows.phase == WAIT)
  return ~rows.done & ~(thinking & (rows.n == rows.pause_at))


def _trigger_len(rows: Rows, m: Markers) -> jax.Array:
  return jnp.where(rows.s1, len(m.s1_ids), len(m.z1_ids))


def feed_of(rows: Rows, m: Markers) -> tuple[jax.Array, jax.Array, jax.Array]:
  """What each row feeds the model this step: (token, position, whether its key/value is
  written). Normally the last placed token at `feed`. A replace row about to hit its budget
  rewinds to B-T, so its step computes the distribution of token B-T instead of B: it feeds
  token B-T-1 again (`rewind_token`) at its position, keys after it invisible and nothing
  written (that key is in the cache already), so the trigger's first token gets its exact
  log-probability at no extra step."""
  thinking = (rows.phase == THINK) | (rows.phase == WAIT)
  t_len = _trigger_len(rows, m)
  refeed = thinking & (rows.n == rows.window) & rows.replace & (t_len > 0)
  token = jnp.where(refeed, rows.rewind_token, rows.last)
  position = jnp.where(refeed, rows.start + rows.window - t_len - 1, rows.feed)
  return token, position, ~refeed


def advance(rows: Rows, sampled: jax.Array, go: jax.Array, m: Markers) -> tuple[Rows, jax.Array]:
  """Places token `rows.n` of every row in `go` (sampled, or forced by the rule above).

  Returns the rows and the index each placed token got (-1 where none was): `n` normally,
  `B - T` for a replace row rewound at its budget."""
  i = rows.n
  is_eos = jnp.any(sampled[:, None] == jnp.asarray(m.eos_ids or (-1,), jnp.int32), axis=1)
  is_end = (is_eos & ~rows.ignore_eos) | jnp.any(sampled[:, None] == rows.stop_ids, axis=1)
  t_len = _trigger_len(rows, m)
  has_marker = t_len > 0
  thinking = (rows.phase == THINK) | (rows.phase == WAIT)
  budget_hit = go & thinking & (i == rows.window) & has_marker
  s1_end = go & (rows.phase == THINK) & is_end & rows.s1 & ~budget_hit
  wait = s1_end & (i < rows.min_thinking) & bool(m.wait_ids)
  mark = budget_hit | (s1_end & ~wait)
  at = jnp.where(budget_hit & rows.replace, i - t_len, i)
  phase = jnp.where(mark, MARKER, jnp.where(wait, WAIT, rows.phase))
  forced_at = jnp.where(mark | wait, at, rows.forced_at)
  k = at - forced_at
  token = sampled
  if m.z1_ids or m.s1_ids:
    pad = lambda ids: tuple(ids) + (0,) * (max(len(m.z1_ids), len(m.s1_ids)) - len(ids))
    table = jnp.asarray([pad(m.z1_ids), pad(m.s1_ids)], jnp.int32)
    forced = table[rows.s1.astype(jnp.int32), jnp.clip(k, 0, table.shape[1] - 1)]
    token = jnp.where(phase == MARKER, forced, token)
  if m.wait_ids:
    forced = jnp.asarray(m.wait_ids, jnp.int32)[jnp.clip(k, 0, len(m.wait_ids) - 1)]
    token = jnp.where(phase == WAIT, forced, token)
  free = (phase == THINK) | (phase == ANSWER)  # the token was sampled, not forced
  ended_now = go & free & is_end
  marker_at = jnp.where(mark, at, rows.marker_at)
  answer_full = go & (phase == ANSWER) & (at - marker_at - t_len + 1 >= rows.answer)
  length_full = go & (at + 1 >= rows.stop)
  phase = jnp.where((phase == MARKER) & (k == t_len - 1), ANSWER, phase)
  if m.wait_ids:
    phase = jnp.where((phase == WAIT) & (k == len(m.wait_ids) - 1), THINK, phase)
  pick = lambda new, old: jnp.where(go, new, old)
  rows = rows._replace(
      last=pick(token, rows.last), feed=pick(rows.start + at, rows.feed), n=pick(at + 1, rows.n),
      phase=pick(phase, rows.phase), forced_at=pick(forced_at, rows.forced_at),
      marker_at=pick(marker_at, rows.marker_at), hit=rows.hit | budget_hit,
      ended=rows.ended | ended_now, done=rows.done | ended_now | answer_full | length_full,
      rewind_token=jnp.where(go & (at == rows.window - t_len - 1), token, rows.rewind_token))
  return rows, jnp.where(go, at, -1)


def stop_for(thinking_budget: int | None, answer_tokens: int | None, trigger_len: int,
             placement: str | None, max_new_tokens: int | None) -> int:
  """Most tokens a request can generate: the window (and, appended, the trigger), then the
  answer; without a budget, `max_new_tokens`."""
  if thinking_budget is None:
    return int(max_new_tokens)
  return thinking_budget + (trigger_len if placement == "append" else 0) + answer_tokens


def committed(n_tokens: int, done: bool, thinking: bool, window: int, replace: bool,
              trigger_len: int) -> int:
  """How many of a row's tokens are final (may be streamed): a replace row still thinking may
  yet be rewound to B-T, so its tokens from B-T on wait until it ends or its window closes."""
  if done or not thinking or not replace or window >= NEVER:
    return n_tokens
  return min(n_tokens, window - trigger_len)
