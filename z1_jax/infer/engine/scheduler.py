"""The engine's scheduling, on the host: who gets a slot, how many pages each row needs next,
whom to preempt, where a sweep branch starts, and how a step's prefill chunks are laid out.
`Scheduler` holds the queues, the slots, the page pools and tables; the engine (`core.py`)
turns its decisions into device calls (`installs`: rows to write, `releases`: slots to stop,
page copies, prefill batches).

Every process of a pod runs the same decisions on the same inputs (the engine's commands are
broadcast), so every host makes the same choices and the page tables agree without talking.

- Queues. `ready` (sweep branches and preempted rows, oldest first) goes before `waiting`
  (new requests, first come first served). A new request that does not fit the free pages
  waits, and so does everything behind it (no starvation of long prompts); entries of `ready`
  that do not fit are skipped for others.
- Pages are taken as a row grows: before each decode chunk a row holds the pages for every
  position it can reach in that chunk (`reach`).
- Preemption. A decoding row that needs a page when none is free takes it from its shard:
  first the private pages of a branch waiting in `ready`, then the most recently admitted rows.
  Each victim gives its pages back and goes to `ready` with its tokens and row state; when it
  returns, its context is prefilled again (recomputed, as vLLM does) and it continues exactly
  where it was. The oldest row can always grow (every admissible request fits a shard's pool
  alone), so the engine never deadlocks.
- Sweep branches. A trunk paused at a smaller budget leaves its branch in `ready` holding the
  trunk's full pages below the branch's first write and a copy of the partial page there (the
  trunk never writes below that point again), and goes on to its next budget.
- Prefill layout. A step prefills at most `prefill_tokens` prompt tokens, as one `[R, W]` batch
  with `R x W = prefill_tokens` (a handful of shapes, all compiled at warmup): the shape that
  carries the most tokens this step. Rows that score their prompt (`prompt_logprobs`) go in
  batches of their own, one row per shard, in the narrowest width that holds the most tokens.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
from typing import Callable

import numpy as np

from z1_jax.infer import window
from z1_jax.infer.engine.pages import PagePool, prefix_digests
from z1_jax.infer.engine.requests import Request
from z1_jax.infer.sampling import Sampling


@dataclasses.dataclass(eq=False)
class Seq:
  """A request as the host tracks it, queued or in a slot."""
  req: Request
  sampling: Sampling
  key: object  # result key: the request id, or (id, budget) in a sweep
  order: int  # arrival number
  tokens: list[int] = dataclasses.field(default_factory=list)  # final generated tokens
  logprobs: list[float] | None = None
  top_logprobs: list | None = None
  prompt_logprobs: list | None = None
  prompt_top_logprobs: list | None = None
  streamed: int = 0  # tokens already sent in events
  checked: int = 0  # tokens already searched for stop strings
  forks: list[int] = dataclasses.field(default_factory=list)  # sweep: budgets still to branch
  state: dict | None = None  # device row values to restore (preempted / branch); None: fresh
  pages: list[int] | None = None  # pages held (None: none; a preempted row recomputes)
  shard: int | None = None  # data shard of the pages held
  slot: int | None = None
  filled: int = 0  # context positions written into the pages
  context: list[int] | None = None  # tokens to prefill (prompt and generated, all but the last)
  digests: list[bytes] = dataclasses.field(default_factory=list)  # its prompt's full pages
  admitted: int = -1  # admission number (most recent is preempted first)

  @property
  def decoding(self) -> bool:
    return self.slot is not None and self.context is not None and self.filled >= len(
        self.context)

  def last_token(self) -> int:
    return int(self.tokens[-1]) if self.tokens else int(self.req.prompt_ids[-1])


@dataclasses.dataclass
class PrefillBatch:
  """One prefill dispatch: `[R, W]` arrays and the rows it carries (batch row, seq, tokens)."""
  tokens: np.ndarray
  positions: np.ndarray
  pages: np.ndarray
  lengths: np.ndarray
  valid: np.ndarray
  targets: np.ndarray
  rows: list[tuple[int, Seq, int]]
  scoring: bool


def pages_for(positions: int, page_size: int) -> int:
  """Pages that hold positions 0 .. positions-1."""
  return -(-positions // page_size)


def prefill_shapes(prefill_tokens: int, shards: int, slots: int) -> list[tuple[int, int]]:
  """The `[R, W]` prefill shapes: R a multiple of `shards` (rows split over them) and at most
  `slots` (only rows in slots prefill), W a power of two >= 16, R x W = prefill_tokens."""
  out, w = [], prefill_tokens // shards
  while w >= 16 and prefill_tokens // w <= max(slots, shards):
    out.append((prefill_tokens // w, w))
    w //= 2
  return out


def score_shapes(prefill_tokens: int, shards: int) -> list[tuple[int, int]]:
  """The prefill shapes of rows that score their prompt: one row per shard, W a power of two
  from 16 to `prefill_tokens / shards`, narrowest first. Their log-softmax spans the whole
  vocabulary at every position, so a short prompt takes a narrow shape ([16, V], not
  [prefill_tokens, V]: 1.1 s per request at Qwen's 152k on 2 CPU cores)."""
  out, w = [], 16
  while w <= prefill_tokens // shards:
    out.append((shards, w))
    w *= 2
  return out


def choose_shape(remaining: list[list[int]], shapes: list[tuple[int, int]], shards: int):
  """The shape that carries the most prefill tokens this step. `remaining[s]`: the tokens each
  prefilling row of shard s still needs, in admission order. Returns (R, W, per shard the
  chunk lengths taken, in order) or None when nothing needs prefilling."""
  best = None
  for r, w in shapes:
    per = r // shards
    take = [[min(n, w) for n in rows[:per]] for rows in remaining]
    useful = sum(map(sum, take))
    if useful and (best is None or useful > best[0]):
      best = (useful, r, w, take)
  return None if best is None else best[1:]


class Scheduler:
  """Queues, slots, pages (see the module docstring). `rows`: the engine's host copy of the
  device rows (read here); `fresh_state(seq)`: a new request's row values; `trigger_len(mode)`:
  the forced marker's length."""

  def __init__(self, *, slots: int, shards: int, pages_per_shard: int, page_size: int,
               table_width: int, chunk_steps: int, prefill_tokens: int, rows: dict,
               fresh_state: Callable[[Seq], dict], trigger_len: Callable[[str], int]):
    self.slots, self.shards, self.page_size = slots, shards, page_size
    self.chunk_steps = chunk_steps
    self.rows, self.fresh_state, self.trigger_len = rows, fresh_state, trigger_len
    self.pools = [PagePool(pages_per_shard + 1) for _ in range(shards)]  # + the null page
    self.table = np.zeros((slots, table_width), np.int32)
    self.shapes = prefill_shapes(prefill_tokens, shards, slots)
    self.score_shapes = score_shapes(prefill_tokens, shards)
    self.slot: list[Seq | None] = [None] * slots
    self.ready: list[Seq] = []  # branches and preempted rows, by arrival
    self.waiting: collections.deque[Seq] = collections.deque()
    self.installs: dict[int, dict] = {}  # slot -> row values to write
    self.releases: list[int] = []  # slots to mark done
    self.admissions = 0
    self.preemptions = 0

  # -- what is where ----------------------------------------------------------------------------
  def shard_of(self, slot: int) -> int:
    return slot // (self.slots // self.shards)

  def running(self) -> list[Seq]:
    return [s for s in self.slot if s is not None]

  def decoding(self) -> list[Seq]:
    return [s for s in self.slot if s is not None and s.decoding]

  def queued(self) -> int:
    return len(self.ready) + len(self.waiting)

  def steady(self) -> bool:
    """Only decoding to do: nothing queued, prefilling, forking or to write."""
    return not (self.ready or self.waiting or self.installs or self.releases or any(
        s.forks or not s.decoding for s in self.running()))

  def row_values(self, slot: int) -> dict:
    """A slot's row as the device will see it: a pending write, else as last read."""
    if slot in self.installs:
      return dict(self.installs[slot])
    return {f: np.array(v[slot]) for f, v in self.rows.items()}

  @staticmethod
  def limit(state: dict) -> int:
    """Positions a row may ever hold: its prompt and all it can generate (the last generated
    token is never fed)."""
    return int(state["start"]) + int(state["stop"]) - 1

  def reach(self, state: dict, chunks: int = 1) -> int:
    """Positions the row must hold pages for before its next `chunks` decode chunks."""
    return min(int(state["feed"]) + chunks * self.chunk_steps, self.limit(state))

  def set_table(self, seq: Seq) -> None:
    row = self.table[seq.slot]
    row[:] = 0
    row[:len(seq.pages)] = seq.pages

  # -- admission ----------------------------------------------------------------------------------
  def admit(self) -> None:
    free = [s for s in range(self.slots) if self.slot[s] is None]
    self.ready = [seq for seq in self.ready if not free or self._try_admit(seq, free) != "ok"]
    waiting = collections.deque()
    blocked = False
    while self.waiting:
      seq = self.waiting.popleft()
      outcome = "blocked" if blocked or not free else self._try_admit(seq, free)
      if outcome != "ok":
        waiting.append(seq)
        blocked = blocked or outcome == "blocked"
    self.waiting = waiting

  def _try_admit(self, seq: Seq, free: list[int]) -> str:
    """'ok' (seq now holds a slot and its first pages), 'defer' (its prompt's pages are being
    prefilled by another row this step: next step it shares them) or 'blocked' (no room)."""
    ps = self.page_size
    if seq.pages is not None:  # a branch holding its trunk's pages: only its shard will do
      slot = next((s for s in free if self.shard_of(s) == seq.shard), None)
      if slot is None:
        return "blocked"
      new = self.pools[seq.shard].alloc(max(0, pages_for(self.reach(seq.state), ps)
                                            - len(seq.pages)))
      if new is None:
        return "blocked"
      seq.pages += new
      seq.context, seq.filled = [], 0
      self.installs[slot] = dict(seq.state)
    else:
      shard = min({self.shard_of(s) for s in free},
                  key=lambda d: (-self.pools[d].available(), d))
      slot = next(s for s in free if self.shard_of(s) == shard)
      pool = self.pools[shard]
      prompt = [int(x) for x in seq.req.prompt_ids]
      context = (prompt + seq.tokens)[:-1]
      digests = prefix_digests(prompt, ps, (len(prompt) - 1) // ps)
      scoring = seq.req.prompt_logprobs is not None  # needs every position's logits
      cached, pending = ([], False) if scoring else pool.lookup(digests)
      if pending:
        pool.release(cached)
        return "defer"
      state = seq.state or self.fresh_state(seq)
      new = pool.alloc(max(0, pages_for(self.reach(state), ps) - len(cached)))
      if new is None:
        pool.release(cached)
        return "blocked"
      if not scoring:
        pool.lookup_tokens += len(digests) * ps
        pool.hit_tokens += len(cached) * ps
      seq.pages, seq.shard, seq.state = cached + new, shard, state
      seq.context, seq.filled, seq.digests = context, len(cached) * ps, digests
      pool.pending.update(digests[len(cached):])
      if seq.filled >= len(context):
        self.installs[slot] = dict(state)
    seq.slot = slot
    seq.admitted = self.admissions
    self.admissions += 1
    self.slot[slot] = seq
    self.set_table(seq)
    free.remove(slot)
    return "ok"

  # -- prefill --------------------------------------------------------------------------------------
  def prefill_batch(self) -> PrefillBatch | None:
    """This step's prefill chunk, or None when no row is prefilling."""
    rows = sorted((s for s in self.running() if not s.decoding), key=lambda s: s.admitted)
    if not rows:
      return None
    scoring = [s for s in rows if s.req.prompt_logprobs is not None]
    rows = scoring or rows
    by_shard = [[s for s in rows if s.shard == d] for d in range(self.shards)]
    shapes = self.score_shapes if scoring else self.shapes
    r, w, takes = choose_shape([[len(s.context) - s.filled for s in group]
                                for group in by_shard], shapes, self.shards)
    per = r // self.shards
    batch = PrefillBatch(
        tokens=np.zeros((r, w), np.int32),
        positions=np.tile(np.arange(w, dtype=np.int32), (r, 1)),
        pages=np.zeros((r, self.table.shape[1]), np.int32), lengths=np.full((r,), w, np.int32),
        valid=np.zeros((r, w), bool), targets=np.zeros((r, w), np.int32), rows=[],
        scoring=bool(scoring))
    for d, (group, take) in enumerate(zip(by_shard, takes)):
      for j, (seq, c) in enumerate(zip(group, take)):
        i, a = d * per + j, seq.filled
        batch.tokens[i, :c] = seq.context[a:a + c]
        batch.positions[i] += a
        batch.valid[i, :c] = True
        batch.pages[i] = self.table[seq.slot]
        batch.lengths[i] = a + w  # the kernel's layout: queries at the row's last positions
        full = seq.context + [seq.last_token()]
        batch.targets[i, :c] = full[a + 1:a + c + 1]
        batch.rows.append((i, seq, c))
    return batch

  def prefilled(self, batch: PrefillBatch) -> list[Seq]:
    """After `batch` was dispatched: progress, the prompt pages it completed enter the prefix
    cache, and the rows whose context is now whole (to install, or to finish if they only
    score their prompt)."""
    done = []
    for _, seq, c in batch.rows:
      seq.filled += c
      pool = self.pools[seq.shard]
      for p in range(min(seq.filled // self.page_size, len(seq.digests))):
        pool.register(seq.pages[p], seq.digests[p])
      if seq.filled >= len(seq.context):
        done.append(seq)
    return done

  # -- pages for the next chunks ----------------------------------------------------------------
  def grow(self, chunks: int = 1, may_preempt: bool = True) -> bool:
    """Pages for every decoding row's next `chunks` chunks, oldest row first, preempting where
    a shard's pool runs dry. Returns False (having changed nothing it cannot keep) when it
    would have to preempt but `may_preempt` is False."""
    ps = self.page_size
    for seq in sorted(self.decoding(), key=lambda s: s.admitted):
      if seq.slot is None:  # preempted earlier in this loop
        continue
      state = self.row_values(seq.slot)
      if state["done"]:
        continue
      extra = pages_for(self.reach(state, chunks), ps) - len(seq.pages)
      while extra > 0:
        got = self.pools[seq.shard].alloc(extra)
        if got is not None:
          seq.pages += got
          self.set_table(seq)
          break
        if not may_preempt:
          return False
        victim = self._victim(seq.shard)
        self.preempt(victim)
        if victim is seq:
          break
    return True

  def _victim(self, shard: int) -> Seq:
    """Whom to take pages from: a waiting branch's private pages first, then the most recently
    admitted row of the shard."""
    parked = [s for s in self.ready if s.pages is not None and s.shard == shard]
    if parked:
      return max(parked, key=lambda s: s.order)
    return max((s for s in self.running() if s.shard == shard), key=lambda s: s.admitted)

  def preempt(self, seq: Seq) -> None:
    """Gives `seq`'s pages back; it returns to `ready` and recomputes its context later."""
    self._let_go(seq)
    if seq.slot is not None:
      if seq.decoding:
        seq.state = self.row_values(seq.slot)
        self.releases.append(seq.slot)
      self._free_slot(seq)
      bisect.insort(self.ready, seq, key=lambda s: s.order)
      self.preemptions += 1
    seq.context, seq.filled = None, 0

  def drop(self, seq: Seq) -> None:
    """`seq` is finished or cancelled: its pages and slot go back, it leaves every queue."""
    self._let_go(seq)
    if seq.slot is not None:
      self._free_slot(seq)
    for queue in (self.ready, self.waiting):
      if seq in queue:
        queue.remove(seq)

  def _let_go(self, seq: Seq) -> None:
    if seq.pages is not None:
      pool = self.pools[seq.shard]
      pool.release(seq.pages)
      pool.pending.difference_update(seq.digests[seq.filled // self.page_size:])
    seq.pages = seq.shard = None

  def _free_slot(self, seq: Seq) -> None:
    self.slot[seq.slot] = None
    self.table[seq.slot] = 0
    self.installs.pop(seq.slot, None)
    seq.slot = None

  # -- sweep branches -----------------------------------------------------------------------------
  def fork_paused(self) -> tuple[list[Seq], list[list[tuple[int, int]]]]:
    """Trunks paused at a budget leave their branches in `ready` and go on to their next
    budget. Returns the branches and, per shard, the page copies (source, destination) the
    device must make before anything else runs."""
    branches, copies = [], [[] for _ in range(self.shards)]
    for slot, seq in enumerate(self.slot):
      if seq is None or not seq.forks or not seq.decoding:
        continue
      st = self.row_values(slot)
      thinking = st["phase"] in (window.THINK, window.WAIT)
      if st["done"] or not thinking or st["n"] != st["pause_at"]:
        continue
      budget = seq.forks.pop(0)
      self.installs[slot] = dict(st, pause_at=seq.forks[0] if seq.forks else window.NEVER)
      t = self.trigger_len(seq.req.mode)
      rewind = seq.tokens[budget - t - 1] if st["replace"] and budget > t else 0
      branch = Seq(dataclasses.replace(seq.req, thinking_budget=budget), seq.sampling,
                   (seq.key[0], budget), seq.order, tokens=list(seq.tokens),
                   streamed=seq.streamed,
                   state=dict(st, window=budget, pause_at=window.NEVER, rewind_token=rewind))
      if seq.logprobs is not None:
        branch.logprobs, branch.top_logprobs = list(seq.logprobs), list(seq.top_logprobs)
      p = int(st["start"]) + int(st["n"])
      first = p - max(t, 1) if st["replace"] else p - 1  # the branch's first write
      pool, ps = self.pools[seq.shard], self.page_size
      shared = seq.pages[:first // ps]
      partial = first % ps != 0
      copy = pool.alloc(1) if partial else []
      if copy is not None:  # else it waits without pages and recomputes its context
        pool.share(shared)
        branch.pages, branch.shard = shared + copy, seq.shard
        if partial:
          copies[seq.shard].append((seq.pages[first // ps], copy[0]))
      bisect.insort(self.ready, branch, key=lambda s: s.order)
      branches.append(branch)
    return branches, copies
