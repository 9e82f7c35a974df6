"""The engine's compiled programs and the device state they share.

`DecodeState` = the paged KV pools (one per layer, `model/paged.py`) and the rows' state
(`window.Rows`, `[slots]`). Page tables live on the host and are passed in with each call.
Every program donates the state, so the pools are updated in place.

- `decode_chunk`: up to `steps` decode steps (each live row one token) in one
  `lax.while_loop`; it ends early when no row is live, or, with `exit_on_event`, as soon as a
  row finishes or pauses (so the host can hand its slot on / fork it at once).
- `prefill`: one chunk of prompt tokens for a few rows (`[R, W]`, padding dropped): keys and
  values written into their pages, attention over everything before them; optionally the
  prompt tokens' log-probabilities.
- `install_rows` / `release`: write admitted rows' state / mark slots done.
- `copy_pages`: copies pages (a sweep branch's copy of its trunk's partial page).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from z1_jax.infer import window
from z1_jax.infer.engine.requests import MAX_LOGPROBS, MAX_STOP_TOKEN_IDS
from z1_jax.infer.sampling import choose, row_keys
from z1_jax.model.paged import PagedKV

DROP = np.iinfo(np.int32).max  # a slot id no pool has: the write is dropped


class DecodeState(NamedTuple):
  pools: tuple[jax.Array, ...]  # per layer [pages, page_size, 2K, D]
  rows: window.Rows


def rows_init(n: int) -> window.Rows:
  """`n` free rows (host numpy)."""
  z = np.zeros((n,), np.int32)
  f = np.zeros((n,), bool)
  return window.Rows(
      last=z, feed=z, start=z, n=z, phase=z, forced_at=z, marker_at=z - 1, hit=f, ended=f,
      done=np.ones((n,), bool), pause_at=z + window.NEVER, window=z + window.NEVER,
      replace=f, stop=z, answer=z + window.NEVER, min_thinking=z, s1=f, seed=z, row_id=z,
      temperature=np.zeros((n,), np.float32), top_k=z, top_p=np.ones((n,), np.float32),
      ignore_eos=f, min_tokens=z, stop_ids=np.full((n, MAX_STOP_TOKEN_IDS), -1, np.int32),
      rewind_token=z)


def rows_shardings(rules):
  """(sharding of the `[slots]` row arrays, of `[slots, S]` ones) on `rules`' mesh: rows over
  the batch's axes; None on one device. Every program keeps the rows so (a fixed layout the
  engine's executables are compiled for)."""
  if rules is None:
    return None
  one = rules.sharding(("batch",))
  return one, jax.sharding.NamedSharding(one.mesh, jax.sharding.PartitionSpec(one.spec[0], None))


def _keep(rows: window.Rows, shardings) -> window.Rows:
  if shardings is None:
    return rows
  return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(
      x, shardings[0] if x.ndim == 1 else shardings[1]), rows)


def _slots_of(pages, positions, page_size, go):
  """Flat slot ids `[B, L]` of `positions` in each row's pages; DROP where `go` is False or
  the position is past the page table (never clamped onto the last page; the host bounds
  every row by `max_seq_len`, so it does not happen)."""
  index = positions // page_size
  inside = index < pages.shape[1]
  page = jnp.take_along_axis(pages, jnp.minimum(index, pages.shape[1] - 1), axis=1)
  return jnp.where(go & inside, page * page_size + positions % page_size, DROP)


def _suppress_ends(logits, rows: window.Rows, markers: window.Markers):
  """Rows below their `min_tokens` cannot sample an end id (vLLM's min_tokens)."""
  ban = rows.n < rows.min_tokens
  off = lambda mask: jnp.where(mask, -jnp.inf, jnp.inf)
  if markers.eos_ids:
    eos = jnp.asarray(markers.eos_ids, jnp.int32)
    logits = logits.at[:, eos].min(off(ban & ~rows.ignore_eos)[:, None])
  ids = jnp.clip(rows.stop_ids, 0)
  b = logits.shape[0]
  return logits.at[jnp.arange(b)[:, None], ids].min(off(ban[:, None] & (rows.stop_ids >= 0)))


def _paused(rows: window.Rows):
  thinking = (rows.phase == window.THINK) | (rows.phase == window.WAIT)
  return ~rows.done & thinking & (rows.n == rows.pause_at)


def _top(logprobs):
  """Top `MAX_LOGPROBS` (ids int32, log-probabilities) of `[..., V]`."""
  values, ids = jax.lax.top_k(logprobs, MAX_LOGPROBS)
  return ids.astype(jnp.int32), values


@functools.partial(jax.jit, static_argnames=("graphdef", "markers", "steps", "kind", "logprobs",
                                             "shardings"), donate_argnames="state")
