"""The chunked LM-head loss equals the plain one (values and gradients) on packed rows."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import z1_jax
from z1_jax.model.loss import chunked_cross_entropy, token_losses
from z1_jax.model.sharding import LogicalRules, make_mesh


def plain(hidden, head, targets, mask):
  losses = token_losses(hidden, head, targets)
  return jnp.sum(losses * mask), jnp.sum(mask.astype(jnp.float32))


@pytest.mark.parametrize("chunk", [16, 24, 64])  # divides L, does not, covers all of it
def test_chunked_equals_plain_values_and_grads(chunk):
  rng = np.random.RandomState(0)
  b, l, e, v = 2, 48, 32, 200
  hidden = jnp.asarray(rng.randn(b, l, e), jnp.float32)
  head = jnp.asarray(rng.randn(v, e) * 0.3, jnp.float32)
  targets = jnp.asarray(rng.randint(0, v, (b, l)), jnp.int32)
  mask = jnp.asarray(rng.rand(b, l) < 0.6)
  want, want_n = plain(hidden, head, targets, mask)
  got, got_n = jax.jit(lambda *a: chunked_cross_entropy(*a, chunk=chunk))(hidden, head,
                                                                          targets, mask)
  assert float(got_n) == float(want_n) == float(mask.sum())
  np.testing.assert_allclose(got, want, rtol=1e-6)
  grad = lambda f: jax.jit(jax.grad(lambda h, w: f(h, w, targets, mask)[0], (0, 1)))(hidden,
                                                                                      head)
  for g, w in zip(grad(lambda *a: chunked_cross_entropy(*a, chunk=chunk)), grad(plain)):
    np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-5)


def test_model_hidden_path_equals_logits_path_sharded():
  """`model(..., return_hidden=True)` + the chunked loss on a 4-device mesh (vocab over
  tensor) equals log-softmax of the model's own logits: values and parameter gradients."""
  cfg = z1_jax.get_preset("tiny-untied", vocab_size=256, num_layers=1)
  rules = LogicalRules(make_mesh(2, 1, 2, devices=jax.devices()[:4]))
  model = z1_jax.create_model(cfg, rules)
  rng = np.random.RandomState(1)
  tokens = jnp.asarray(rng.randint(0, 256, (2, 40)), jnp.int32)
  targets = jnp.asarray(rng.randint(0, 256, (2, 40)), jnp.int32)
  mask = jnp.asarray(rng.rand(2, 40) < 0.5)
  graphdef, params = nnx.split(model)

  def chunked(params):
    m = nnx.merge(graphdef, params)
    return chunked_cross_entropy(m(tokens, return_hidden=True), m.head_weight(), targets, mask,
                                 chunk=16, rules=rules)[0]

  def reference(params):
    logp = jax.nn.log_softmax(nnx.merge(graphdef, params)(tokens), axis=-1)
    return -jnp.sum(jnp.take_along_axis(logp, targets[..., None], -1)[..., 0] * mask)

  (got, got_g), (want, want_g) = (jax.jit(jax.value_and_grad(f))(params)
                                  for f in (chunked, reference))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  for g, w in zip(jax.tree.leaves(got_g), jax.tree.leaves(want_g)):
    np.testing.assert_allclose(g, w, atol=1e-6, rtol=1e-4)


def test_chunked_loss_never_holds_a_rows_logits():
  """Compiled forward+backward: temporaries stay far below one [B, L, V] fp32 logits buffer."""
  b, l, e, v = 2, 1024, 32, 4096
  args = (jax.ShapeDtypeStruct((b, l, e), jnp.float32), jax.ShapeDtypeStruct((v, e), jnp.float32),
          jax.ShapeDtypeStruct((b, l), jnp.int32), jax.ShapeDtypeStruct((b, l), jnp.bool_))
  logits_bytes = b * l * v * 4  # 32 MiB

  def temp_bytes(loss):
    grad = jax.grad(lambda h, w, t, m: loss(h, w, t, m)[0], (0, 1))
    return jax.jit(grad).trace(*args).lower().compile().memory_analysis().temp_size_in_bytes

  assert temp_bytes(plain) >= logits_bytes  # the reference does hold them
  # one chunk is 1/16 of the row; its logits, softmax and their gradient live together
  assert temp_bytes(lambda *a: chunked_cross_entropy(*a, chunk=64)) < logits_bytes / 4
