"""Presets against the published numbers, and HF config.json conversion."""

import pytest
import transformers

from z1_jax.model.config import PRESETS, from_hf_config, get_preset, to_hf_config


def test_7b_preset_matches_z1_facts():
  c = get_preset("qwen2.5-coder-7b-instruct")
  assert (c.hidden_size, c.num_layers, c.num_heads, c.num_kv_heads, c.dim_per_head) == (
      3584, 28, 28, 4, 128)
  assert (c.intermediate_size, c.rms_norm_eps, c.rope_theta, c.vocab_size) == (
      18944, 1e-6, 1e6, 152064)
  assert c.tie_word_embeddings is False and c.max_position_embeddings == 32768
  assert (c.bos_token_id, c.eos_token_id, c.pad_token_id) == (151643, 151645, 151643)
  assert abs(c.num_params() - 7.62e9) / 7.62e9 < 0.01  # published: 7.61B


@pytest.mark.parametrize("size, params_b", [("0.5b", 0.49), ("1.5b", 1.54), ("3b", 3.09),
                                            ("14b", 14.7), ("32b", 32.8)])
def test_preset_sizes(size, params_b):
  for name in (f"qwen2.5-{size}", f"qwen2.5-coder-{size}-instruct"):
    assert abs(get_preset(name).num_params() / 1e9 - params_b) / params_b < 0.02
  assert get_preset(f"qwen2.5-{size}").tie_word_embeddings == (size in ("0.5b", "1.5b", "3b"))


def test_unknown_preset_lists_known_ones():
  with pytest.raises(KeyError, match="qwen2.5-coder-7b"):
    get_preset("qwen3-7b")


def test_hf_config_round_trip_through_transformers():
  for name in ("qwen2.5-0.5b", "qwen2.5-coder-7b", "tiny-untied"):
    cfg = PRESETS[name]
    hf = transformers.Qwen2Config(**{k: v for k, v in to_hf_config(cfg).items()
                                     if k not in ("architectures", "model_type")})
    d = hf.to_dict()
    d["architectures"] = ["Qwen2ForCausalLM"]
    assert from_hf_config(d) == cfg


def test_rejects_unsupported_configs():
  base = to_hf_config(get_preset("tiny"))
  with pytest.raises(ValueError, match="missing key 'hidden_size'"):
    from_hf_config({k: v for k, v in base.items() if k != "hidden_size"})
  with pytest.raises(ValueError, match="rope type 'yarn'"):
    from_hf_config({**base, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})
  with pytest.raises(ValueError, match="remat_policy"):
    get_preset("tiny", remat_policy="sometimes")
