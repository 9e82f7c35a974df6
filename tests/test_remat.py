"""Named remat policies: each keeps exactly the activations it names, gradients unchanged."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.ad_checkpoint import print_saved_residuals

import z1_jax
from z1_jax.errors import Z1Error
from z1_jax.model.qwen2 import abstract_model
from z1_jax.model.remat import CHECKPOINT_NAMES, parse_policy

TOKENS = jnp.asarray(np.random.RandomState(0).randint(0, 256, (2, 16)), jnp.int32)
CFG = z1_jax.get_preset("tiny", vocab_size=256, num_layers=1)
PARAMS = nnx.state(z1_jax.create_model(CFG))


def loss_fn(policy):
  graphdef = nnx.split(abstract_model(CFG.replace(remat_policy=policy)))[0]
  return lambda p: jnp.sum(jnp.tanh(nnx.merge(graphdef, p)(TOKENS)))


@functools.cache
def reference_grads():
  return jax.grad(loss_fn("none"))(PARAMS)


@pytest.mark.parametrize("policy, kept", [
    ("full", set()),
    ("save_qkv_attn", {"query", "key", "value", "attn_out"}),
    # mlp_out is never a residual when the layer is the remat unit: the residual add after it
    # needs no input in the backward pass; named for policies over larger units all the same.
    ("minimal", set(CHECKPOINT_NAMES) - {"mlp_out"}),
    ("save:attn_proj,mlp_hidden", {"attn_proj", "mlp_hidden"}),
])
def test_policy_saves_exactly_the_named_activations(policy, kept, capsys):
  fn = loss_fn(policy)
  print_saved_residuals(fn, PARAMS)
  assert set(re.findall(r"named '(\w+)'", capsys.readouterr().out)) == kept
  for g, w in zip(jax.tree.leaves(jax.grad(fn)(PARAMS)), jax.tree.leaves(reference_grads())):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7)


def test_bad_and_offload_policies_are_refused_clearly():
  assert parse_policy("save:query;offload:mlp_out") == (("query",), ("mlp_out",))
  with pytest.raises(Z1Error, match="unknown activation 'q'"):
    parse_policy("save:q")
  with pytest.raises(Z1Error, match="expected one of none, full"):
    parse_policy("everything")
  fn = loss_fn("offload_qkv_attn")  # CPU devices have no pinned host memory space
  with pytest.raises(Z1Error, match="offloads activations to host memory, which cpu devices"):
    jax.grad(fn)(PARAMS)
