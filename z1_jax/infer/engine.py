"""The decode engine: continuous batching over a fixed number of slots, per-request budgets.

Public API (`z1 serve`, `generate`, `sweep` and `z1 generate` run on it):

  engine = Engine(model, slots=8, max_seq_len=4096, tokenizer=tok)
  engine.warmup()                     # compiles every program (else they compile on first use)
  engine.submit(Request(id="a", prompt_ids=[...], thinking_budget=512, answer_tokens=64))
  while engine.has_work():
    for event in engine.step():       # one dispatch chunk: up to `chunk_steps` tokens per row
      ...                             # event.new_tokens, event.phase / trigger_at, event.finished
  engine.run([req, ...])              # convenience: every request to its Generation, in order

- Slots. The KV cache has `slots` rows of `max_seq_len` positions. A queued request enters a
  free slot at a chunk boundary: its prompt (all but the last token) is prefilled in a batch
  of admitted prompts (widths and counts bucketed to powers of two) and written into that
  slot's cache row; the last prompt token is fed by the decode step like any generated token,
  so admission needs no logits. Every live slot advances one token per step; a finished row
  frees its slot at the next chunk boundary.
- Per-row positions. A row's token at position p is written to its cache slot p: a per-row
  `dynamic_update_slice` (a scatter, in place in the donated cache: tested on the HLO). A
  scatter rather than paged blocks: one contiguous row per slot keeps the attention a plain
  dense read (XLA fuses the mask), and a slot's stale data needs no clearing because a
  newly admitted row resets its segment ids (segment 0 = invisible).
- Chunks. `steps` tokens per dispatch in one `lax.while_loop` (exits early when every row is
  done); the host syncs once per chunk, reading only small per-row arrays and the chunk's
  tokens. Compiled once per (slots, max_seq_len, sampling variant, chunk_steps); admission once
  per (count bucket, prompt-width bucket).
- The Shifted Thinking Window and s1 budget forcing are `infer.window` (one definition).
  A replace row's tokens from B-T on are streamed only once they are final (`window.committed`).
- Sampling: per-row temperature / top-k / top-p and keys from (seed, row_id, token index):
  a request's tokens do not depend on its neighbours, its slot or when it entered.
- Validation: `validate` / `submit` refuse a bad request with a `Z1Error` naming it and the
  field (ids outside the vocabulary, a budget not above the trigger length, limits < 1, a
  request that cannot fit `max_seq_len`, a duplicate id); other requests go on.

Events. `step()` returns one `Event` per request that produced tokens or finished in that
chunk: `new_tokens` (final tokens since the last event, `offset` the index of the first),
`phase` ("thinking" or "answer": the phase of new_tokens[0]; the trigger counts as answer),
`trigger_at` (index in new_tokens where the trigger / s1 marker starts, else None; the
trigger is `trigger_len` tokens and may continue into the next event), `finished` (the
`Generation` once done), `error` (a message, e.g. "cancelled").

Contract changes (extensions only, for the serve helper): `Request` also takes `row_id`
(sampling stream, default 0), `min_thinking` (s1); `Event` also has `offset` and
`trigger_len`; `Generation` has `id`, `finish_reason` (a property of `ended`) and `prompt_tokens`.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from z1_jax.errors import Z1Error
from z1_jax.infer import budget as budget_lib
from z1_jax.infer import window
from z1_jax.infer.sampling import Sampling, choose, row_keys, variant
from z1_jax.model.qwen2 import KVCache, Qwen2, init_cache


@dataclasses.dataclass(frozen=True)
class Request:
  """One generation request (see the module docstring)."""
  id: str | int
  prompt_ids: Sequence[int]
  thinking_budget: int | None = None  # B; None = plain generation of max_new_tokens
  answer_tokens: int | None = None  # A (required with a budget)
  max_new_tokens: int | None = None  # without a budget
  placement: str | None = None  # "replace" | "append" (default: replace for z1, append for s1)
  mode: str = "z1"  # "z1" | "s1"
  temperature: float = 0.0
  top_p: float | None = None
  top_k: int | None = None
  seed: int = 0
  row_id: int = 0  # the sampling stream: keys from (seed, row_id, token index)
  min_thinking: int = 0  # s1: an end before this many tokens becomes "Wait"


@dataclasses.dataclass(frozen=True)
class Generation:
  """One request's continuation.

  tokens: generated ids (the end id included when one was emitted; for a row that hit its
    budget: the window's kept tokens, the trigger and the answer).
  thinking_tokens: tokens before the trigger / s1 marker (all tokens without one: a row that
    ended inside its window).
  hit_budget: the trigger was placed because the budget ran out.
  answer_tokens: tokens after the trigger / marker (0 without one).
  ended: the row stopped at an end id (`finish_reason` "stop"), else at a length limit
    ("length").
  text: `tokens` decoded (a final end id left out) when a tokenizer is known.
  """
  tokens: list[int]
  thinking_tokens: int
  hit_budget: bool
  answer_tokens: int
  ended: bool
  text: str | None = None
  id: str | int | None = None
  prompt_tokens: int = 0

  @property
  def finish_reason(self) -> str:
    return "stop" if self.ended else "length"


@dataclasses.dataclass(frozen=True)
class Event:
  """What one request did in one chunk (see the module docstring)."""
  id: str | int
  new_tokens: list[int]
  offset: int
  phase: str  # "thinking" | "answer"
  trigger_at: int | None
  trigger_len: int
  finished: Generation | None = None
  error: str | None = None


def bucket(n: int, minimum: int = 16) -> int:
  """Padded size for `n`: powers of two up to 1024, then multiples of 1024."""
  n = max(n, minimum)
  return 1 << (n - 1).bit_length() if n <= 1024 else -(-n // 1024) * 1024


class DecodeState(NamedTuple):
  """The device state: the KV cache and the rows."""
  cache: KVCache
  rows: window.Rows


def _to_host(tree):
  """Small per-row arrays to numpy (every process gets the whole arrays)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    return multihost_utils.process_allgather(tree, tiled=True)
  return jax.device_get(tree)


# -- compiled programs -------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnames=("graphdef", "markers", "steps", "kind"),
                   donate_argnames="state")
