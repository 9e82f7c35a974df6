"""The engine's host loop: requests in, events out, the device programs (`programs.py`)
driven chunk by chunk over a paged KV cache (`pages.py`, `scheduler.py`)."""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from z1_jax.errors import Z1Error
from z1_jax.infer import window
from z1_jax.infer.engine import programs
from z1_jax.infer.engine.programs import DecodeState, rows_init
from z1_jax.infer.engine.requests import (Event, Generation, Request, check_request,
                                          placement_of, resolve_markers, stop_of)
from z1_jax.infer.engine.scheduler import Scheduler, Seq, pages_for
from z1_jax.infer.sampling import variant
from z1_jax.model.qwen2 import Qwen2, init_pools

_COMPILED: dict = {}  # (engine signature, program key) -> executable, for this process
CPU_POOL_TOKENS = 65_536  # default pool on CPU (per engine), at most slots x max_seq_len
DEVICE_MEMORY_SHARE = 0.9  # default pool on TPU/GPU: this share of free memory after weights


def _to_host(tree):
  """Device arrays to numpy. Arrays spread over several processes (an engine on a pod mesh)
  are gathered so every process gets the whole arrays; arrays this process holds whole (an
  engine on its own devices, one per host) are read locally, with no collective."""
  leaves, treedef = jax.tree.flatten(tree)
  if jax.process_count() > 1 and not all(x.is_fully_addressable for x in leaves):
    from jax.experimental import multihost_utils
    return multihost_utils.process_allgather(tree, tiled=True)
  return jax.tree.unflatten(treedef, jax.device_get(leaves))


def batch_shards(model: Qwen2) -> int:
  """The mesh axes the batch is split over (slots and pages divide over them)."""
  rules = model.rules
  if rules is None:
    return 1
  axes = dict(rules.rules).get("batch", ())
  return math.prod(rules.mesh.shape[a] for a in axes)


def _platform(model: Qwen2) -> str:
  rules = model.rules
  return rules.mesh.devices.flat[0].platform if rules is not None else jax.default_backend()


def default_page_size(platform: str) -> int:
  """16 tokens on CPU and GPU (the XLA path gathers pages; small pages waste little); 128 on
  TPU (the kernel issues one DMA per page)."""
  return 128 if platform == "tpu" else 16


