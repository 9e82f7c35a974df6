"""`generate` and `sweep`: the public decoding API over the compiled loop (`infer.loop`).

Inputs are checked on the host before anything compiles. Shapes are bucketed so that a new
prompt length, budget or batch size rarely recompiles: the prompt width and the generated
width are padded to powers of two (multiples of 1024 above 1024), the batch to a power of two
(and a multiple of the mesh's batch axes); padding rows are done from the start.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Sequence

import jax
import numpy as np
from flax import nnx

from z1_jax.errors import Z1Error
from z1_jax.infer import budget as budget_lib
from z1_jax.infer import loop
from z1_jax.infer.decode import left_pad
from z1_jax.infer.sampling import Sampling
from z1_jax.model.qwen2 import Qwen2


@dataclasses.dataclass(frozen=True)
class Generation:
  """One prompt's continuation.

  tokens: generated ids (the end id included when one was emitted; for a row that hit its
    budget: the window, the trigger and the answer).
  thinking_tokens: length of the thinking phase (the window, capped at the budget: B for a row
    that hit it; for s1 the tokens before the answer marker; all tokens without a marker).
  hit_budget: the trigger was placed because the budget ran out.
  answer_tokens: tokens after the trigger / marker (0 without one).
  ended: the row stopped at an end id (else at a length limit).
  text: `tokens` decoded (a final end id left out) when a tokenizer is known.
  """
  tokens: list[int]
  thinking_tokens: int
  hit_budget: bool
  answer_tokens: int
  ended: bool
  text: str | None = None


def bucket(n: int, minimum: int = 16) -> int:
  """Padded size for `n`: powers of two up to 1024, then multiples of 1024."""
  n = max(n, minimum)
  return 1 << (n - 1).bit_length() if n <= 1024 else -(-n // 1024) * 1024


@dataclasses.dataclass(frozen=True)
class _Setup:
  graphdef: nnx.GraphDef
  params: nnx.State
  spec: loop.LoopSpec
  prompts: list[list[int]]
  row_ids: list[int]
  batch: int
  tokenizer: object | None
  seed: int
  min_thinking: int


def resolve_tokenizer(tokenizer):
  """A tokenizer object as is; a path or hub id loaded (an error names it if it cannot be)."""
  if tokenizer is None or not isinstance(tokenizer, (str, os.PathLike)):
    return tokenizer
  from z1_jax.data.tokenizer import load_tokenizer
  try:
    return load_tokenizer(tokenizer)
  except (OSError, ValueError) as e:
    raise Z1Error(f"tokenizer {str(tokenizer)!r}: cannot load it ({e})") from None


def _ids(name: str, ids: Sequence[int], vocab: int) -> tuple[int, ...]:
  ids = tuple(int(i) for i in ids)
  bad = [i for i in ids if not 0 <= i < vocab]
  if bad:
    raise Z1Error(f"{name}: id {bad[0]} is outside the model's vocabulary [0, {vocab})")
  return ids


def _check_prompts(prompts, vocab: int, max_positions: int) -> list[list[int]]:
  if isinstance(prompts, (str, bytes)) or not len(prompts):
    raise Z1Error("prompts: expected a non-empty list of token-id lists (tokenize text first)")
  out = []
  for i, p in enumerate(prompts):
    if isinstance(p, (str, bytes)):
      raise Z1Error(f"prompt {i} is text: prompts are lists of token ids (tokenize it first)")
    ids = [int(x) for x in p]
    if not ids:
      raise Z1Error(f"prompt {i} is empty: a prompt needs at least one token")
    _ids(f"prompt {i}", ids, vocab)
    if len(ids) > max_positions:  # generating past it is allowed, as in HF (RoPE goes on)
      raise Z1Error(f"prompt {i}: {len(ids)} tokens are longer than the model's maximum of "
                    f"{max_positions} positions")
    out.append(ids)
  return out


def _batch_multiple(model: Qwen2) -> int:
  """Rows must divide over the mesh axes the batch is sharded on."""
  rules = model.rules
  if rules is None:
    return 1
  axes = dict(rules.rules).get("batch", ())
  return math.prod(rules.mesh.shape[a] for a in axes)


def _setup(model: Qwen2, prompts, *, mode: str, marker, eos_ids, temperature,
           top_k, top_p, seed, tokenizer, batch_size, row_ids, min_thinking,
           wait_ids) -> _Setup:
  if not isinstance(model, Qwen2):
    raise Z1Error(f"model: expected a z1_jax Qwen2 model, got {type(model).__name__}")
  cfg = model.cfg
  sampling = Sampling(float(temperature), top_k, top_p)
  prompts = _check_prompts(prompts, cfg.vocab_size, cfg.max_position_embeddings)
  if eos_ids is None:  # defaults a tiny test vocabulary cannot emit are left out
    eos = tuple(i for i in budget_lib.default_eos_ids(tokenizer) if i < cfg.vocab_size)
  else:
    eos = _ids("eos_ids", eos_ids, cfg.vocab_size)
  wait = ()
  if mode == "s1":
    wait = _ids("wait_ids", budget_lib.wait_ids(tokenizer) if wait_ids is None else wait_ids,
                cfg.vocab_size)
  if min_thinking and mode != "s1":
    raise Z1Error("min_thinking applies to mode='s1' only")
  if min_thinking < 0:
    raise Z1Error(f"min_thinking={min_thinking}: expected an integer >= 0")
  marker = _ids("trigger ids", marker, cfg.vocab_size)
  if row_ids is None:
    row_ids = list(range(len(prompts)))
  elif len(row_ids) != len(prompts):
    raise Z1Error(f"row_ids: {len(row_ids)} ids for {len(prompts)} prompts")
  if batch_size is None:
    batch_size = min(bucket(len(prompts), 1), 64)
  if batch_size < 1:
    raise Z1Error(f"batch_size={batch_size}: expected an integer >= 1")
  multiple = _batch_multiple(model)
  # Known: at batch 1, XLA:CPU folds the batch axis away inside attention and duplicates each
  # cache update into two fusions, copying each layer's cache every token. Padding to 2 rows
  # avoids that but made a 0.5B step slower (matrix-matrix instead of matrix-vector), so a
  # single row stays a batch of 1; batches of 2 or more have no copies (tested).
  batch = -(-batch_size // multiple) * multiple
  graphdef, params = nnx.split(unrolled(model))
  spec = loop.LoopSpec(sampling, eos, marker, wait, mode == "s1")
  return _Setup(graphdef, params, spec, prompts, [int(r) for r in row_ids], batch, tokenizer,
                int(seed), int(min_thinking))


def unrolled(model: Qwen2) -> Qwen2:
  """The model with unrolled layers (itself when it has them). Decoding a scanned-layer model
  would carry the whole KV cache through `lax.scan`'s xs/ys: a copy of it per token."""
  if not model.cfg.scan_layers:
    return model
  from z1_jax.checkpoint.orbax_io import unstack_layers
  from z1_jax.model.qwen2 import abstract_model, state_shardings
  cfg = model.cfg.replace(scan_layers=False)
  graphdef, abstract = nnx.split(abstract_model(cfg, model.rules))
  shardings = None if model.rules is None else nnx.to_pure_dict(
      state_shardings(abstract, model.rules))
  params = jax.jit(lambda p: unstack_layers(p, cfg.num_layers), out_shardings=shardings)(
      nnx.to_pure_dict(nnx.state(model)))
  nnx.replace_by_pure_dict(abstract, params)
  return nnx.merge(graphdef, abstract)


