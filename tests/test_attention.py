"""Every attention implementation equals the dense reference on packed rows: values and
gradients (splash in interpret mode on CPU; cuDNN's call through XLA)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import z1_jax
from z1_jax.model import attention
from z1_jax.model.qwen2 import _attend, abstract_model
from z1_jax.model.sharding import LogicalRules, make_mesh


def packed(b_cuts, length):
  """Segment ids and positions for rows packed at the given cut points (rest: padding)."""
  seg = np.zeros((len(b_cuts), length), np.int32)
  pos = np.zeros((len(b_cuts), length), np.int32)
  for b, cuts in enumerate(b_cuts):
    for i, (lo, hi) in enumerate(zip(cuts[:-1], cuts[1:])):
      seg[b, lo:hi], pos[b, lo:hi] = i + 1, np.arange(hi - lo)
  return jnp.asarray(seg), jnp.asarray(pos)


def qkv(b, l, s, h, kh, d, seed=0):
  rng = np.random.RandomState(seed)
  return (jnp.asarray(rng.randn(b, l, h, d), jnp.float32),
          jnp.asarray(rng.randn(b, kh, s, d), jnp.float32),
          jnp.asarray(rng.randn(b, kh, s, d), jnp.float32))


def value_and_grads(fn, q, k, v, valid):
  """A loss over the valid (non-padding) query rows, its q/k/v gradients, and the output."""
  def loss(q, k, v):
    out = fn(q, k, v)
    return jnp.sum(jnp.where(valid[:, :, None, None], out, 0) * jnp.cos(3 * out)), out
  (value, out), grads = jax.jit(jax.value_and_grad(loss, (0, 1, 2), has_aux=True))(q, k, v)
  return value, jnp.where(valid[:, :, None, None], out, 0), grads


def assert_same(fn, ref, q, k, v, valid, tol=2e-5):
  got, want = value_and_grads(fn, q, k, v, valid), value_and_grads(ref, q, k, v, valid)
  assert abs(float(got[0] - want[0])) <= tol * max(1.0, abs(float(want[0])))
  np.testing.assert_allclose(got[1], want[1], atol=tol)
  for g, w in zip(got[2], want[2]):
    np.testing.assert_allclose(g, w, atol=tol * 10)


@pytest.mark.parametrize("causal", [False, True])
def test_blockwise_equals_dense_on_packed_rows(causal):
  seg, pos = packed([[0, 100, 250, 290], [0, 40, 300]], 300)  # 300: not a block multiple
  q, k, v = qkv(2, 300, 300, 4, 2, 16)
  ref = lambda q, k, v: _attend(q, k, v, seg, pos, seg, pos)
  fn = lambda q, k, v: attention.blockwise_attention(q, k, v, seg, pos, seg, pos, causal, 64)
  assert_same(fn, ref, q, k, v, seg != 0)


def test_blockwise_equals_dense_against_a_kv_cache():
  """Queries at the end of a row read a 40-slot cache holding two rows' worth of slots, some
  empty (segment 0): the decode/prefill-with-cache case."""
  kv_seg, kv_pos = packed([[0, 30], [5, 38]], 40)
  q_seg, q_pos = kv_seg[:, 26:30], kv_pos[:, 26:30]
  q, k, v = qkv(2, 4, 40, 4, 1, 8, seed=1)
  ref = lambda q, k, v: _attend(q, k, v, q_seg, q_pos, kv_seg, kv_pos)
  fn = lambda q, k, v: attention.blockwise_attention(q, k, v, q_seg, q_pos, kv_seg, kv_pos,
                                                     False, 16)
  assert_same(fn, ref, q, k, v, q_seg != 0)


@pytest.mark.parametrize("mesh_shape", [None, (1, 1, 4)])
def test_splash_equals_dense_in_interpret_mode(mesh_shape):
  """Splash under shard_map: (1, 1, 4) splits 4 query heads over tensor=4 while the 2 KV heads
  are replicated, so each shard picks its one KV head."""
  seg, pos = packed([[0, 100, 250, 256], [0, 40, 200]], 256)
  q, k, v = qkv(2, 256, 256, 4, 2, 32)
  rules = None if mesh_shape is None else LogicalRules(
      make_mesh(*mesh_shape, devices=jax.devices()[:4]))
  mesh = None if rules is None else rules.mesh
  ref = lambda q, k, v: _attend(q, k, v, seg, pos, seg, pos)
  fn = lambda q, k, v: attention.splash_attention(q, k, v, seg, mesh, rules, interpret=True,
                                                  block=128)
  assert_same(fn, ref, q, k, v, seg != 0)


def test_cudnn_call_equals_dense_through_xla():
  """The cuDNN path's layout, causal flag, segment mask and scale, run by XLA on CPU (no GPU
  here): only `implementation` differs from what a GPU runs."""
  seg, pos = packed([[0, 10, 50, 60], [0, 64]], 64)
  q, k, v = qkv(2, 64, 64, 8, 2, 16, seed=2)
  ref = lambda q, k, v: _attend(q, k, v, seg, pos, seg, pos)
  fn = lambda q, k, v: attention.cudnn_attention(q, k, v, seg, implementation="xla")
  assert_same(fn, ref, q, k, v, seg != 0)


def test_auto_picks_the_platforms_best():
  assert attention.resolve_impl("auto", "tpu", True, 8192, 8192) == "splash"
  assert attention.resolve_impl("auto", "gpu", True, 8192, 8192) == "cudnn"
  assert attention.resolve_impl("auto", "cpu", True, 512, 512) == "dense"
  assert attention.resolve_impl("auto", "cpu", True, 8192, 8192) == "blockwise"
  assert attention.resolve_impl("auto", "tpu", False, 1, 32768) == "dense"  # a decode step
  assert attention.resolve_impl("auto", "tpu", False, 4096, 8192) == "blockwise"  # long prefill
  assert attention.resolve_impl("splash", "tpu", False, 64, 64) == "dense"  # cache path
  with pytest.raises(ValueError, match="attention_impl='flash'"):
    z1_jax.get_preset("tiny", attention_impl="flash")


def test_model_loss_and_grads_match_dense():
  """The model on packed rows, sharded over 4 devices: same loss and parameter gradients with
  each implementation dispatched from `attend`."""
  from flax import nnx
  cfg = z1_jax.get_preset("tiny", vocab_size=512, hidden_size=64, num_heads=2, num_kv_heads=1,
                          head_dim=32, num_layers=1)
  seg, pos = packed([[0, 70, 128], [0, 128]], 128)
  tokens = jnp.asarray(np.random.RandomState(3).randint(0, 512, (2, 128)), jnp.int32)
  rules = LogicalRules(make_mesh(1, 2, 2, devices=jax.devices()[:4]))

  params = nnx.state(z1_jax.create_model(cfg, rules))

  def run(attention_impl):
    graphdef = nnx.split(abstract_model(cfg.replace(attention_impl=attention_impl), rules))[0]

    @jax.jit
    def loss_and_grads(params):
      def loss(params):
        logits = nnx.merge(graphdef, params)(tokens, seg, pos)
        return jnp.sum(jnp.where((seg != 0)[..., None], jax.nn.log_softmax(logits), 0)[..., :8])
      return jax.value_and_grad(loss)(params)
    return loss_and_grads(params)

  want, want_g = run("dense")
  for impl in ("blockwise", "splash"):
    got, got_g = run(impl)
    assert abs(float(got - want)) <= 1e-4 * abs(float(want)), impl
    for g, w in zip(jax.tree.leaves(got_g), jax.tree.leaves(want_g)):
      np.testing.assert_allclose(g, w, atol=2e-5, rtol=1e-3, err_msg=impl)
