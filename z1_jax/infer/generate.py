"""`generate` and `sweep`: the public decoding API, on the engine (`infer.engine`).

Inputs are checked on the host before anything compiles (one `DecodeOptions`, shared by
`generate`, `sweep` and `z1 generate`). The engine is sized so that a new prompt length,
budget or batch size rarely recompiles: the longest request (`max_seq_len`) is bucketed
(powers of two up to 1024, then multiples of 1024), the slots to a power of two (and a multiple
of the mesh's batch axes).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

from z1_jax.errors import Z1Error
from z1_jax.infer import budget as budget_lib
from z1_jax.infer.engine import Engine, Generation, Request, batch_shards, bucket
from z1_jax.infer.sampling import Sampling
from z1_jax.model.qwen2 import Qwen2

__all__ = ["DecodeOptions", "Generation", "generate", "greedy_generate", "sweep"]


@dataclasses.dataclass(frozen=True)
class DecodeOptions:
  """Everything about a decode except the prompts and the budget(s): one frozen object."""
  mode: str = "z1"
  placement: str | None = None
  trigger: str | None = None
  trigger_ids: Sequence[int] | None = None
  min_thinking: int = 0
  wait_ids: Sequence[int] | None = None
  eos_ids: Sequence[int] | None = None
  temperature: float = 0.0
  top_k: int | None = None
  top_p: float | None = None
  seed: int = 0
  tokenizer: object = None
  batch_size: int | None = None
  row_ids: Sequence[int] | None = None
  # the engine's paged KV cache (`infer.engine`): tokens per page (default 16 on CPU/GPU, 128
  # on TPU), the pool's capacity in tokens (default: see `Engine`), prompt tokens per step
  page_size: int | None = None
  max_total_tokens: int | None = None
  prefill_tokens: int = 512

def resolve_tokenizer(tokenizer):
  """A tokenizer object as is; a path or hub id loaded (an error names it if it cannot be)."""
  if tokenizer is None or not isinstance(tokenizer, (str, os.PathLike)):
    return tokenizer
  from z1_jax.data.tokenizer import load_tokenizer
  try:
    return load_tokenizer(tokenizer)
  except (OSError, ValueError) as e:
    raise Z1Error(f"tokenizer {str(tokenizer)!r}: cannot load it ({e})") from None


def _check_prompts(prompts) -> list[list[int]]:
  if isinstance(prompts, (str, bytes)) or not len(prompts):
    raise Z1Error("prompts: expected a non-empty list of token-id lists (tokenize text first)")
  out = []
  for i, p in enumerate(prompts):
    if isinstance(p, (str, bytes)):
      raise Z1Error(f"prompt {i} is text: prompts are lists of token ids (tokenize it first)")
    out.append([int(x) for x in p])
  return out


def make_engine(model: Qwen2, longest: int, batch_size: int | None, *, tokenizer=None,
                eos_ids=None, trigger_ids=None, s1_marker_ids=None, wait_ids=None,
                n_requests: int = 1, page_size: int | None = None,
                max_total_tokens: int | None = None, prefill_tokens: int = 512) -> Engine:
  """An engine sized for requests of at most `longest` positions (prompt + generated): that
  length bucketed, `batch_size` slots (default: the requests, up to 64, a power of two)
  rounded up to the mesh's batch split, the paged cache's options passed on."""
  if not isinstance(model, Qwen2):
    raise Z1Error(f"model: expected a z1_jax Qwen2 model, got {type(model).__name__}")
  if batch_size is None:
    batch_size = min(bucket(n_requests, 1), 64)
  if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
    raise Z1Error(f"batch_size={batch_size}: expected an integer >= 1")
  multiple = batch_shards(model)
  slots = -(-batch_size // multiple) * multiple
  max_seq_len = min(bucket(longest), model.cfg.max_position_embeddings)
  return Engine(model, slots=slots, max_seq_len=max_seq_len, tokenizer=tokenizer,
                eos_ids=eos_ids, trigger_ids=trigger_ids, s1_marker_ids=s1_marker_ids,
                wait_ids=wait_ids, page_size=page_size, max_total_tokens=max_total_tokens,
                prefill_tokens=prefill_tokens)


def _engine(model: Qwen2, prompts, stop: int, opts: DecodeOptions, marker) -> Engine:
  markers = {}
  if opts.mode == "s1":
    markers = dict(s1_marker_ids=marker, wait_ids=opts.wait_ids)
  elif marker:
    markers = dict(trigger_ids=marker)
  return make_engine(model, max(len(p) for p in prompts) + stop, opts.batch_size,
                     tokenizer=opts.tokenizer, eos_ids=opts.eos_ids, n_requests=len(prompts),
                     page_size=opts.page_size, max_total_tokens=opts.max_total_tokens,
                     prefill_tokens=opts.prefill_tokens, **markers)


def _requests(prompts, opts: DecodeOptions, **limits) -> list[Request]:
  row_ids = opts.row_ids
  if row_ids is None:
    row_ids = list(range(len(prompts)))
  elif len(row_ids) != len(prompts):
    raise Z1Error(f"row_ids: {len(row_ids)} ids for {len(prompts)} prompts")
  if opts.min_thinking and opts.mode != "s1":
    raise Z1Error("min_thinking applies to mode='s1' only")
  Sampling(float(opts.temperature), opts.top_k, opts.top_p)  # refused here without a row name
  return [Request(i, p, mode=opts.mode, temperature=float(opts.temperature), top_k=opts.top_k,
                  top_p=opts.top_p, seed=int(opts.seed), row_id=int(r),
                  min_thinking=int(opts.min_thinking), **limits)
          for i, (p, r) in enumerate(zip(prompts, row_ids))]


def _unnamed(fn):
  """Runs `fn`; an engine error about request i is re-worded as about prompt i."""
  import re
  try:
    return fn()
  except Z1Error as e:
    raise Z1Error(re.sub(r"^request (\d+): ", r"prompt \1: ", str(e))) from None


def generate(model: Qwen2, prompts: Sequence[Sequence[int]], *,
             max_new_tokens: int | None = None, thinking_budget: int | None = None,
             answer_tokens: int | None = None, options: DecodeOptions | None = None,
             progress=None, **kw) -> list[Generation]:
  """Continues each prompt (a list of token ids); one `Generation` per prompt, in order.

  Without a budget: up to `max_new_tokens` tokens, stopping at an end id (`eos_ids`, default
  `<|im_end|>` and `<|endoftext|>`). With `thinking_budget` B and `answer_tokens` A: the
  Shifted Thinking Window (`mode="z1"`; `placement` "replace" (default) or "append"; see
  `infer.window`) or s1 budget forcing (`mode="s1"`, default placement "append",
  `min_thinking` replaces an earlier end with "Wait" or `wait_ids`). The trigger is `trigger`
  text or `trigger_ids` (default: the Z1 phrase, tokenized with `tokenizer`, else with the
  offline Qwen2.5 tokenizer). Sampling: greedy at temperature 0, else temperature / top-k /
  top-p with keys from (seed, row id, position); `row_ids` default to the prompts' indices.
  `tokenizer` (object or path) decodes `text`. The other options are `DecodeOptions`' fields
  (pass `options=` or them as keywords).
  """
  opts = dataclasses.replace(options or DecodeOptions(), **kw)
  opts = dataclasses.replace(opts, tokenizer=resolve_tokenizer(opts.tokenizer))
  plan, marker = _budget(opts.mode, thinking_budget, answer_tokens, opts.placement,
                         opts.trigger, opts.trigger_ids, opts.tokenizer, max_new_tokens)
  prompts = _check_prompts(prompts)
  stop = plan.stop if plan else max_new_tokens
  limits = (dict(max_new_tokens=max_new_tokens) if plan is None else
            dict(thinking_budget=plan.thinking, answer_tokens=plan.answer,
                 placement=plan.placement))
  requests = _requests(prompts, opts, **limits)
  return _unnamed(lambda: _engine(model, prompts, stop, opts, marker).run(requests, progress))


def sweep(model: Qwen2, prompts: Sequence[Sequence[int]], budgets: Sequence[int],
          answer_tokens: int, *, options: DecodeOptions | None = None, progress=None,
          **kw) -> dict[int, list[Generation]]:
  """`generate` at several thinking budgets, decoding each prompt's shared trunk once.

  For budgets B1 < ... < Bk the tokens before each budget's trigger are the same for every
  larger budget (greedy, or sampled with position-derived keys), so one trunk per prompt is
  decoded with the largest budget; where it is still thinking at a smaller budget its branch
  (sharing that row's pages) waits for a slot ahead of new trunks (`Engine.sweep`). Returns budget ->
  one `Generation` per prompt, equal to `generate(..., thinking_budget=B)` token for token.
  """
  opts = dataclasses.replace(options or DecodeOptions(), **kw)
  opts = dataclasses.replace(opts, tokenizer=resolve_tokenizer(opts.tokenizer))
  if isinstance(budgets, int) or not len(budgets):
    raise Z1Error("budgets: expected a non-empty list of thinking budgets")
  budgets = sorted({int(b) for b in budgets})
  plans = [_budget(opts.mode, b, answer_tokens, opts.placement, opts.trigger, opts.trigger_ids,
                   opts.tokenizer, None)[0] for b in budgets]
  prompts = _check_prompts(prompts)
  requests = _requests(prompts, opts, thinking_budget=budgets[-1], answer_tokens=answer_tokens,
                       placement=plans[0].placement)
  engine = _unnamed(lambda: _engine(model, prompts, plans[-1].stop, opts, plans[0].marker_ids))
  return _unnamed(lambda: engine.sweep(requests, budgets, progress))


def greedy_generate(model: Qwen2, prompts: list[list[int]], max_new_tokens: int,
                    eos_id: int | None = None) -> list[list[int]]:
  """Greedy continuation of each prompt (stops a row at `eos_id`, which is kept)."""
  out = generate(model, prompts, max_new_tokens=max_new_tokens,
                 eos_ids=[] if eos_id is None else [eos_id])
  return [g.tokens for g in out]


def _budget(mode, thinking_budget, answer_tokens, placement, trigger, trigger_ids,
            tokenizer, max_new_tokens):
  """(Budget or None, marker ids); checks the combination of arguments."""
  if mode not in budget_lib.MODES:
    raise Z1Error(f"mode={mode!r}: expected one of {budget_lib.MODES}")
  if thinking_budget is None:
    if mode == "s1":
      raise Z1Error("mode='s1' needs a thinking_budget")
    if answer_tokens is not None or trigger is not None or trigger_ids is not None:
      raise Z1Error("answer_tokens / trigger apply with a thinking_budget only")
    if placement is not None:
      raise Z1Error("placement applies with a thinking_budget only")
    if max_new_tokens is None or max_new_tokens < 1:
      raise Z1Error(f"max_new_tokens={max_new_tokens}: expected an integer >= 1 "
                    "(or pass thinking_budget and answer_tokens)")
    return None, ()
  if max_new_tokens is not None:
    raise Z1Error("pass max_new_tokens or thinking_budget with answer_tokens, not both")
  if answer_tokens is None:
    raise Z1Error("thinking_budget needs answer_tokens (the answer's length limit)")
  if placement is None:
    placement = "replace" if mode == "z1" else "append"
  marker = budget_lib.marker_ids(mode, trigger, trigger_ids, tokenizer)
  plan = budget_lib.Budget(int(thinking_budget), int(answer_tokens), marker, placement)
  return plan, marker