def _chunks(setup: _Setup):
  """(indices, padded arrays) per batch: left-padded prompts, padding rows done from the
  start."""
  b = setup.batch
  for lo in range(0, len(setup.prompts), b):
    idx = list(range(lo, min(lo + b, len(setup.prompts))))
    rows = [setup.prompts[i] for i in idx] + [[0]] * (b - len(idx))
    tokens, seg, pos = left_pad(rows, width=bucket(max(len(r) for r in rows)))
    lengths = np.array([len(r) for r in rows], np.int32)
    row_ids = np.array([setup.row_ids[i] for i in idx] + [0] * (b - len(idx)), np.int32)
    done = np.arange(b) >= len(idx)
    yield idx, (tokens, seg, pos, lengths, row_ids, done)


def _start(setup: _Setup, arrays, ctl, max_stop: int) -> loop.DecodeState:
  width = bucket(max_stop)
  cache_len = arrays[0].shape[1] + width
  loop.check_writes(arrays[0].shape[1], max_stop, cache_len, width)  # every later stop <= it
  return loop.start(setup.graphdef, setup.params, *arrays, ctl, spec=setup.spec,
                    cache_len=cache_len, width=width)


def _run(setup: _Setup, state: loop.DecodeState, ctl) -> loop.DecodeState:
  return loop.run(setup.graphdef, setup.params, state, ctl, spec=setup.spec)


def _results(setup: _Setup, state: loop.DecodeState, idx: list[int],
             thinking_budget: int | None) -> list[Generation]:
  tokens, length, ended, marker_at, hit = jax.device_get(
      (state.tokens, state.length, state.ended, state.marker_at, state.hit))
  t = len(setup.spec.marker_ids)
  out = []
  for r in range(len(idx)):
    ids = tokens[r, :length[r]].tolist()
    if marker_at[r] >= 0:
      thinking = thinking_budget if hit[r] else int(marker_at[r])
      answer = int(length[r]) - int(marker_at[r]) - t
    else:
      thinking, answer = int(length[r]), 0
    text = None
    if setup.tokenizer is not None:
      body = ids[:-1] if ended[r] and ids and ids[-1] in setup.spec.eos_ids else ids
      text = setup.tokenizer.decode(body)
    out.append(Generation(ids, thinking, bool(hit[r]), max(answer, 0), bool(ended[r]), text))
  return out