def decode_chunk(graphdef, params, state: DecodeState, pages, exit_on_event, *,
                 markers: window.Markers, steps: int, kind: str, logprobs: bool,
                 shardings=None):
  """Up to `steps` decode steps over the rows (see the module docstring). Returns the state and
  `out`: the chunk's tokens and their indices `[slots, steps]` (index -1: no token), a copy of
  the rows at the chunk's end, and with `logprobs` each token's log-probability
  `[slots, steps]` and the top ids / log-probabilities `[slots, steps, MAX_LOGPROBS]`."""
  model = nnx.merge(graphdef, params)
  b = state.rows.n.shape[0]
  page_size = state.pools[0].shape[1]

  def body(carry):
    i, s, out, _ = carry
    rows = s.rows
    go = window.live(rows)
    token, position, write = window.feed_of(rows, markers)
    slots = _slots_of(pages, position[:, None], page_size, (go & write)[:, None])
    lengths = jnp.where(go, position + 1, 1)
    logits, pools = model(token[:, None], positions=position[:, None],
                          cache=PagedKV(s.pools, pages, lengths, slots))
    logits = logits[:, 0]
    keys = None if kind == "greedy" else row_keys(rows.seed, rows.row_id, rows.n)
    masked = _suppress_ends(logits, rows, markers)
    if kind == "filter" and shardings is not None:
      # top-k / top-p sort each row's whole vocabulary: gather it first (one [rows, V]
      # all-gather per step) and sort on each device; along a sharded vocabulary XLA turns
      # top-p's cumsum into one vocabulary-wide reduce-window (1.8 s per call vs 4 ms gathered
      # at 152k on 4 CPU devices; tests/test_paged.py checks the compiled HLO)
      masked = jax.lax.with_sharding_constraint(masked, shardings[1])
    sampled = choose(masked, rows.temperature, rows.top_k, rows.top_p, keys, kind)
    new, at = window.advance(rows, sampled, go, markers)
    put = lambda buf, x: jax.lax.dynamic_update_slice_in_dim(buf, x[:, None], i, 1)
    out = dict(out, tokens=put(out["tokens"], new.last), index=put(out["index"], at))
    if logprobs:
      lp = jax.nn.log_softmax(logits, axis=-1)
      ids, values = _top(lp)
      out["logprob"] = put(out["logprob"], jnp.take_along_axis(lp, new.last[:, None], 1)[:, 0])
      out["top_ids"] = jax.lax.dynamic_update_slice_in_dim(out["top_ids"], ids[:, None], i, 1)
      out["top_logprobs"] = jax.lax.dynamic_update_slice_in_dim(out["top_logprobs"],
                                                                values[:, None], i, 1)
    event = jnp.any((new.done & ~rows.done) | (_paused(new) & ~_paused(rows)))
    return i + 1, DecodeState(pools, new), out, event

  def cond(c):
    return (c[0] < steps) & jnp.any(window.live(c[1].rows)) & ~(exit_on_event & c[3])

  out = {"tokens": jnp.zeros((b, steps), jnp.int32),
         "index": jnp.full((b, steps), -1, jnp.int32)}
  if logprobs:
    out.update(logprob=jnp.zeros((b, steps), jnp.float32),
               top_ids=jnp.zeros((b, steps, MAX_LOGPROBS), jnp.int32),
               top_logprobs=jnp.zeros((b, steps, MAX_LOGPROBS), jnp.float32))
  _, state, out, _ = jax.lax.while_loop(cond, body, (jnp.int32(0), state, out, jnp.bool_(False)))
  state = state._replace(rows=_keep(state.rows, shardings))
  # the rows as this chunk left them, apart from the donated state: the host may read them
  # after the next chunk was dispatched (`Engine.step`'s pipelining)
  out["rows"] = jax.tree.map(jnp.copy, state.rows)
  return state, out


@functools.partial(jax.jit, static_argnames=("graphdef", "logprobs"), donate_argnames="state")
def prefill(graphdef, params, state: DecodeState, tokens, positions, pages, lengths, valid,
            targets, *, logprobs: bool):
  """One prefill chunk: `tokens`/`positions`/`valid` `[R, W]` (padding not valid: not
  written), `pages [R, MP]`, `lengths [R]` (each row's last padded position + 1). With
  `logprobs`: also the log-probability of `targets [R, W]` (the next prompt token at each
  position) and the top ones. Returns the state (and those)."""
  model = nnx.merge(graphdef, params)
  page_size = state.pools[0].shape[1]
  slots = _slots_of(pages, positions, page_size, valid)
  logits, pools = model(tokens, positions=positions,
                        cache=PagedKV(state.pools, pages, lengths, slots), logits=logprobs)
  state = state._replace(pools=pools)
  if not logprobs:
    return state
  lp = jax.nn.log_softmax(logits, axis=-1)
  ids, values = _top(lp)
  return state, jnp.take_along_axis(lp, targets[..., None], -1)[..., 0], ids, values


@functools.partial(jax.jit, static_argnames=("shardings",), donate_argnames="state")
def install_rows(state: DecodeState, slot_ids, rows: window.Rows, *,
                 shardings=None) -> DecodeState:
  """Writes `rows` (`[S]`) into slots `slot_ids [S]` (an id >= slots is dropped)."""
  put = lambda buf, x: buf.at[slot_ids].set(x, mode="drop")
  return state._replace(rows=_keep(jax.tree.map(put, state.rows, rows), shardings))


@functools.partial(jax.jit, static_argnames=("shardings",), donate_argnames="state")
def release(state: DecodeState, slot_ids, *, shardings=None) -> DecodeState:
  """Marks slots done (a cancelled or stopped request stops at once)."""
  rows = state.rows
  rows = rows._replace(done=rows.done.at[slot_ids].set(True, mode="drop"))
  return state._replace(rows=_keep(rows, shardings))


@functools.partial(jax.jit, static_argnames=("rules",), donate_argnames="state")
def copy_pages(state: DecodeState, src, dst, *, rules=None) -> DecodeState:
  """Copies page `src[s, i]` to `dst[s, i]` of shard s in every layer (`[shards, M]`, local
  ids; a dst out of range is dropped)."""
  from z1_jax.model.paged import copy_pages as copy
  return state._replace(pools=tuple(copy(p, src, dst, rules) for p in state.pools))