def decode_chunk(graphdef, params, state: DecodeState, *, markers: window.Markers, steps: int,
                 kind: str):
  """Up to `steps` decode steps (every live row one token each); stops early when no row is
  live. Returns the state and the chunk's tokens and their indices `[slots, steps]` (-1: none).
  """
  model = nnx.merge(graphdef, params)
  b = state.rows.n.shape[0]

  def body(carry):
    i, s, toks, idx = carry
    rows = s.rows
    go = window.live(rows)
    ones = jnp.ones((b, 1), jnp.int32)
    logits, cache = model(rows.last[:, None], ones, rows.feed[:, None], cache=s.cache,
                          cache_index=rows.feed)
    keys = None if kind == "greedy" else row_keys(rows.seed, rows.row_id, rows.n)
    sampled = choose(logits[:, 0], rows.temperature, rows.top_k, rows.top_p, keys, kind)
    rows, at = window.advance(rows, sampled, go, markers)
    toks = jax.lax.dynamic_update_slice_in_dim(toks, rows.last[:, None], i, 1)
    idx = jax.lax.dynamic_update_slice_in_dim(idx, at[:, None], i, 1)
    return i + 1, DecodeState(cache, rows), toks, idx

  cond = lambda c: (c[0] < steps) & jnp.any(window.live(c[1].rows))
  init = (jnp.int32(0), state, jnp.zeros((b, steps), jnp.int32),
          jnp.full((b, steps), -1, jnp.int32))
  _, state, toks, idx = jax.lax.while_loop(cond, body, init)
  return state, toks, idx


@functools.partial(jax.jit, static_argnames=("graphdef",), donate_argnames="state")
def admit(graphdef, params, state: DecodeState, prompts, prefix_len, slot_ids,
          new_rows: window.Rows) -> DecodeState:
  """Writes admitted prompts into their slots: `prompts [n, P]` (all but each prompt's last
  token, right-padded; P may be 0), `prefix_len [n]` (their lengths), `slot_ids [n]` (a slot
  id >= slots drops a padding row), `new_rows` the rows' fresh state `[n]`."""
  model = nnx.merge(graphdef, params)
  n, p = prompts.shape
  cache = state.cache
  s = cache.segment_ids.shape[1]
  seg = (jnp.arange(p)[None] < prefix_len[:, None]).astype(jnp.int32)
  pos = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), (n, p))
  full = lambda x: jnp.zeros((n, s), jnp.int32).at[:, :p].set(x)
  put = lambda buf, x: buf.at[slot_ids].set(x, mode="drop")
  segment_ids, positions = put(cache.segment_ids, full(seg)), put(cache.positions, full(pos))
  k, v = cache.k, cache.v
  if p:
    small = init_cache(model.cfg, n, p, None, dtype=cache.k[0].dtype)
    _, small = model(prompts, seg, pos, cache=small, last_only=True, prefill=True)
    k = tuple(buf.at[slot_ids, :, :p].set(x, mode="drop") for buf, x in zip(k, small.k))
    v = tuple(buf.at[slot_ids, :, :p].set(x, mode="drop") for buf, x in zip(v, small.v))
  rows = jax.tree.map(put, state.rows, new_rows)
  return DecodeState(KVCache(k, v, segment_ids, positions), rows)