def generate(model: Qwen2, prompts: Sequence[Sequence[int]], *,
             max_new_tokens: int | None = None, thinking_budget: int | None = None,
             answer_tokens: int | None = None, placement: str | None = None, mode: str = "z1",
             trigger: str | None = None, trigger_ids: Sequence[int] | None = None,
             min_thinking: int = 0, wait_ids: Sequence[int] | None = None,
             eos_ids: Sequence[int] | None = None, temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
             seed: int = 0, tokenizer=None, batch_size: int | None = None,
             row_ids: Sequence[int] | None = None) -> list[Generation]:
  """Continues each prompt (a list of token ids); one `Generation` per prompt, in order.

  Without a budget: up to `max_new_tokens` tokens, stopping at an end id (`eos_ids`, default
  `<|im_end|>` and `<|endoftext|>`). With `thinking_budget` B and `answer_tokens` A: the
  Shifted Thinking Window (`mode="z1"`; `placement` "replace" (default) or "append") or s1
  budget forcing (`mode="s1"`, default placement "append", `min_thinking` replaces an earlier
  end with "Wait" or `wait_ids`). The trigger is `trigger` text or `trigger_ids` (default:
  the Z1 phrase, tokenized with `tokenizer`, else with the offline Qwen2.5 tokenizer). Sampling: greedy at
  temperature 0, else temperature / top-k / top-p with keys from (seed, row id, position);
  `row_ids` default to the prompts' indices. `tokenizer` (object or path) decodes `text`.
  """
  tokenizer = resolve_tokenizer(tokenizer)
  budget, marker = _budget(mode, thinking_budget, answer_tokens, placement, trigger,
                           trigger_ids, tokenizer, max_new_tokens)
  stop = budget.stop if budget else max_new_tokens
  setup = _setup(model, prompts, mode=mode, marker=marker, eos_ids=eos_ids,
                 temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                 tokenizer=tokenizer, batch_size=batch_size, row_ids=row_ids,
                 min_thinking=min_thinking, wait_ids=wait_ids)
  ctl = loop.controls(budget.trigger_step if budget else loop.NEVER, stop,
                      budget.answer if budget else loop.NEVER, setup.min_thinking, setup.seed)
  results: list[Generation | None] = [None] * len(setup.prompts)
  for idx, arrays in _chunks(setup):
    state = _run(setup, _start(setup, arrays, ctl, stop), ctl)
    for i, g in zip(idx, _results(setup, state, idx, budget and budget.thinking)):
      results[i] = g
  return results


def sweep(model: Qwen2, prompts: Sequence[Sequence[int]], budgets: Sequence[int],
          answer_tokens: int, *, placement: str | None = None, mode: str = "z1",
          trigger: str | None = None, trigger_ids: Sequence[int] | None = None,
          min_thinking: int = 0, wait_ids: Sequence[int] | None = None,
          eos_ids: Sequence[int] | None = None, temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
          seed: int = 0, tokenizer=None, batch_size: int | None = None,
          row_ids: Sequence[int] | None = None) -> dict[int, list[Generation]]:
  """`generate` at several thinking budgets, decoding the shared trunk once.

  For budgets B1 < ... < Bk the tokens before each budget's trigger step are the same for every
  larger budget (greedy, or sampled with position-derived keys), so one trunk is decoded up to
  the largest budget; at each trigger step a copy of the decode state (cache included) forks an
  answer branch, skipped when every row has already ended. Returns budget -> one `Generation`
  per prompt, equal to `generate(..., thinking_budget=B)` token for token.
  """
  tokenizer = resolve_tokenizer(tokenizer)
  if isinstance(budgets, int) or not len(budgets):
    raise Z1Error("budgets: expected a non-empty list of thinking budgets")
  budgets = sorted({int(b) for b in budgets})
  plans = [_budget(mode, b, answer_tokens, placement, trigger, trigger_ids, tokenizer,
                   None)[0] for b in budgets]
  marker = plans[0].marker_ids
  stop = plans[-1].stop
  setup = _setup(model, prompts, mode=mode, marker=marker, eos_ids=eos_ids,
                 temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                 tokenizer=tokenizer, batch_size=batch_size, row_ids=row_ids,
                 min_thinking=min_thinking, wait_ids=wait_ids)
  ctl = lambda trigger_step, stop: loop.controls(trigger_step, stop, answer_tokens,
                                                 setup.min_thinking, setup.seed)
  results = {b: [None] * len(setup.prompts) for b in budgets}
  for idx, arrays in _chunks(setup):
    trunk = _start(setup, arrays, ctl(loop.NEVER, plans[0].trigger_step), stop)
    for i, plan in enumerate(plans):
      trunk = _run(setup, trunk, ctl(loop.NEVER, plan.trigger_step))
      last = i == len(plans) - 1
      if bool(jax.device_get(trunk.done).all()):
        branch = trunk  # every row ended inside the window: nothing to branch
      else:
        branch = _run(setup, trunk if last else loop.fork(trunk), ctl(plan.trigger_step,
                                                                       plan.stop))
      for j, g in zip(idx, _results(setup, branch, idx, plan.thinking)):
        results[plan.thinking][j] = g
  return results


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
