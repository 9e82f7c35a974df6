"""The training loss, in one place: next-token cross-entropy through the chunked LM head."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from z1_jax.model.loss import chunked_cross_entropy


def token_loss(model, batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
  """(sum of next-token cross-entropies over target tokens in fp32, number of target tokens).

  `batch` holds `[B, L]` `inputs`, `targets`, `segment_ids`, `positions`, `loss_mask` (see
  `z1_jax.data.pack`). The caller divides by the target count of the whole global batch, so
  every target token weighs the same whatever row or micro-batch it sits in. The LM head runs
  chunk by chunk (`model/loss.py`): no `[B, L, V]` fp32 logits are ever held (5 GB per
  8,192-token row of 7B).
  """
  hidden = model(batch["inputs"], batch["segment_ids"], batch["positions"], return_hidden=True)
  loss_sum, _ = chunked_cross_entropy(hidden, model.head_weight(), batch["targets"],
                                      batch["loss_mask"], rules=model.rules)
  return loss_sum, jnp.sum(batch["loss_mask"].astype(jnp.int32))