@functools.partial(jax.jit, donate_argnames="state")
def release(state: DecodeState, slot_ids) -> DecodeState:
  """Marks slots done (a cancelled request stops at once)."""
  rows = state.rows
  return state._replace(rows=rows._replace(done=rows.done.at[slot_ids].set(True, mode="drop")))


@functools.partial(jax.jit, donate_argnames="state")
def fork(state: DecodeState, src, dst, new_window, new_pause) -> DecodeState:
  """Copies slot `src`'s cache row and state into slot `dst` (its window set to
  `new_window`, no pause), and moves `src`'s pause to `new_pause`: the sweep's branch. One row
  of the cache is copied, not the whole cache."""
  cache, rows = state.cache, state.rows
  row = lambda buf: buf.at[dst].set(buf[src])
  cache = KVCache(tuple(map(row, cache.k)), tuple(map(row, cache.v)), row(cache.segment_ids),
                  row(cache.positions))
  rows = jax.tree.map(row, rows)
  rows = rows._replace(window=rows.window.at[dst].set(new_window),
                       pause_at=rows.pause_at.at[dst].set(window.NEVER).at[src].set(new_pause))
  return DecodeState(cache, rows)


def _rows_init(n: int) -> window.Rows:
  z = np.zeros((n,), np.int32)
  return window.Rows(
      last=z, feed=z, start=z, n=z, phase=z, forced_at=z, marker_at=z - 1,
      hit=np.zeros((n,), bool), ended=np.zeros((n,), bool), done=np.ones((n,), bool),
      pause_at=z + window.NEVER, window=z + window.NEVER, replace=np.zeros((n,), bool),
      stop=z, answer=z + window.NEVER, min_thinking=z, s1=np.zeros((n,), bool), seed=z,
      row_id=z, temperature=np.zeros((n,), np.float32), top_k=z,
      top_p=np.ones((n,), np.float32))


# -- host side ---------------------------------------------------------------------------------

@dataclasses.dataclass
class _Live:
  """A request in a slot, as the host tracks it."""
  req: Request
  sampling: Sampling
  tokens: list[int]
  streamed: int = 0
  key: object = None  # result key: the request id, or (id, budget) in a sweep
  forks: list[int] = dataclasses.field(default_factory=list)  # sweep: budgets still to branch


def _ids(where: str, ids, vocab: int) -> tuple[int, ...]:
  ids = tuple(int(i) for i in ids)
  bad = [i for i in ids if not 0 <= i < vocab]
  if bad:
    raise Z1Error(f"{where}: id {bad[0]} is outside the model's vocabulary [0, {vocab})")
  return ids


def _batch_multiple(model: Qwen2) -> int:
  """Slots must divide over the mesh axes the batch is sharded on."""
  rules = model.rules
  if rules is None:
    return 1
  axes = dict(rules.rules).get("batch", ())
  return math.prod(rules.mesh.shape[a] for a in axes)


def placement_of(req: Request) -> str:
  return req.placement or ("replace" if req.mode == "z1" else "append")


def _default_ids(kind: str, tokenizer, vocab: int) -> tuple[int, ...]:
  """Default marker ids; () when no tokenizer can make them or they fall outside the
  vocabulary (a request that needs them is then refused by `check_request`)."""
  try:
    ids = (budget_lib.wait_ids(tokenizer) if kind == "wait" else
           budget_lib.marker_ids(kind, None, None, tokenizer))
  except (OSError, ValueError, ImportError):  # no offline tokenizer
    return ()
  return ids if all(i < vocab for i in ids) else ()


