"""HF safetensors import/export: round trips, transformers loading, and bad input."""

import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

import z1_jax
from z1_jax.checkpoint import hf as hf_io
from z1_jax.data.tokenizer import offline_tokenizer_dir


def _tensors(path):
  files = sorted(path.glob("*.safetensors"))
  out = {}
  for f in files:
    out.update(load_file(f))
  return out


@pytest.mark.parametrize("name", ["tied-gqa2", "untied-gqa4-theta"])
@pytest.mark.parametrize("scan_layers", [False, True])
def test_round_trip_is_bit_identical(hf_checkpoint, tmp_path, name, scan_layers):
  _, path = hf_checkpoint(name)
  model = z1_jax.load_hf(path, scan_layers=scan_layers)
  out = z1_jax.save_hf(model, tmp_path / "out", dtype="float32")
  a, b = _tensors(path), _tensors(out)
  assert sorted(a) == sorted(b)
  for k in a:
    assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k


def test_export_loads_in_transformers_sharded_with_tokenizer(hf_checkpoint, tmp_path):
  hf, path = hf_checkpoint("untied-gqa4-theta")
  model = z1_jax.load_hf(path)
  out = z1_jax.save_hf(model, tmp_path / "export", dtype="float32", max_shard_size="100KB",
                       tokenizer=offline_tokenizer_dir())
  shards = sorted(out.glob("model-*.safetensors"))
  assert len(shards) > 1
  index = json.loads((out / "model.safetensors.index.json").read_text())
  assert set(index["weight_map"].values()) == {s.name for s in shards}
  assert (out / "tokenizer.json").exists() and (out / "generation_config.json").exists()
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
  tokens = torch.as_tensor(np.random.RandomState(0).randint(0, 320, (2, 13)))
  with torch.no_grad():
    diff = (reloaded(tokens).logits - hf(tokens).logits).abs().max().item()
  assert diff == 0.0
  ours = np.asarray(model(jnp.asarray(tokens.numpy(), jnp.int32)))
  assert np.abs(ours - reloaded(tokens).logits.detach().numpy()).max() <= 1e-4
  assert transformers.AutoTokenizer.from_pretrained(out)("hi")["input_ids"] == [6023]


def test_bf16_export_and_import(hf_checkpoint, tmp_path):
  _, path = hf_checkpoint("tied-gqa2")
  model = z1_jax.load_hf(path, dtype="bfloat16")
  assert model.embed.get_value().dtype == jnp.bfloat16
  out = z1_jax.save_hf(model, tmp_path / "bf16")  # default dtype bfloat16
  assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
  again = z1_jax.load_hf(out, dtype="bfloat16")
  assert np.array_equal(np.asarray(again.embed.get_value()), np.asarray(model.embed.get_value()))
  hf = transformers.AutoModelForCausalLM.from_pretrained(out)
  assert hf.model.embed_tokens.weight.dtype == torch.bfloat16


def test_export_is_atomic(hf_checkpoint, tmp_path, monkeypatch):
  _, path = hf_checkpoint("tied-gqa2")
  model = z1_jax.load_hf(path)
  calls = []
  real = hf_io._save_safetensors

  def fail_on_second_shard(tensors, dest):
    calls.append(dest)
    if len(calls) == 2:
      raise KeyboardInterrupt("interrupted")
    real(tensors, dest)

  monkeypatch.setattr(hf_io, "_save_safetensors", fail_on_second_shard)
  with pytest.raises(KeyboardInterrupt):
    z1_jax.save_hf(model, tmp_path / "out", max_shard_size="20KB")
  assert len(calls) == 2
  assert list(tmp_path.iterdir()) == []  # no target, no temporary directory left behind
  (tmp_path / "out").mkdir()
  with pytest.raises(FileExistsError, match="overwrite=True"):
    z1_jax.save_hf(model, tmp_path / "out")


def _broken_copy(path, tmp_path, edit):
  dst = tmp_path / "broken"
  shutil.copytree(path, dst)
  tensors = load_file(dst / "model.safetensors")
  cfg = json.loads((dst / "config.json").read_text())
  edit(tensors, cfg)
  save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
  (dst / "config.json").write_text(json.dumps(cfg))
  return dst


def test_missing_tensor_is_named(hf_checkpoint, tmp_path):
  _, path = hf_checkpoint("untied-gqa4-theta")
  bad = _broken_copy(path, tmp_path, lambda t, c: t.pop("model.layers.1.mlp.up_proj.weight"))
  with pytest.raises(z1_jax.CheckpointError, match=r"missing .*model\.layers\.1\.mlp\.up_proj"):
    z1_jax.load_hf(bad)