def kv_bytes_per_token(cfg, model: Qwen2) -> int:
  """KV cache bytes one token takes on one device (its share of the KV heads)."""
  rules = model.rules
  tensor = 1
  if rules is not None:
    axes = dict(rules.rules).get("act_kv_heads", ())
    tensor = math.prod(rules.mesh.shape[a] for a in axes)
  per_device_heads = max(cfg.num_kv_heads // tensor, 1)
  return cfg.num_layers * 2 * per_device_heads * cfg.dim_per_head * jnp.dtype(cfg.dtype).itemsize


def default_pool_tokens(cfg, model: Qwen2, slots: int, max_seq_len: int, shards: int) -> int:
  """The pool when `max_total_tokens` is not given: on TPU/GPU `DEVICE_MEMORY_SHARE` of the
  memory left free after the weights (vLLM's gpu_memory_utilization idea); on CPU
  `CPU_POOL_TOKENS`. Never more than `slots x max_seq_len` (a dense cache's size), never less
  than one `max_seq_len` request per shard."""
  dense = slots * max_seq_len
  floor = shards * max_seq_len
  tokens = min(CPU_POOL_TOKENS, dense)
  if _platform(model) != "cpu":
    device = (model.rules.mesh.devices.flat[0] if model.rules is not None else
              jax.local_devices()[0])
    stats = device.memory_stats() or {}
    if "bytes_limit" in stats:
      free = stats["bytes_limit"] - stats.get("bytes_in_use", 0)
      tokens = int(free * DEVICE_MEMORY_SHARE) // kv_bytes_per_token(cfg, model) * shards
      tokens = min(tokens, dense)
  return max(tokens, floor)


class Engine:
  """Continuous batching over `slots` rows and a paged KV cache (see `infer.engine`)."""

  def __init__(self, model: Qwen2, *, slots: int, max_seq_len: int, tokenizer=None,
               eos_ids: Sequence[int] | None = None, trigger_ids: Sequence[int] | None = None,
               chunk_steps: int = 16, s1_marker_ids: Sequence[int] | None = None,
               wait_ids: Sequence[int] | None = None, page_size: int | None = None,
               max_total_tokens: int | None = None, prefill_tokens: int = 512):
    if not isinstance(model, Qwen2):
      raise Z1Error(f"model: expected a z1_jax Qwen2 model, got {type(model).__name__}")
    for name, value in (("slots", slots), ("max_seq_len", max_seq_len),
                        ("chunk_steps", chunk_steps), ("page_size", page_size),
                        ("max_total_tokens", max_total_tokens),
                        ("prefill_tokens", prefill_tokens)):
      if value is not None and (isinstance(value, bool) or int(value) != value or value < 1):
        raise Z1Error(f"{name}={value}: expected an integer >= 1")
    shards = self.shards = batch_shards(model)
    if slots % shards:
      raise Z1Error(f"slots={slots}: must be a multiple of {shards}, the mesh's batch split")
    cfg = model.cfg
    if max_seq_len > cfg.max_position_embeddings:
      raise Z1Error(f"max_seq_len={max_seq_len} exceeds the model's {cfg.max_position_embeddings}"
                    " positions (max_position_embeddings)")
    if prefill_tokens & (prefill_tokens - 1) or prefill_tokens < 16 * shards:
      raise Z1Error(f"prefill_tokens={prefill_tokens}: expected a power of two >= "
                    f"{16 * shards} (16 per batch shard)")
    self.cfg, self.tokenizer = cfg, tokenizer
    self.slots, self.max_seq_len, self.chunk_steps = int(slots), int(max_seq_len), chunk_steps
    self.prefill_tokens = int(prefill_tokens)
    self.markers = resolve_markers(cfg.vocab_size, tokenizer, eos_ids, trigger_ids,
                                   s1_marker_ids, wait_ids)
    from z1_jax.infer.load import unrolled
    self.model = unrolled(model)
    self.graphdef, self.params = nnx.split(self.model)
    self.page_size = int(page_size or default_page_size(_platform(model)))
    if max_total_tokens is None:
      max_total_tokens = default_pool_tokens(cfg, self.model, self.slots, self.max_seq_len,
                                             shards)
    per_shard = pages_for(-(-int(max_total_tokens) // shards), self.page_size)
    self.max_total_tokens = per_shard * self.page_size * shards
    if pages_for(max_seq_len, self.page_size) > per_shard:
      raise Z1Error(f"max_total_tokens={max_total_tokens}: the pool holds "
                    f"{per_shard * self.page_size} tokens per batch shard, less than one "
                    f"request of max_seq_len={max_seq_len}; raise it or lower max_seq_len")
    self.table_width = pages_for(self.max_seq_len + self.prefill_tokens, self.page_size)
    pools = init_pools(cfg, shards * (per_shard + 1), self.page_size, self.model.rules)
    self._row_shardings = programs.rows_shardings(self.model.rules)
    self._state = DecodeState(pools, self._device_rows(rows_init(self.slots)))
    self._rows = {f: np.array(v) for f, v in rows_init(self.slots)._asdict().items()}
    self.sched = Scheduler(
        slots=self.slots, shards=shards, pages_per_shard=per_shard, page_size=self.page_size,
        table_width=self.table_width, chunk_steps=chunk_steps,
        prefill_tokens=self.prefill_tokens, rows=self._rows, fresh_state=self._fresh_state,
        trigger_len=lambda mode: len(self.trigger_ids(mode)))
    self._ids: set = set()
    self._cancel: set = set()
    self._signature = self._program_signature()
    self._in_flight = None  # a dispatched decode chunk not yet read (see `step`)
    self.decode_chunks = 0  # dispatches
    self.decode_steps = 0  # device decode steps (loop iterations that placed a token)
    self._arrivals = 0

  # -- requests ---------------------------------------------------------------------------------
  def trigger_ids(self, mode: str = "z1") -> tuple[int, ...]:
    return self.markers.z1_ids if mode == "z1" else self.markers.s1_ids

  def validate(self, req: Request):
    """Checks `req`; raises `Z1Error` naming the request and the field. Returns its sampling."""
    return check_request(req, self.cfg, self.markers, self.max_seq_len, self.tokenizer)

  def placement(self, req: Request) -> str:
    return placement_of(req)

  def submit(self, req: Request, *, _key=None, _forks=()) -> None:
    """Validates and queues `req` (never blocks on decoding)."""
    sampling = self.validate(req)
    key = req.id if _key is None else _key
    if key in self._ids:
      raise Z1Error(f"request {req.id!r}: the id is already queued or running")
    self._ids.add(key)
    seq = Seq(req, sampling, key, self._arrivals, forks=list(_forks))
    self._arrivals += 1
    if req.logprobs is not None:
      seq.logprobs, seq.top_logprobs = [], []
    if req.prompt_logprobs is not None:
      seq.prompt_logprobs, seq.prompt_top_logprobs = [None], [[]]
    self.sched.waiting.append(seq)

  def cancel(self, id) -> None:
    """Drops a queued request, or frees a running one's slot at the next chunk boundary."""
    if id in self._ids:
      self._cancel.add(id)

  def has_work(self) -> bool:
    return bool(self.sched.queued() or self.sched.running())

  @property
  def preemptions(self) -> int:
    return self.sched.preemptions

  def stats(self) -> dict:
    pools = self.sched.pools
    looked = sum(p.lookup_tokens for p in pools)
    return {"slots": self.slots, "active": len(self.sched.running()),
            "decode_chunks": self.decode_chunks, "decode_steps": self.decode_steps,
            "queued": self.sched.queued(),
            "max_seq_len": self.max_seq_len, "chunk_steps": self.chunk_steps,
            "page_size": self.page_size, "max_total_tokens": self.max_total_tokens,
            "pages_total": sum(p.capacity for p in pools),
            "pages_used": sum(p.used() for p in pools),
            "pages_free": sum(p.available() for p in pools),
            "pages_cached": sum(len(p.by_digest) for p in pools),
            "preemptions": self.sched.preemptions,
            "prefix_cache_query_tokens": looked,
            "prefix_cache_hit_tokens": sum(p.hit_tokens for p in pools),
            "prefix_cache_hit_rate": (sum(p.hit_tokens for p in pools) / looked) if looked else 0.0}

  # -- compiled programs ------------------------------------------------------------------------
  def warmup(self) -> None:
    """Compiles every program this engine can dispatch: each decode variant (sampling kind x
    log-probabilities), each prefill shape (and the scoring variant), row writes, releases and
    page copies. The engine keeps the executables and calls them, so after this serving any
    admissible request compiles nothing (without it, each compiles on first use)."""
    for kind in ("greedy", "sample", "filter"):
      for logprobs in (False, True):
        self._decode_exe(kind, logprobs)
    for r, w in self.sched.shapes:
      self._prefill_exe(r, w, False)
    for r, w in self.sched.score_shapes:
      self._prefill_exe(r, w, True)
    for name in ("install", "release", "copy"):
      self._small_exe(name)

  def _exe(self, key, lower):
    """The executable for `key`, compiled (from `lower()`) on first use and kept for every
    engine of the same signature (`_COMPILED`)."""
    exe = _COMPILED.get((self._signature, key))
    if exe is None:
      exe = _COMPILED[(self._signature, key)] = lower().compile()
    return exe

  @property
  def programs(self) -> list:
    """The compiled programs this engine has (by its own keys)."""
    return [key for sig, key in _COMPILED if sig == self._signature]

  def _program_signature(self) -> tuple:
    """What every program of this engine depends on: the model's structure, its parameters'
    and the state's shapes, dtypes and shardings, the markers and the step sizes. Engines
    equal in all of it share their executables (`generate` and `sweep` build a new engine per
    call; a server rebuilds its engine after a failed step)."""
    spec = lambda tree: tuple((x.shape, str(x.dtype), x.sharding) for x in jax.tree.leaves(tree))
    return (self.graphdef, spec(self.params), spec(self._state), self.markers, self.chunk_steps,
            self.table_width, self._row_shardings)

  def _device_rows(self, rows: window.Rows) -> window.Rows:
    """Host rows as device arrays in the rows' layout (every process passes the same values)."""
    sh = self._row_shardings
    if sh is None:
      return jax.tree.map(jnp.asarray, rows)
    out = jax.tree.map(lambda x: sh[0] if x.ndim == 1 else sh[1], rows)
    return jax.jit(lambda r: r, out_shardings=out)(rows)

  def _abstract_state(self):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                        self._state)

  def _decode_exe(self, kind: str, logprobs: bool):
    i32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.int32)
    return self._exe(("decode", kind, logprobs), lambda: programs.decode_chunk.lower(
        self.graphdef, self.params, self._abstract_state(), i32(self.slots, self.table_width),
        jax.ShapeDtypeStruct((), jnp.bool_), markers=self.markers, steps=self.chunk_steps,
        kind=kind, logprobs=logprobs, shardings=self._row_shardings))

  def _prefill_exe(self, r: int, w: int, logprobs: bool):
    i32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.int32)
    return self._exe(("prefill", r, w, logprobs), lambda: programs.prefill.lower(
        self.graphdef, self.params, self._abstract_state(), i32(r, w), i32(r, w),
        i32(r, self.table_width), i32(r), jax.ShapeDtypeStruct((r, w), jnp.bool_), i32(r, w),
        logprobs=logprobs))

  def _small_exe(self, name: str):
    i32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.int32)
    state = self._abstract_state
    if name == "install":
      rows = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                          rows_init(self.slots))
      return self._exe(name, lambda: programs.install_rows.lower(
          state(), i32(self.slots), rows, shardings=self._row_shardings))
    if name == "release":
      return self._exe(name, lambda: programs.release.lower(
          state(), i32(self.slots), shardings=self._row_shardings))
    m = self._copy_width()
    return self._exe(name, lambda: programs.copy_pages.lower(
        state(), i32(self.shards, m), i32(self.shards, m), rules=self.model.rules))

  def _copy_width(self) -> int:
    return max(1, self.slots // self.shards)

  def _flush(self) -> None:
    """Sends pending row writes and releases to the device."""
    sched = self.sched
    # releases first: a slot freed this step (a stop string, a cancel) may already hold the
    # next row, whose install must not be marked done after it
    if sched.releases:
      slot_ids = np.full((self.slots,), self.slots, np.int32)
      slot_ids[:len(sched.releases)] = sched.releases
      self._state = self._small_exe("release")(self._state, slot_ids)
      for slot in sched.releases:
        self._rows["done"][slot] = True
      sched.releases.clear()
    if sched.installs:
      slot_ids = np.full((self.slots,), self.slots, np.int32)  # padding is dropped
      rows = {f: v.copy() for f, v in rows_init(self.slots)._asdict().items()}
      for j, (slot, values) in enumerate(sorted(sched.installs.items())):
        slot_ids[j] = slot
        for f, v in values.items():
          rows[f][j] = v
          self._rows[f][slot] = v
      self._state = self._small_exe("install")(self._state, slot_ids, window.Rows(**rows))
      sched.installs.clear()

  def _fresh_state(self, seq: Seq) -> dict:
    req, sampling = seq.req, seq.sampling
    ids = [int(x) for x in req.prompt_ids]
    budgeted = req.thinking_budget is not None
    placement = self.placement(req) if budgeted else None
    stop_ids = np.full(self._rows["stop_ids"].shape[1], -1, np.int32)
    stop_ids[:len(req.stop_token_ids)] = req.stop_token_ids
    return dict(
        last=ids[-1], feed=len(ids) - 1, start=len(ids), n=0, phase=window.THINK, forced_at=0,
        marker_at=-1, hit=False, ended=False, done=False,
        pause_at=seq.forks[0] if seq.forks else window.NEVER,
        window=req.thinking_budget if budgeted else window.NEVER,
        replace=placement == "replace", stop=stop_of(req, self.markers),
        answer=req.answer_tokens if budgeted else window.NEVER, min_thinking=req.min_thinking,
        s1=req.mode == "s1", seed=req.seed, row_id=req.row_id,
        temperature=sampling.temperature, top_k=sampling.top_k or 0,
        top_p=1.0 if sampling.top_p is None else sampling.top_p, ignore_eos=bool(req.ignore_eos),
        min_tokens=req.min_tokens, stop_ids=stop_ids, rewind_token=0)

  # -- stepping ---------------------------------------------------------------------------------
  def step(self) -> list[Event]:
    """One dispatch: cancels, sweep branches, admission, a prefill chunk, page growth (and
    preemption), then up to `chunk_steps` decode steps; returns what happened.

    Pipelining: while the engine only decodes (nothing queued, prefilling, forking or
    cancelled), the next chunk is dispatched before the previous one is read (JAX dispatches
    asynchronously), so the device does not wait for the host; rows then hold pages for two
    chunks ahead, and events arrive one step later. Anything else to do first reads the
    chunk in flight and steps as usual."""
    events = self._cancels()
    sched = self.sched
    if self._in_flight is not None and not self._steady():
      events += self._read(self._in_flight)
      self._in_flight = None
    if self._in_flight is not None and not sched.grow(chunks=2, may_preempt=False):
      events += self._read(self._in_flight)  # a preempted row's state must be current
      self._in_flight = None
    if self._in_flight is not None:
      self._flush()
      out = self._dispatch() if sched.running() else None
      events += self._read(self._in_flight)
      self._in_flight = out
    else:
      self._fork_paused()
      sched.admit()
      events += self._prefill()
      steady = self._steady()
      sched.grow(chunks=2 if steady else 1)
      self._flush()
      if sched.decoding():
        out = self._dispatch()
        if steady and self._steady():
          self._in_flight = out
        else:
          events += self._read(out)
    return events

  def _steady(self) -> bool:
    """Only decoding to do: the next chunk may go before the last one is read."""
    return not self._cancel and self.sched.steady()

  def _prefill(self) -> list[Event]:
    """Dispatches this step's prefill chunk (`Scheduler.prefill_batch`)."""
    batch = self.sched.prefill_batch()
    if batch is None:
      return []
    self._flush()
    r, w = batch.tokens.shape
    out = self._prefill_exe(r, w, batch.scoring)(
        self.params, self._state, batch.tokens, batch.positions, batch.pages, batch.lengths,
        batch.valid, batch.targets)
    if batch.scoring:
      self._state, lp, top_ids, top_lp = out
      lp, top_ids, top_lp = _to_host((lp, top_ids, top_lp))
      for i, seq, c in batch.rows:
        k = seq.req.prompt_logprobs
        for j in range(min(c, len(seq.req.prompt_ids) - len(seq.prompt_logprobs))):
          seq.prompt_logprobs.append(float(lp[i, j]))
          seq.prompt_top_logprobs.append(
              [(int(t), float(v)) for t, v in zip(top_ids[i, j, :k], top_lp[i, j, :k])])
    else:
      self._state = out
    events = []
    for seq in self.sched.prefilled(batch):
      if seq.req.max_new_tokens == 0:  # scoring only: nothing to generate
        events.append(self._finish(seq, ended=False, hit=False, marker_at=-1))
      else:
        self.sched.installs[seq.slot] = dict(seq.state)
    return events

  def _fork_paused(self) -> None:
    """Sweep: trunks paused at a budget leave their branches (`Scheduler.fork_paused`); the
    copies of their partial pages are made at once."""
    branches, copies = self.sched.fork_paused()
    self._ids.update(b.key for b in branches)
    if any(copies):
      m = self._copy_width()
      src = np.zeros((self.shards, m), np.int32)
      dst = np.full((self.shards, m), programs.DROP, np.int32)
      for d, pairs in enumerate(copies):
        for j, (a, b) in enumerate(pairs):
          src[d, j], dst[d, j] = a, b
      self._flush()
      self._state = self._small_exe("copy")(self._state, src, dst)

  def _dispatch(self):
    """Dispatches one decode chunk over the decoding rows; returns its (unread) outputs."""
    live = self.sched.decoding()
    kind = variant(s.sampling for s in live)
    logprobs = any(s.req.logprobs is not None for s in live)
    exit_on_event = bool(self.sched.queued() or any(s.forks for s in live))
    self._state, out = self._decode_exe(kind, logprobs)(
        self.params, self._state, self.sched.table, np.bool_(exit_on_event))
    self.decode_chunks += 1
    return out

  def _read(self, out) -> list[Event]:
    """Reads a dispatched chunk: the rows' state, their tokens, the events."""
    out = _to_host(out)
    for f, v in out.pop("rows")._asdict().items():
      self._rows[f] = np.array(v)
    self.decode_steps += int((out["index"] >= 0).any(axis=0).sum())
    events = []
    for seq in self.sched.decoding():
      slot = seq.slot
      self._apply(seq, slot, out)
      ev = self._event(seq, slot)
      if ev is not None:
        events.append(ev)
    return events

  def _apply(self, seq: Seq, slot: int, out: dict) -> None:
    """The chunk's tokens (and log-probabilities) of one row into its host record; a replace
    row rewound at its budget drops what it wrote after B - T."""
    k = seq.req.logprobs
    for s, (tok, at) in enumerate(zip(out["tokens"][slot], out["index"][slot])):
      if at < 0:
        continue
      del seq.tokens[at:]
      seq.tokens.append(int(tok))
      if seq.logprobs is not None:
        del seq.logprobs[at:], seq.top_logprobs[at:]
        seq.logprobs.append(float(out["logprob"][slot, s]))
        seq.top_logprobs.append([(int(i), float(v)) for i, v in
                                 zip(out["top_ids"][slot, s, :k], out["top_logprobs"][slot, s, :k])])
    if len(seq.tokens) != self._rows["n"][slot]:
      raise AssertionError(f"slot {slot}: host has {len(seq.tokens)} tokens, device "
                           f"{self._rows['n'][slot]}")

  def _event(self, seq: Seq, slot: int) -> Event | None:
    r = self._rows
    req = seq.req
    budgeted = req.thinking_budget is not None
    t = len(self.trigger_ids(req.mode)) if budgeted else 0
    done, marker_at = bool(r["done"][slot]), int(r["marker_at"][slot])
    thinking = r["phase"][slot] in (window.THINK, window.WAIT)
    bound = window.committed(len(seq.tokens), done, thinking,
                             req.thinking_budget if budgeted else window.NEVER,
                             budgeted and self.placement(req) == "replace", t)
    stop = self._stop_match(seq, bound, marker_at, t) if req.stop else None
    finished = None
    if stop is not None:
      bound = stop[0]
      del seq.tokens[bound:]
      if seq.logprobs is not None:
        del seq.logprobs[bound:], seq.top_logprobs[bound:]
      if marker_at >= bound:
        marker_at = -1
      self.sched.releases.append(slot)
      finished = self._finish(seq, True, bool(r["hit"][slot]) and marker_at >= 0, marker_at,
                              stop_reason=stop[1], stop_offset=stop[2], event=False)
    elif done:
      finished = self._finish(seq, bool(r["ended"][slot]), bool(r["hit"][slot]), marker_at,
                              event=False)
    new = seq.tokens[seq.streamed:bound]
    offset = seq.streamed
    seq.streamed = max(bound, seq.streamed)
    if not new and finished is None:
      return None
    in_answer = marker_at >= 0 and offset >= marker_at
    trigger_at = marker_at - offset if marker_at >= 0 and offset <= marker_at < bound else None
    lp = top = None
    if seq.logprobs is not None:
      lp, top = seq.logprobs[offset:offset + len(new)], seq.top_logprobs[offset:offset + len(new)]
    return Event(seq.key, new, offset, "answer" if in_answer else "thinking", trigger_at, t,
                 finished, logprobs=lp, top_logprobs=top)

  def _segments(self, seq: Seq, end: int, marker_at: int, t: int) -> list[tuple[int, int]]:
    """Token ranges of the generated text (the forced trigger / marker excluded)."""
    if marker_at < 0 or marker_at >= end:
      return [(0, end)]
    return [(0, marker_at), (marker_at + t, end)]

  def _stop_match(self, seq: Seq, bound: int, marker_at: int, t: int):
    """The first stop string in the final tokens [seq.checked, bound) of the generated text:
    (tokens to keep: up to the one completing it, the string, its character offset in its
    segment's text), or None. Only a short window is decoded per chunk (the new tokens and
    enough before them for a match across the boundary)."""
    decode = self.tokenizer.decode
    longest = max(len(s) for s in seq.req.stop)
    for lo, hi in self._segments(seq, bound, marker_at, t):
      start = max(lo, seq.checked)
      if start >= hi:
        continue
      look = max(lo, start - longest - 4)
      text = decode(seq.tokens[look:hi])
      hits = sorted((i, s) for s in seq.req.stop if (i := text.find(s)) >= 0)
      if not hits:
        continue
      at, s = hits[0]
      keep = next(j for j in range(look, hi + 1) if len(decode(seq.tokens[look:j])) >= at + len(s))
      before = len(decode(seq.tokens[lo:look]))
      offset = decode(seq.tokens[lo:keep]).find(s, max(before - len(s), 0))
      return keep, s, offset
    seq.checked = max(seq.checked, bound)
    return None

  def _finish(self, seq: Seq, ended: bool, hit: bool, marker_at: int, stop_reason=None,
              stop_offset=None, event: bool = True):
    """Frees the row's slot and pages; returns its Generation (or a finished Event)."""
    ids = list(seq.tokens)
    t = len(self.trigger_ids(seq.req.mode)) if seq.req.thinking_budget is not None else 0
    if marker_at >= 0:
      thinking, answer = marker_at, len(ids) - marker_at - t
    else:
      thinking, answer = len(ids), 0
    if stop_reason is None and ended and ids and ids[-1] in seq.req.stop_token_ids:
      stop_reason = ids[-1]
    text = None
    if self.tokenizer is not None:
      ends = set(self.markers.eos_ids) | set(seq.req.stop_token_ids)
      body = ids[:-1] if ended and ids and ids[-1] in ends else ids
      if stop_offset is not None:
        lo = self._segments(seq, len(body), marker_at, t)[-1][0]
        text = (self.tokenizer.decode(body[:lo]) +
                self.tokenizer.decode(body[lo:])[:stop_offset])
      else:
        text = self.tokenizer.decode(body)
    gen = Generation(ids, thinking, hit, max(answer, 0), ended, text, seq.req.id,
                     len(seq.req.prompt_ids), stop_reason, seq.logprobs, seq.top_logprobs,
                     seq.prompt_logprobs, seq.prompt_top_logprobs)
    self._drop(seq)
    if not event:
      return gen
    return Event(seq.key, [], seq.streamed, "thinking", None, t, gen)

  def _drop(self, seq: Seq) -> None:
    self.sched.drop(seq)
    self._ids.discard(seq.key)

  def _cancels(self) -> list[Event]:
    if not self._cancel:
      return []
    events = []
    for seq in [*self.sched.ready, *self.sched.waiting, *self.sched.running()]:
      if seq.key in self._cancel:
        events.append(Event(seq.key, [], seq.streamed, "thinking", None, 0, None, "cancelled"))
        if seq.slot is not None:
          self.sched.releases.append(seq.slot)
        self._drop(seq)
    self._cancel.clear()
    return events

  # -- convenience ------------------------------------------------------------------------------
  def run(self, requests: Sequence[Request], progress=None) -> list[Generation]:
    """Submits every request, steps until all are done; their Generations in input order.
    `progress(n)` is called with the number finished in each step."""
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
    with the largest budget and, still thinking at a smaller one, leaves that budget's branch
    behind (sharing its pages) and goes on. Branches are rows like any other, queued ahead of
    new requests. A row that ended earlier needs no branch. Equal token for token to separate
    runs at each budget."""
    budgets = sorted({int(b) for b in budgets})
    requests = list(requests)
    trunks = [dataclasses.replace(r, thinking_budget=budgets[-1]) for r in requests]
    for req in trunks:
      for b in budgets:
        self.validate(dataclasses.replace(req, thinking_budget=b))
    for req in trunks:
      self.submit(req, _key=(req.id, budgets[-1]), _forks=budgets[:-1])
    results: dict[tuple, Generation] = {}
    while self.has_work():
      for e in self.step():
        if e.finished is not None:
          results[e.id] = e.finished
          if progress is not None:
            progress(1)
    # no branch at a budget: the trunk had ended (or answered, s1) before it, so the trunk's
    # result is that budget's result
    return {b: [results.get((r.id, b), results[(r.id, budgets[-1])]) for r in requests]
            for b in budgets}
