"""The training loss, in one place (a chunked LM-head version can replace the body)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def token_loss(model, batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
  """(sum of next-token cross-entropies over target tokens in fp32, number of target tokens).

  `batch` holds `[B, L]` `inputs`, `targets`, `segment_ids`, `positions`, `loss_mask` (see
  `z1_jax.data.pack`). The caller divides by the target count of the whole global batch, so
  every target token weighs the same whatever row or micro-batch it sits in.
  """
  logits = model(batch["inputs"], batch["segment_ids"], batch["positions"])  # fp32 [B, L, V]
  logz = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, batch["targets"][..., None], axis=-1)[..., 0]
  mask = batch["loss_mask"].astype(jnp.float32)
  return jnp.sum((logz - target_logit) * mask), jnp.sum(batch["loss_mask"].astype(jnp.int32))