def test_extra_tensor_is_named(hf_checkpoint, tmp_path):
  _, path = hf_checkpoint("tied-gqa2")
  bad = _broken_copy(path, tmp_path,
                     lambda t, c: t.update({"model.extra.weight": np.zeros(3, np.float32)}))
  with pytest.raises(z1_jax.CheckpointError, match=r"does not use.*model\.extra\.weight"):
    z1_jax.load_hf(bad)


def test_tied_config_with_lm_head_is_an_error(hf_checkpoint, tmp_path):
  _, path = hf_checkpoint("tied-gqa2")
  bad = _broken_copy(path, tmp_path, lambda t, c: t.update(
      {"lm_head.weight": t["model.embed_tokens.weight"].copy()}))
  with pytest.raises(z1_jax.CheckpointError, match="tie_word_embeddings=true"):
    z1_jax.load_hf(bad)


def test_wrong_shape_names_key_and_both_shapes(hf_checkpoint, tmp_path):
  _, path = hf_checkpoint("tied-gqa2")
  key = "model.layers.0.self_attn.k_proj.weight"
  bad = _broken_copy(path, tmp_path, lambda t, c: t.update({key: np.zeros((64, 64), np.float32)}))
  with pytest.raises(z1_jax.CheckpointError,
                     match=r"k_proj\.weight' has shape \(64, 64\), the config expects \(32, 64\)"):
    z1_jax.load_hf(bad)


def test_other_architecture_is_rejected(hf_checkpoint, tmp_path):
  _, path = hf_checkpoint("tied-gqa2")

  def llama(t, c):
    c["model_type"], c["architectures"] = "llama", ["LlamaForCausalLM"]

  with pytest.raises(ValueError, match=r"config\.json: model_type='llama'.*Qwen2ForCausalLM"):
    z1_jax.load_hf(_broken_copy(path, tmp_path, llama))


def test_missing_paths_are_clear(tmp_path):
  with pytest.raises(FileNotFoundError, match="checkpoint directory not found"):
    z1_jax.load_hf(tmp_path / "nope")
  (tmp_path / "empty").mkdir()
  with pytest.raises(z1_jax.CheckpointError, match="missing config.json"):
    z1_jax.load_hf(tmp_path / "empty")


@pytest.mark.parametrize("cut", ["header", "data"])
def test_truncated_safetensors_is_named(hf_checkpoint, tmp_path, cut, capsys):
  """A download cut short: CheckpointError (exit 2) naming the file, not a SafetensorError."""
  import shutil
  _, path = hf_checkpoint("tied-gqa2")
  bad = tmp_path / "bad"
  shutil.copytree(path, bad)
  f = bad / "model.safetensors"
  data = f.read_bytes()
  f.write_bytes(data[:20] if cut == "header" else data[:len(data) // 2])
  with pytest.raises(hf_io.CheckpointError, match=rf"{f}: .*(not a readable safetensors|truncated)"):
    hf_io.load_hf(bad)


def test_sharded_load_builds_only_each_devices_shard(hf_checkpoint, monkeypatch):
  """Stacked (scanned) layers onto fsdp x tensor: equal to the one-device load, and no host
  buffer larger than one device's shard plus one HF tensor is built."""
  import jax
  from z1_jax.model.sharding import make_mesh
  from flax import nnx
  hf = hf_io
  _, path = hf_checkpoint("untied-gqa4-theta")
  ref = hf_io.load_hf(path, scan_layers=True)
  sizes = []
  orig = np.empty

  def spy(shape, *a, **k):
    out = orig(shape, *a, **k)
    sizes.append(out.size)
    return out
  monkeypatch.setattr(hf.np, "empty", spy)
  mesh = make_mesh(1, 4, 2)
  model = hf_io.load_hf(path, scan_layers=True, mesh=mesh)
  monkeypatch.undo()
  for (p, a), (_, b) in zip(jax.tree_util.tree_leaves_with_path(
      nnx.to_pure_dict(nnx.state(ref))), jax.tree_util.tree_leaves_with_path(
      nnx.to_pure_dict(nnx.state(model)))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(p))
  biggest = max(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.to_pure_dict(nnx.state(ref))))
  assert max(sizes) <= biggest // 4  # the largest parameter, split at least 4 ways