def resolve_markers(vocab: int, tokenizer=None, eos_ids=None, trigger_ids=None,
                    s1_marker_ids=None, wait_ids=None) -> window.Markers:
  """End ids and forced sequences: given ones checked against the vocabulary, defaults from
  `tokenizer` (else the offline Qwen2.5 one) where they fit it."""
  if eos_ids is None:  # defaults a tiny test vocabulary cannot emit are left out
    eos = tuple(i for i in budget_lib.default_eos_ids(tokenizer) if i < vocab)
  else:
    eos = _ids("eos_ids", eos_ids, vocab)
  pick = lambda name, ids, kind: (_ids(name, ids, vocab) if ids is not None else
                                  _default_ids(kind, tokenizer, vocab))
  return window.Markers(eos, pick("trigger ids", trigger_ids, "z1"),
                        pick("s1 marker ids", s1_marker_ids, "s1"),
                        pick("wait_ids", wait_ids, "wait"))


def check_request(req: Request, cfg, markers: window.Markers, max_seq_len: int) -> Sampling:
  """`Engine.validate` without an engine (`z1 generate` checks before the model loads)."""
  try:
    return _check(req, cfg, markers, max_seq_len)
  except Z1Error as e:
    raise Z1Error(f"request {_short(req.id)}: {e}") from None


INT32_MAX = 2**31 - 1  # the device stores every integer control as int32
FLOAT32_MAX = float(np.finfo(np.float32).max)  # and temperature / top_p as float32


def _check(req: Request, cfg, markers: window.Markers, max_seq_len: int) -> Sampling:
  """Every field checked against what the engine does with it, before it reaches the device:
  integers against int32 (the rows' width), lengths against the model's positions and the
  cache, numbers against float32."""
  if isinstance(req.prompt_ids, (str, bytes)):
    raise Z1Error("prompt_ids is text: give token ids (tokenize it first)")
  prompt = list(req.prompt_ids)
  if not all(_is_int(x) for x in prompt):
    raise Z1Error("prompt_ids: expected a list of integer token ids")
  if not prompt:
    raise Z1Error("prompt_ids is empty: a prompt needs at least one token")
  bad = next((i for i in prompt if not 0 <= i < cfg.vocab_size), None)
  if bad is not None:
    raise Z1Error(f"prompt_ids: id {_short(bad)} is outside the model's vocabulary "
                  f"[0, {cfg.vocab_size})")
  positions = cfg.max_position_embeddings
  if len(prompt) > positions:
    raise Z1Error(f"prompt_ids: {len(prompt)} tokens are longer than the model's maximum of "
                  f"{positions} positions")
  if req.mode not in budget_lib.MODES:
    raise Z1Error(f"mode={req.mode!r}: expected one of {budget_lib.MODES}")
  for field in ("thinking_budget", "answer_tokens", "max_new_tokens"):
    value = getattr(req, field)
    if value is not None and (not _is_int(value) or value < 1):
      raise Z1Error(f"{field}={_short(value)}: expected an integer >= 1")
  if req.thinking_budget is None:
    if req.mode == "s1":
      raise Z1Error("mode='s1' needs a thinking_budget")
    if req.answer_tokens is not None or req.placement is not None:
      raise Z1Error("answer_tokens / placement apply with a thinking_budget only")
    if req.max_new_tokens is None:
      raise Z1Error("max_new_tokens is unset: pass it, or thinking_budget with answer_tokens")
    stop = int(req.max_new_tokens)
  else:
    if req.max_new_tokens is not None:
      raise Z1Error("pass max_new_tokens or thinking_budget with answer_tokens, not both")
    if req.answer_tokens is None:
      raise Z1Error("thinking_budget needs answer_tokens (the answer's length limit)")
    marker = (markers.z1_ids if req.mode == "z1" else markers.s1_ids)
    if not marker:
      raise Z1Error(f"no {'trigger' if req.mode == 'z1' else 's1 answer marker'} ids: pass "
                    "them (trigger_ids, --trigger-ids): no tokenizer makes them for this "
                    "vocabulary")
    plan = budget_lib.Budget(int(req.thinking_budget), int(req.answer_tokens), marker,
                             placement_of(req))  # the trigger-length check
    stop = plan.stop
  # the model's context first (it names the real limit; it also keeps every length, and the
  # sums of them the device computes, far inside int32)
  if len(prompt) + stop > positions:
    raise Z1Error(f"{len(prompt)} prompt tokens + up to {_short(stop)} generated exceed the "
                  f"model's {positions} positions (max_position_embeddings)")
  if len(prompt) + stop > max_seq_len:
    raise Z1Error(f"{len(prompt)} prompt tokens + up to {stop} generated do not fit the "
                  f"cache of {max_seq_len} positions (max_seq_len)")
  if not _is_int(req.min_thinking) or not 0 <= req.min_thinking <= INT32_MAX:
    raise Z1Error(f"min_thinking={_short(req.min_thinking)}: expected an integer in [0, 2**31)")
  if req.mode == "s1":
    if req.min_thinking and not markers.wait_ids:
      raise Z1Error("min_thinking needs wait ids (wait_ids, --wait-ids): this vocabulary has "
                    "no default \"Wait\"")
  elif req.min_thinking:
    raise Z1Error("min_thinking applies to mode='s1' only")
  for field in ("seed", "row_id"):
    value = getattr(req, field)
    if not _is_int(value) or not 0 <= value <= INT32_MAX:
      raise Z1Error(f"{field}={_short(value)}: expected an integer in [0, 2**31)")
  temperature = req.temperature
  if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.number)):
    raise Z1Error(f"temperature={_short(temperature)}: expected a number")
  if not -FLOAT32_MAX <= temperature <= FLOAT32_MAX:  # also nan; ints too large for a float
    raise Z1Error(f"temperature={_short(temperature)}: expected a finite number >= 0 that "
                  "float32 can hold")
  if req.top_k is not None and (not _is_int(req.top_k) or not 1 <= req.top_k <= INT32_MAX):
    raise Z1Error(f"top_k={_short(req.top_k)}: expected an integer in [1, 2**31)")
  if req.top_p is not None and (isinstance(req.top_p, bool) or
                                not isinstance(req.top_p, (int, float, np.number)) or
                                not 0 < req.top_p <= 1):
    raise Z1Error(f"top_p={_short(req.top_p)}: expected a number in (0, 1]")
  return Sampling(float(temperature), None if req.top_k is None else int(req.top_k),
                  None if req.top_p is None else float(req.top_p))


