"""The engine's scheduling decisions, on the host: who gets a slot, how many pages each row
needs next, whom to preempt, and how a step's prefill chunks are laid out.

Every process of a pod runs the same decisions on the same inputs (the engine's commands are
broadcast), so every host makes the same choices and the page tables agree without talking.

- Queues. `ready` (sweep branches and preempted rows, oldest first) goes before `waiting`
  (new requests, first come first served). A new request that does not fit the free pages
  waits, and so does everything behind it (no starvation of long prompts); entries of
  `ready` that do not fit are skipped for others.
- Pages are taken as a row grows: before each decode chunk a row holds the pages for every
  position it can reach in that chunk (`pages_for`).
- Preemption. A decoding row that needs a page when none is free takes it from the most
  recently admitted rows on its shard: each victim gives its pages back and goes to the front
  of `ready` with its tokens and row state; when it returns, its context is prefilled again
  (recomputed, as vLLM does) and it continues exactly where it was. The oldest row can always
  grow (a request whose whole need exceeds a shard's pool is refused at submission), so the
  engine never deadlocks.
- Prefill layout. A step prefills at most `prefill_tokens` prompt tokens, as one `[R, W]`
  batch with `R x W = prefill_tokens` (a handful of shapes, all compiled at warmup): the
  shape that carries the most tokens this step.
"""

from __future__ import annotations

import dataclasses

from z1_jax.infer.engine.requests import Request
from z1_jax.infer.sampling import Sampling


@dataclasses.dataclass(eq=False)
class Seq:
  """A request as the host tracks it, queued or in a slot."""
  req: Request
  sampling: Sampling
  key: object  # result key: the request id, or (id, budget) in a sweep
  order: int  # arrival number (preemption takes the latest first)
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


def pages_for(positions: int, page_size: int) -> int:
  """Pages that hold positions 0 .. positions-1."""
  return -(-positions // page_size)


def prefill_shapes(prefill_tokens: int, shards: int) -> list[tuple[int, int]]:
  """The `[R, W]` prefill shapes: R a multiple of `shards` (rows split over them), W a power of
  two >= 16, R x W = prefill_tokens."""
  out, w = [], prefill_tokens // shards
  while w >= 16:
    out.append((prefill_tokens // w, w))
    w //= 2
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
