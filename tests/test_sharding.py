"""The logical-axis table, the mesh helper, and sharded execution on 8 CPU devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import z1_jax
from z1_jax.checkpoint.orbax_io import load_params, save_params
from z1_jax.errors import Z1Error
from z1_jax.infer.load import load_for_decoding
from z1_jax.model.sharding import DEFAULT_RULES, LogicalRules, make_mesh


def test_eight_devices_available():
  assert jax.device_count() == 8


def test_rules_map_logical_axes_to_mesh_axes():
  rules = LogicalRules(make_mesh(2, 2, 2))
  assert rules.spec(("embed", "mlp"), (64, 96)) == P("fsdp", "tensor")
  assert rules.spec(("batch", "seq", "act_embed"), (4, 8, 64)) == P(("data", "fsdp"), None, None)
  # 3 is not divisible by tensor=2: that dimension is replicated, the other stays split
  assert rules.spec(("embed", "kv_heads", "head_dim"), (64, 3, 16)) == P("fsdp", None, None)


def test_uneven_dimensions_are_errors_naming_the_array():
  """28 query heads on tensor=8 or a batch of 6 on 4 data shards would silently replicate the
  work; they are refused, naming the parameter, its size and the mesh axes. K/V heads are the
  allow-listed exception (replicated over tensor)."""
  from flax import nnx
  from z1_jax.model.qwen2 import abstract_model, state_shardings
  from z1_jax.model.sharding import UnevenShardingError
  rules = LogicalRules(make_mesh(1, 1, 8))
  cfg = z1_jax.get_preset("qwen2.5-coder-7b", num_layers=1)
  with pytest.raises(UnevenShardingError, match=r"parameter layers\.0\.attn\.o_proj of shape "
                     r"\(28, 128, 3584\): dimension 0 \('q_heads', size 28\) does not divide "
                     r"over mesh axes tensor=8"):
    state_shardings(nnx.state(abstract_model(cfg)), rules)
  with pytest.raises(UnevenShardingError, match=r"'batch', size 6\) does not divide over mesh "
                     r"axes data=4 x fsdp=2"):
    LogicalRules(make_mesh(4, 2, 1)).spec(("batch", "seq"), (6, 16))
  assert rules.spec(("embed", "kv_heads", "head_dim"), (3584, 4, 128)) == P(None, None, None)
  assert rules.spec(("batch", "act_kv_heads"), (8, 4)) == P(None, None)  # batch: data*fsdp=1


def test_rules_reject_one_mesh_axis_twice():
  rules = LogicalRules(make_mesh(1, 4, 2))
  with pytest.raises(ValueError, match="mesh axis 'tensor' used twice"):
    rules.spec(("q_heads", "mlp"), (8, 8))
  with pytest.raises(ValueError, match="named twice"):
    LogicalRules(make_mesh(8, 1, 1), DEFAULT_RULES + (("embed", ()),))
  with pytest.raises(ValueError, match="not in mesh"):
    LogicalRules(make_mesh(8, 1, 1), (("embed", ("model",)),))
  with pytest.raises(KeyError, match="no rule"):
    rules.spec(("nonsense",))


def test_make_mesh_shapes_and_errors():
  assert dict(make_mesh(-1, 2, 2).shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  assert dict(make_mesh(1, -1, 1).shape) == {"data": 1, "fsdp": 8, "tensor": 1}
  with pytest.raises(ValueError, match="needs 6 devices"):
    make_mesh(3, 2, 1)
  with pytest.raises(ValueError, match="at most one axis"):
    make_mesh(-1, -1, 1)


MESHES = [(8, 1, 1), (1, 4, 2), (2, 2, 2), (2, 1, 4), (1, 1, 8)]


@pytest.mark.parametrize("mesh_shape", MESHES)
def test_same_logits_on_one_and_eight_devices(hf_checkpoint, mesh_shape):
  _, path = hf_checkpoint("untied-gqa4-theta")  # 8 query heads, 2 KV heads
  tokens = jnp.asarray(np.random.RandomState(0).randint(0, 320, (8, 16)), jnp.int32)
  ref = np.asarray(z1_jax.load_hf(path)(tokens))
  mesh = make_mesh(*mesh_shape)
  model = z1_jax.load_hf(path, mesh=mesh)
  q = model.layers[0].attn.q_proj.get_value()
  k = model.layers[0].attn.k_proj.get_value()
  fsdp, tensor = mesh.shape["fsdp"], mesh.shape["tensor"]
  # Parameters really are split (not silently replicated); KV heads (2) replicate when tensor > 2
  assert q.sharding.spec == P("fsdp" if fsdp > 1 else None, "tensor" if tensor > 1 else None,
                              None)
  assert k.sharding.spec[1] == ("tensor" if tensor == 2 else None)
  assert q.addressable_shards[0].data.shape == (64 // fsdp, 8 // tensor, 8)
  out = jax.jit(lambda t: model(t))(tokens)
  assert np.abs(np.asarray(out) - ref).max() <= 1e-5


def test_create_model_is_born_sharded():
  cfg = z1_jax.get_preset("tiny")
  rules = LogicalRules(make_mesh(1, 4, 2))
  model = z1_jax.create_model(cfg, rules)
  embed = model.embed.get_value()
  assert embed.sharding.spec == P("tensor", "fsdp")
  assert embed.addressable_shards[0].data.shape == (cfg.vocab_size // 2, cfg.hidden_size // 4)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_orbax_restores_onto_another_mesh(hf_checkpoint, tmp_path, scan_layers):
  _, path = hf_checkpoint("tied-gqa2")
  tokens = jnp.asarray(np.random.RandomState(1).randint(0, 256, (4, 12)), jnp.int32)
  model = z1_jax.load_hf(path, mesh=make_mesh(1, 4, 2), scan_layers=scan_layers)
  ref = np.asarray(model(tokens))
  save_params(model, tmp_path / "ckpt")
  restored = load_params(tmp_path / "ckpt", mesh=make_mesh(4, 1, 2))
  leaf = restored.embed.get_value()
  assert dict(leaf.sharding.mesh.shape) == {"data": 4, "fsdp": 1, "tensor": 2}
  assert np.abs(np.asarray(restored(tokens)) - ref).max() <= 1e-5
  single = load_params(tmp_path / "ckpt")
  assert np.abs(np.asarray(single(tokens)) - ref).max() <= 1e-5


def test_kv_cache_decode_on_mesh_matches_single_device(hf_checkpoint):
  from z1_jax.infer.generate import greedy_generate
  _, path = hf_checkpoint("untied-gqa4-theta")
  prompts = [list(range(1, 9)), list(range(20, 25)), list(range(40, 52)), [7, 8]]
  ref = greedy_generate(z1_jax.load_hf(path), prompts, 6)
  mesh = make_mesh(2, 1, 4)
  # 2 KV heads over tensor=4: the paged cache refuses split heads, naming the loader that fits
  with pytest.raises(Z1Error, match="whole KV heads.*load_for_decoding"):
    greedy_generate(z1_jax.load_hf(path, mesh=mesh), prompts, 6)
  out = greedy_generate(load_for_decoding(hf=str(path), mesh=mesh, dtype="float32"), prompts, 6)
  assert out == ref