def _short(value) -> str:
  """`repr(value)`, cut: an integer of thousands of digits is not repeated whole."""
  if _is_int(value) and abs(value) >= 10**30:
    try:
      return f"an integer of {len(str(abs(int(value))))} digits"
    except ValueError:  # str() refuses integers past 4300 digits
      return "an integer of more than 4300 digits"
  text = repr(value)
  return text if len(text) <= 60 else text[:57] + "..."


def _is_int(value) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


class Engine:
  """Continuous-batching decoder over `slots` rows of `max_seq_len` positions (see the module
  docstring). `eos_ids` default to `<|im_end|>`/`<|endoftext|>` (those inside the
  vocabulary); `trigger_ids` to the Z1 trigger, `s1_marker_ids` / `wait_ids` to the s1 answer
  marker and "Wait", tokenized with `tokenizer` (else the offline Qwen2.5 tokenizer)."""

  def __init__(self, model: Qwen2, *, slots: int, max_seq_len: int, tokenizer=None,
               eos_ids: Sequence[int] | None = None, trigger_ids: Sequence[int] | None = None,
               chunk_steps: int = 16, s1_marker_ids: Sequence[int] | None = None,
               wait_ids: Sequence[int] | None = None):
    if not isinstance(model, Qwen2):
      raise Z1Error(f"model: expected a z1_jax Qwen2 model, got {type(model).__name__}")
    for name, value in (("slots", slots), ("max_seq_len", max_seq_len),
                        ("chunk_steps", chunk_steps)):
      if isinstance(value, bool) or int(value) != value or value < 1:
        raise Z1Error(f"{name}={value}: expected an integer >= 1")
    multiple = self._multiple = _batch_multiple(model)
    if slots % multiple:
      raise Z1Error(f"slots={slots}: must be a multiple of {multiple}, the mesh's batch split")
    cfg = model.cfg
    self.cfg, self.tokenizer = cfg, tokenizer
    self.slots, self.max_seq_len, self.chunk_steps = int(slots), int(max_seq_len), chunk_steps
    self.markers = resolve_markers(cfg.vocab_size, tokenizer, eos_ids, trigger_ids,
                                   s1_marker_ids, wait_ids)
    from z1_jax.infer.generate import unrolled
    self.model = unrolled(model)
    self.graphdef, self.params = nnx.split(self.model)
    cache = init_cache(cfg, self.slots, self.max_seq_len, self.model.rules)
    self._state = DecodeState(cache, jax.tree.map(jnp.asarray, _rows_init(self.slots)))
    self._queue: collections.deque[tuple[Request, Sampling, object, list[int]]] = (
        collections.deque())
    self._slot: list[_Live | None] = [None] * self.slots
    self._ids: set = set()
    self._cancel: set = set()

  # -- requests ---------------------------------------------------------------------------------
  def trigger_ids(self, mode: str = "z1") -> tuple[int, ...]:
    return self.markers.z1_ids if mode == "z1" else self.markers.s1_ids

  def validate(self, req: Request) -> Sampling:
    """Checks `req`; raises `Z1Error` naming the request and the field. Returns its sampling."""
    return check_request(req, self.cfg, self.markers, self.max_seq_len)

  def placement(self, req: Request) -> str:
    return placement_of(req)

  def submit(self, req: Request, *, _key=None, _forks=()) -> None:
    """Validates and queues `req` (never blocks on decoding)."""
    sampling = self.validate(req)
    key = req.id if _key is None else _key
    if key in self._ids:
      raise Z1Error(f"request {req.id!r}: the id is already queued or running")
    self._ids.add(key)
    self._queue.append((req, sampling, key, list(_forks)))

  def cancel(self, id) -> None:
    """Drops a queued request, or frees a running one's slot at the next chunk boundary."""
    if id in self._ids:
      self._cancel.add(id)

  def has_work(self) -> bool:
    return bool(self._queue) or any(s is not None for s in self._slot)

  def stats(self) -> dict:
    active = sum(s is not None for s in self._slot)
    return {"slots": self.slots, "active": active, "queued": len(self._queue),
            "max_seq_len": self.max_seq_len, "chunk_steps": self.chunk_steps}

  # -- compiled programs, host side -------------------------------------------------------------
  def warmup(self) -> None:
    """Compiles every program this engine can dispatch (decode variants, admission buckets)."""
    # the cache's mesh sharding; the small row state is uncommitted (placed where jit puts it,
    # as in `step`): naming its one device here would clash with a mesh spanning processes
    state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
        x.shape, x.dtype, sharding=x.sharding if x.committed else None), self._state)
    for kind in ("greedy", "sample", "filter"):
      decode_chunk.lower(self.graphdef, self.params, state, markers=self.markers,
                         steps=self.chunk_steps, kind=kind).compile()
    counts = sorted({-(-min(1 << k, self.slots) // self._multiple) * self._multiple
                     for k in range(self.slots.bit_length() + 1)})
    for n in counts:
      for p in self._widths():
        self._admit_lowered(state, n, p).compile()

  def _widths(self):
    p, out = 0, []
    while p < self.max_seq_len - 1:
      out.append(p)
      p = bucket(p + 1)
    return [min(w, self.max_seq_len) for w in out]

  def _admit_lowered(self, state, n, p):
    i32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.int32)
    rows = jax.tree.map(lambda x: jax.ShapeDtypeStruct((n,), x.dtype), _rows_init(1))
    return admit.lower(self.graphdef, self.params, state, i32(n, p), i32(n), i32(n), rows)

  def _admit(self, entries: list[tuple[int, Request, Sampling, int]]) -> None:
    count = len(entries)
    n = min(1 << (count - 1).bit_length(), self.slots) if count > 1 else 1
    n = max(n, count)
    n = -(-n // self._multiple) * self._multiple  # the prefill batch splits over the mesh too
    longest = max(len(r.prompt_ids) - 1 for _, r, _, _ in entries)
    p = 0 if longest == 0 else min(bucket(longest), self.max_seq_len)
    prompts = np.zeros((n, p), np.int32)
    prefix = np.zeros((n,), np.int32)
    slot_ids = np.full((n,), self.slots, np.int32)  # padding rows are dropped
    rows = _rows_init(n)
    rows = {f: v.copy() for f, v in rows._asdict().items()}
    for j, (slot, req, sampling, pause) in enumerate(entries):
      ids = [int(x) for x in req.prompt_ids]
      prompts[j, :len(ids) - 1] = ids[:-1]
      prefix[j], slot_ids[j] = len(ids) - 1, slot
      budgeted = req.thinking_budget is not None
      t = len(self.trigger_ids(req.mode)) if budgeted else 0
      placement = self.placement(req) if budgeted else None
      values = dict(
          last=ids[-1], feed=len(ids) - 1, start=len(ids), n=0, phase=window.THINK,
          forced_at=0, marker_at=-1, hit=False, ended=False, done=False,
          pause_at=pause, window=req.thinking_budget if budgeted else window.NEVER,
          replace=placement == "replace",
          stop=window.stop_for(req.thinking_budget, req.answer_tokens, t, placement,
                               req.max_new_tokens),
          answer=req.answer_tokens if budgeted else window.NEVER, min_thinking=req.min_thinking,
          s1=req.mode == "s1", seed=req.seed, row_id=req.row_id,
          temperature=sampling.temperature, top_k=sampling.top_k or 0,
          top_p=1.0 if sampling.top_p is None else sampling.top_p)
      for f, v in values.items():
        rows[f][j] = v
    self._state = admit(self.graphdef, self.params, self._state, prompts, prefix, slot_ids,
                        window.Rows(**rows))

  # -- stepping -----------------------------------------------------------------------------------
  def step(self) -> list[Event]:
    """One dispatch chunk: cancels, admits queued requests into free slots, decodes up to
    `chunk_steps` tokens per live row, and reports what happened."""
    events = self._cancels()
    self._fork_paused()
    entries = []
    for slot in range(self.slots):
      if self._slot[slot] is None and self._queue:
        req, sampling, key, forks = self._queue.popleft()
        self._slot[slot] = _Live(req, sampling, [], key=key, forks=forks)
        entries.append((slot, req, sampling, forks[0] if forks else window.NEVER))
    if entries:
      self._admit(entries)
    live = [s for s in self._slot if s is not None]
    if not live:
      return events
    kind = variant(s.sampling for s in live)
    self._state, toks, idx = decode_chunk(self.graphdef, self.params, self._state,
                                          markers=self.markers, steps=self.chunk_steps,
                                          kind=kind)
    r = self._state.rows
    toks, idx, done, ended, hit, phase, marker_at, n = _to_host(
        (toks, idx, r.done, r.ended, r.hit, r.phase, r.marker_at, r.n))
    for slot, live_row in enumerate(self._slot):
      if live_row is None:
        continue
      for tok, at in zip(toks[slot], idx[slot]):
        if at >= 0:
          del live_row.tokens[at:]
          live_row.tokens.append(int(tok))
      if len(live_row.tokens) != n[slot]:
        raise AssertionError(f"slot {slot}: host has {len(live_row.tokens)} tokens, device "
                             f"{n[slot]}")
      ev = self._event(slot, live_row, bool(done[slot]), bool(ended[slot]), bool(hit[slot]),
                       int(phase[slot]), int(marker_at[slot]))
      if ev is not None:
        events.append(ev)
    return events

  def _event(self, slot, row: _Live, done, ended, hit, phase, marker_at) -> Event | None:
    req = row.req
    budgeted = req.thinking_budget is not None
    t = len(self.trigger_ids(req.mode)) if budgeted else 0
    thinking = phase in (window.THINK, window.WAIT)
    bound = window.committed(len(row.tokens), done, thinking,
                             row.req.thinking_budget if budgeted else window.NEVER,
                             budgeted and self.placement(req) == "replace", t)
    new = row.tokens[row.streamed:bound]
    offset = row.streamed
    row.streamed = max(bound, row.streamed)
    finished = self._generation(row, ended, hit, marker_at, t) if done else None
    if done:
      self._slot[slot] = None
      self._ids.discard(row.key)
    if not new and finished is None:
      return None
    in_answer = marker_at >= 0 and offset >= marker_at
    trigger_at = marker_at - offset if marker_at >= 0 and offset <= marker_at < bound else None
    return Event(row.key, new, offset, "answer" if in_answer else "thinking", trigger_at, t,
                 finished)

  def _generation(self, row: _Live, ended, hit, marker_at, t) -> Generation:
    ids = list(row.tokens)
    if marker_at >= 0:
      thinking, answer = marker_at, len(ids) - marker_at - t
    else:
      thinking, answer = len(ids), 0
    text = None
    if self.tokenizer is not None:
      body = ids[:-1] if ended and ids and ids[-1] in self.markers.eos_ids else ids
      text = self.tokenizer.decode(body)
    return Generation(ids, thinking, bool(hit), max(answer, 0), bool(ended), text, row.req.id,
                      len(row.req.prompt_ids))

  def _cancels(self) -> list[Event]:
    events, slots = [], []
    if not self._cancel:
      return events
    kept = collections.deque()
    for entry in self._queue:
      if entry[2] in self._cancel:
        events.append(Event(entry[2], [], 0, "thinking", None, 0, None, "cancelled"))
        self._ids.discard(entry[2])
      else:
        kept.append(entry)
    self._queue = kept
    for slot, row in enumerate(self._slot):
      if row is not None and row.key in self._cancel:
        slots.append(slot)
        events.append(Event(row.key, [], row.streamed, "thinking", None, 0, None, "cancelled"))
        self._ids.discard(row.key)
        self._slot[slot] = None
    if slots:
      self._state = release(self._state, np.asarray(slots, np.int32))
    self._cancel.clear()
    return events

  def _fork_paused(self) -> None:
    """Sweep: a trunk row paused at a budget point gets its branch in a free slot."""
    if not any(s is not None and s.forks for s in self._slot):
      return
    r = self._state.rows
    done, phase, n, pause = _to_host((r.done, r.phase, r.n, r.pause_at))
    for src, row in enumerate(self._slot):
      if row is None or not row.forks or done[src]:
        continue
      thinking = phase[src] in (window.THINK, window.WAIT)
      if not (thinking and n[src] == pause[src]):
        continue
      free = [s for s in range(self.slots) if self._slot[s] is None]
      if not free:
        return  # waits for a branch to finish
      dst, budget = free[0], row.forks.pop(0)
      nxt = row.forks[0] if row.forks else window.NEVER
      self._state = fork(self._state, np.int32(src), np.int32(dst), np.int32(budget),
                         np.int32(nxt))
      req = dataclasses.replace(row.req, thinking_budget=budget)
      key = (row.key[0], budget)
      self._ids.add(key)
      self._slot[dst] = _Live(req, row.sampling, list(row.tokens), row.streamed, key)

  # -- convenience ---------------------------------------------------------------------------------
  def run(self, requests: Sequence[Request], progress=None) -> list[Generation]:
    """Submits every request, steps until all are done; their Generations in input order.
    `progress(n)` is called with the number finished in each chunk."""
    requests = list(requests)
    for req in requests:
      self.validate(req)
    for req in requests:
      self.submit(req)
    out = {}
    while self.has_work():
      finished = [e.finished for e in self.step() if e.finished is not None]
      for g in finished:
        out[g.id] = g
      if progress is not None and finished:
        progress(len(finished))
    return [out[r.id] for r in requests]

  def sweep(self, requests: Sequence[Request], budgets: Sequence[int],
            progress=None) -> dict[int, list[Generation]]:
    """Every request at every budget in `budgets` (requests carry `answer_tokens`; their own
    `thinking_budget` is ignored), decoding each request's shared trunk once: the trunk runs
    with the largest budget and pauses, still thinking, at each smaller one, where its branch
    (that row's cache and state) is forked into a free slot. A row that ended earlier needs no
    branch. Equal token for token to separate runs at each budget."""
    budgets = sorted({int(b) for b in budgets})
    requests = list(requests)
    trunks = [dataclasses.replace(r, thinking_budget=budgets[-1]) for r in requests]
    for req in trunks:
      for b in budgets:
        self.validate(dataclasses.replace(req, thinking_budget=b))
    if self.slots < 2 and len(budgets) > 1:  # no room for a branch: one run per budget
      return {b: self.run([dataclasses.replace(r, thinking_budget=b) for r in requests],
                          progress) for b in budgets}
    pending = collections.deque(trunks)
    results: dict[tuple, Generation] = {}
    while pending or self.has_work():
      # trunks take at most slots - 1 slots, so a branch always finds one eventually
      trunks = sum(1 for s in self._slot if s is not None and s.key[1] == budgets[-1])
      trunks += len(self._queue)
      while pending and (trunks < self.slots - 1 or len(budgets) == 1):
        req = pending.popleft()
        self.submit(req, _key=(req.id, budgets[-1]), _forks=budgets[:-1])
        trunks += 1
      for e in self.step():
        if e.finished is not None:
          results[e.id] = e.finished
          if progress is not None:
            progress(1)
    # no branch at a budget: the trunk had ended (or answered, s1) before it, so the trunk's
    # result is that budget's result
    return {b: [results.get((r.id, b), results[(r.id, budgets[-1])]) for r in requests]
            for b in budgets}
