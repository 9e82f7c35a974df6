"""Jitted prefill and single-token decode steps over a KV cache, and plain greedy generation.

Prompts in a batch are left-padded: padding slots get segment id 0 (never visible) and every
row writes its next token to the same cache slot, so one scalar index drives the whole batch.
The Shifted-Thinking-Window sampler (inference issue) builds on these two steps.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from z1_jax.model.qwen2 import KVCache, Qwen2, init_cache


@functools.partial(jax.jit, static_argnums=0, donate_argnames="cache")
def prefill(graphdef, state, tokens, segment_ids, positions, cache: KVCache):
  """Writes the prompt into cache slots [0, L); returns last-position logits `[B, V]`."""
  model = nnx.merge(graphdef, state)
  logits, cache = model(tokens, segment_ids, positions, cache=cache, last_only=True,
                        prefill=True)
  return logits[:, 0], cache


@functools.partial(jax.jit, static_argnums=0, donate_argnames="cache")
def decode_step(graphdef, state, token, position, cache: KVCache, index):
  """One token per row (`token`, `position`: `[B]`) written at slot `index`; logits `[B, V]`."""
  model = nnx.merge(graphdef, state)
  ones = jnp.ones_like(token)[:, None]
  logits, cache = model(token[:, None], ones, position[:, None], cache=cache, cache_index=index)
  return logits[:, 0], cache


def left_pad(prompts: list[list[int]], pad_id: int = 0):
  """tokens, segment_ids (0 on padding), positions (0.. per row) as int32 `[B, P]`."""
  width = max(len(p) for p in prompts)
  tokens = np.full((len(prompts), width), pad_id, np.int32)
  segment_ids = np.zeros_like(tokens)
  positions = np.zeros_like(tokens)
  for i, p in enumerate(prompts):
    tokens[i, width - len(p):] = p
    segment_ids[i, width - len(p):] = 1
    positions[i, width - len(p):] = np.arange(len(p))
  return tokens, segment_ids, positions


def greedy_generate(model: Qwen2, prompts: list[list[int]], max_new_tokens: int,
                    eos_id: int | None = None) -> list[list[int]]:
  """Greedy continuation of each prompt (stops a row at `eos_id`, which is kept)."""
  graphdef, state = nnx.split(model)
  tokens, segment_ids, positions = left_pad(prompts)
  b, p = tokens.shape
  cache = init_cache(model.cfg, b, p + max_new_tokens, model.rules)
  logits, cache = prefill(graphdef, state, tokens, segment_ids, positions, cache)
  next_pos = jnp.asarray([len(x) for x in prompts], jnp.int32)
  out = []
  for step in range(max_new_tokens):
    token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    out.append(token)
    if step + 1 < max_new_tokens:
      logits, cache = decode_step(graphdef, state, token, next_pos + step, cache, p + step)
  generated = np.asarray(jnp.stack(out, axis=1))
  result = []
  for row in generated.tolist():
    if eos_id is not None and eos_id in row:
      row = row[:row.index(eos_id) + 1]
    result.append(row)
  return result
