"""Single jitted prefill and decode steps over a KV cache (the forward benchmark times them),
and `greedy_generate`, a short form of `infer.generate.generate`.

Prompts in a batch are left-padded: padding slots get segment id 0 (never visible) and every
row writes its next token to the same cache slot, so one scalar index drives the whole batch.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from z1_jax.model.qwen2 import KVCache, Qwen2


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


def left_pad(prompts: list[list[int]], pad_id: int = 0, width: int | None = None):
  """tokens, segment_ids (0 on padding), positions (0.. per row) as int32 `[B, width]`
  (default width: the longest prompt)."""
  width = width or max(len(p) for p in prompts)
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
  from z1_jax.infer.generate import generate
  out = generate(model, prompts, max_new_tokens=max_new_tokens,
                 eos_ids=[] if eos_id is None else [eos_id])
  return [g.tokens for g in out]
