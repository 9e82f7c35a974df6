"""The compiled decode loop: prefill, then one `lax.while_loop` over a donated KV cache.

Prompts are left-padded to one width `P`, so every row writes generated token `t` to the same
cache slot `P + t` and one scalar step drives the batch (tunix's design; a fixed thinking
budget fits it, as every row reaches the end of its window at the same step). Each row runs a
small state machine (`phase`):

  THINK  -> sampled tokens; at `trigger_step` (the budget) a still-thinking row gets the marker
  MARKER -> the answer trigger (z1) or answer marker (s1) is forced, one token per step
  ANSWER -> sampled tokens, at most `answer_tokens` of them
  WAIT   -> s1 only: an end of thinking before `min_thinking` tokens is replaced by "Wait"

A row is done at an end id sampled in THINK (z1) or ANSWER, or when its answer is full; after
that it emits nothing. Budgets, limits and the seed are traced scalars (`Controls`), so one
compiled loop serves every budget of a given shape: the sweep resumes the same loop from a
fork. Every write index is known on the host (`P + step`, step < stop <= width): callers check
`stop` against the cache before launching, since a traced index cannot be checked inside.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from z1_jax.infer.sampling import Sampling, choose, row_keys
from z1_jax.model.qwen2 import KVCache, init_cache

THINK, MARKER, WAIT, ANSWER = 0, 1, 2, 3
NEVER = 2**30  # a trigger step no loop reaches


@dataclasses.dataclass(frozen=True)
class LoopSpec:
  """Static part of a decode: what is compiled in."""
  sampling: Sampling
  eos_ids: tuple[int, ...]
  marker_ids: tuple[int, ...] = ()  # trigger (z1) / answer marker (s1), forced at the budget
  wait_ids: tuple[int, ...] = ()  # s1: replaces an end of thinking before `min_thinking`
  s1: bool = False  # an end of thinking places the marker instead of ending the row


class Controls(NamedTuple):
  """Traced scalars (int32): changing them does not recompile."""
  trigger_step: jax.Array  # generated-token index at which still-thinking rows get the marker
  stop: jax.Array  # no token with this index or later is generated
  answer_tokens: jax.Array  # a row is done after this many answer tokens
  min_thinking: jax.Array  # s1: ends before this many tokens become `wait_ids`
  seed: jax.Array


def controls(trigger_step=NEVER, stop=0, answer_tokens=NEVER, min_thinking=0, seed=0):
  return Controls(*(jnp.asarray(x, jnp.int32) for x in (trigger_step, stop, answer_tokens,
                                                        min_thinking, seed)))


class DecodeState(NamedTuple):
  cache: KVCache
  step: jax.Array  # [] tokens generated so far, shared by all rows
  last: jax.Array  # [B] the token emitted last, fed to the model next
  tokens: jax.Array  # [B, N] generated ids, 0 after a row is done
  length: jax.Array  # [B] tokens emitted
  done: jax.Array  # [B] bool
  ended: jax.Array  # [B] bool: done by an end id (else by a length limit)
  phase: jax.Array  # [B] THINK / MARKER / WAIT / ANSWER
  forced_at: jax.Array  # [B] step where the current forced sequence began
  marker_at: jax.Array  # [B] step of the first marker token, -1 if none
  hit: jax.Array  # [B] bool: the marker was placed by the budget
  start: jax.Array  # [B] prompt lengths: generated token t sits at position start + t
  row_ids: jax.Array  # [B] ids the sampling keys derive from
  width: jax.Array  # [] padded prompt width P: token t is written to cache slot P + t


def _emit(state: DecodeState, logits: jax.Array, spec: LoopSpec, ctl: Controls) -> DecodeState:
  """Chooses (samples or forces) token `state.step` for every row and advances the rows."""
  t = state.step
  keys = None if spec.sampling.greedy else row_keys(ctl.seed, state.row_ids, t)
  sampled = choose(logits, spec.sampling, keys)
  is_end = jnp.any(sampled[:, None] == jnp.asarray(spec.eos_ids or (-1,), jnp.int32), axis=1)
  live = ~state.done
  thinking = (state.phase == THINK) | (state.phase == WAIT)
  budget_hit = live & thinking & (t == ctl.trigger_step) & bool(spec.marker_ids)
  s1_end = live & (state.phase == THINK) & is_end & spec.s1 & ~budget_hit
  wait = s1_end & (t < ctl.min_thinking) & bool(spec.wait_ids)
  mark = budget_hit | (s1_end & ~wait)
  phase = jnp.where(mark, MARKER, jnp.where(wait, WAIT, state.phase))
  forced_at = jnp.where(mark | wait, t, state.forced_at)
  k = t - forced_at
  token = sampled
  for kind, ids in ((MARKER, spec.marker_ids), (WAIT, spec.wait_ids)):
    if ids:
      forced = jnp.asarray(ids, jnp.int32)[jnp.clip(k, 0, len(ids) - 1)]
      token = jnp.where(phase == kind, forced, token)
  token = jnp.where(live, token, 0)
  free = (phase == THINK) | (phase == ANSWER)  # the token was sampled, not forced
  ended_now = live & free & is_end
  marker_at = jnp.where(mark, t, state.marker_at)
  answer_full = live & (phase == ANSWER) & (
      t - marker_at - len(spec.marker_ids) + 1 >= ctl.answer_tokens)
  done = state.done | ended_now | answer_full
  phase = jnp.where((phase == MARKER) & (k == len(spec.marker_ids) - 1), ANSWER, phase)
  phase = jnp.where((phase == WAIT) & (k == len(spec.wait_ids) - 1), THINK, phase)
  return state._replace(
      step=t + 1, last=token,
      tokens=jax.lax.dynamic_update_slice_in_dim(state.tokens, token[:, None], t, axis=1),
      length=state.length + live, done=done, ended=state.ended | ended_now, phase=phase,
      forced_at=forced_at, marker_at=marker_at, hit=state.hit | budget_hit)


@functools.partial(jax.jit, static_argnames=("graphdef", "spec", "cache_len", "width"))
def start(graphdef, params, tokens, segment_ids, positions, lengths, row_ids, done,
          ctl: Controls, *, spec: LoopSpec, cache_len: int, width: int) -> DecodeState:
  """Prefills left-padded prompts `[B, P]` into a fresh cache of `cache_len` slots and emits
  generated token 0; `width` is the static size of the token buffer."""
  model = nnx.merge(graphdef, params)
  b, p = tokens.shape
  cache = init_cache(model.cfg, b, cache_len, model.rules)
  logits, cache = model(tokens, segment_ids, positions, cache=cache, last_only=True,
                        prefill=True)
  zeros = jnp.zeros((b,), jnp.int32)
  state = DecodeState(
      cache=cache, step=jnp.int32(0), last=zeros, tokens=jnp.zeros((b, width), jnp.int32),
      length=zeros, done=done, ended=jnp.zeros((b,), bool), phase=zeros, forced_at=zeros,
      marker_at=zeros - 1, hit=jnp.zeros((b,), bool), start=lengths, row_ids=row_ids,
      width=jnp.int32(p))
  return _emit(state, logits[:, 0], spec, ctl)


@functools.partial(jax.jit, static_argnames=("graphdef", "spec"), donate_argnames="state")
def run(graphdef, params, state: DecodeState, ctl: Controls, *, spec: LoopSpec) -> DecodeState:
  """Decodes until every row is done or `ctl.stop` tokens were generated (cache donated)."""
  model = nnx.merge(graphdef, params)

  def body(s: DecodeState) -> DecodeState:
    t = s.step - 1  # index of the token fed now
    ones = jnp.ones_like(s.last)[:, None]
    logits, cache = model(s.last[:, None], ones, (s.start + t)[:, None], cache=s.cache,
                          cache_index=s.width + t)
    return _emit(s._replace(cache=cache), logits[:, 0], spec, ctl)

  return jax.lax.while_loop(lambda s: (s.step < ctl.stop) & ~jnp.all(s.done), body, state)


def check_writes(prompt_width: int, stop: int, cache_len: int, width: int) -> None:
  """Host-side bound check before launching: token t < stop goes to buffer column t and its
  KV to cache slot prompt_width + t (the last token is never fed). `dynamic_update_slice`
  would clamp an index past the end and silently overwrite the last slots, so this must hold.
  """
  if stop > width or prompt_width + stop - 1 > cache_len:
    raise ValueError(f"decode of {stop} tokens after a prompt width of {prompt_width} does not "
                     f"fit the token buffer ({width}) and KV cache ({cache_len} slots)")


def fork(state: DecodeState) -> DecodeState:
  """A copy that the next `run` may consume while `state` lives on (the sweep's branch)."""
  return jax.tree.map(jnp.copy, state)
