"""Next-token cross-entropy through the LM head, chunked along the sequence.

Full fp32 logits `[B, L, V]` are 5 GB per 8,192-token row of Qwen2.5-7B (V = 152,064): more than
the rest of a layer's activations together. `chunked_cross_entropy` applies the head to
`chunk` positions at a time inside a `lax.scan` whose body is rematerialised, so only one
`[B, chunk, V]` block of fp32 logits is alive at once, in the forward and the backward pass.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from z1_jax.model.sharding import LogicalRules

CHUNK = 1024  # positions per head application: [B, 1024, 152064] fp32 is 0.6 GB per row


def token_losses(hidden: jax.Array, head: jax.Array, targets: jax.Array,
                 rules: LogicalRules | None = None) -> jax.Array:
  """Per-position cross-entropy `[B, L]` (fp32) of `targets` under `hidden @ head.T`; the
  plain reference (materialises `[B, L, V]` fp32 logits)."""
  logits = jnp.einsum("ble,ve->blv", hidden, head.astype(hidden.dtype),
                      preferred_element_type=jnp.float32)
  if rules is not None:
    logits = rules.constrain(logits, ("batch", "seq", "act_vocab"))
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return jax.nn.logsumexp(logits, axis=-1) - target_logit


def chunked_cross_entropy(hidden: jax.Array, head: jax.Array, targets: jax.Array,
                          loss_mask: jax.Array, chunk: int = CHUNK,
                          rules: LogicalRules | None = None) -> tuple[jax.Array, jax.Array]:
  """(sum of masked token losses as fp32, number of masked tokens as int32).

  hidden `[B, L, E]` (final normed states, `model(..., return_hidden=True)`), head `[V, E]`
  (`model.head_weight()`), targets int `[B, L]`, loss_mask `[B, L]` (bool or 0/1). L need not
  be a multiple of `chunk` (the tail is padded with masked positions).
  """
  b, l, e = hidden.shape
  c = min(chunk, l)
  n = -(-l // c)
  pad = n * c - l
  mask = loss_mask.astype(jnp.float32)
  if pad:
    hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
    targets = jnp.pad(targets, ((0, 0), (0, pad)))
    mask = jnp.pad(mask, ((0, 0), (0, pad)))
  # [n, B, c, ...]: the scan walks the chunks; batch stays split as the model split it.
  split = lambda x: jnp.moveaxis(x.reshape(b, n, c, *x.shape[2:]), 1, 0)

  @jax.checkpoint  # backward recomputes each chunk's logits instead of keeping all of them
  def chunk_loss(total, xs):
    h, t, m = xs
    if rules is not None:
      h = rules.constrain(h, ("batch", "seq", "act_embed"))
    losses = token_losses(h, head, t, rules)
    if rules is not None:
      losses = rules.constrain(losses, ("batch", "seq"))
    return total + jnp.sum(losses * m), None

  total, _ = jax.lax.scan(chunk_loss, jnp.zeros((), jnp.float32),
                          (split(hidden), split(targets), split(mask)))
  return total, jnp.sum(loss_mask != 0).astype(jnp.int32)
