"""Qwen2 model configuration, named presets, and conversion to/from HF `config.json`."""

from __future__ import annotations

import dataclasses
from typing import Any

from z1_jax.errors import Z1Error, Z1KeyError
from z1_jax.model.remat import parse_policy as parse_remat_policy

ATTENTION_IMPLS = ("auto", "dense", "blockwise", "splash", "cudnn")


@dataclasses.dataclass(frozen=True)
class Qwen2Config:
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int | None = None  # None: hidden_size // num_heads (as in HF Qwen2)
  rms_norm_eps: float = 1e-6
  rope_theta: float = 1_000_000.0
  max_position_embeddings: int = 32768
  tie_word_embeddings: bool = False
  # Numerics: parameters are stored in param_dtype; matmuls run in dtype; softmax, RoPE tables,
  # norms' statistics and logits are always fp32.
  param_dtype: str = "float32"
  dtype: str = "float32"
  # Layers as one stacked module run by lax.scan (fast compiles on big meshes) or as a list of
  # separate modules (no per-step weight slicing: faster decode, especially on CPU).
  scan_layers: bool = False
  remat_policy: str = "none"  # see model/remat.py: none, full, save_qkv_attn, offload_..., ...
  # "auto" (best the platform has), "dense", "blockwise", "splash" (TPU), "cudnn" (NVIDIA GPU):
  # see model/attention.py.
  attention_impl: str = "auto"
  # Special ids (Qwen2.5 tokenizer). The pad id is also a real token: never build masks from it.
  bos_token_id: int = 151643
  eos_token_id: int = 151645
  pad_token_id: int = 151643

  def __post_init__(self):
    parse_remat_policy(self.remat_policy)  # raises, naming the policy or activation
    if self.attention_impl not in ATTENTION_IMPLS:
      raise Z1Error(f"attention_impl={self.attention_impl!r}: expected one of "
                    f"{ATTENTION_IMPLS}")
    if self.num_heads % self.num_kv_heads:
      raise Z1Error(
          f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
    for name in ("param_dtype", "dtype"):
      if getattr(self, name) not in ("float32", "bfloat16", "float16"):
        raise Z1Error(f"{name}={getattr(self, name)!r}: expected float32, bfloat16 or float16")

  @property
  def dim_per_head(self) -> int:
    return self.head_dim or self.hidden_size // self.num_heads

  def replace(self, **kw) -> "Qwen2Config":
    return dataclasses.replace(self, **kw)

  def num_params(self) -> int:
    e, f, d = self.hidden_size, self.intermediate_size, self.dim_per_head
    attn = e * d * (self.num_heads * 2 + self.num_kv_heads * 2) + d * (self.num_heads +
                                                                       2 * self.num_kv_heads)
    layer = attn + 3 * e * f + 2 * e
    emb = self.vocab_size * e * (1 if self.tie_word_embeddings else 2)
    return self.num_layers * layer + emb + e


def _qwen(vocab, hidden, inter, layers, heads, kv, tied) -> Qwen2Config:
  return Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter,
                     num_layers=layers, num_heads=heads, num_kv_heads=kv,
                     tie_word_embeddings=tied)


# Values of the published Qwen2.5 / Qwen2.5-Coder config.json files. Base, Instruct and Coder
# variants of one size share the architecture.
_SIZES = {
    "0.5b": _qwen(151936, 896, 4864, 24, 14, 2, True),
    "1.5b": _qwen(151936, 1536, 8960, 28, 12, 2, True),
    "3b": _qwen(151936, 2048, 11008, 36, 16, 2, True),
    "7b": _qwen(152064, 3584, 18944, 28, 28, 4, False),
    "14b": _qwen(152064, 5120, 13824, 48, 40, 8, False),
    "32b": _qwen(152064, 5120, 27648, 64, 40, 8, False),
}

PRESETS: dict[str, Qwen2Config] = {}
for _size, _cfg in _SIZES.items():
  for _family in ("qwen2.5", "qwen2.5-coder"):
    PRESETS[f"{_family}-{_size}"] = _cfg
    PRESETS[f"{_family}-{_size}-instruct"] = _cfg

# Tiny random configs for tests and the CPU demo (real Qwen vocab so the real tokenizer fits).
PRESETS["tiny"] = Qwen2Config(vocab_size=151936, hidden_size=64, intermediate_size=128,
                              num_layers=2, num_heads=4, num_kv_heads=2, tie_word_embeddings=True)
PRESETS["tiny-untied"] = PRESETS["tiny"].replace(tie_word_embeddings=False, num_kv_heads=1,
                                                 rope_theta=10_000.0, rms_norm_eps=1e-5)

# The CPU demo's model (`z1 demo`, configs/demo.toml): trained from scratch on the chain task
# with the demo's own tokenizer (z1_jax.demo.tokenizer: at most 384 tokens; <|endoftext|> 0,
# <|im_start|> 1, <|im_end|> 2).
# 2 layers of width 64 (0.17M parameters): it learns the task's +-1 steps in 300 steps, as the
# earlier 4 x 128 (0.89M) did not learn +-1..3 in 600, at a quarter of the step time.
PRESETS["z1-demo"] = Qwen2Config(vocab_size=384, hidden_size=64, intermediate_size=256,
                                 num_layers=2, num_heads=4, num_kv_heads=2,
                                 # untied: tied, the digits' shared output gradient pulled
                                 # their embeddings together and no digit was ever copied
                                 tie_word_embeddings=False, rope_theta=10_000.0,
                                 max_position_embeddings=512, bos_token_id=0, eos_token_id=2,
                                 pad_token_id=0)


def get_preset(name: str, **overrides) -> Qwen2Config:
  key = name.lower()
  if key not in PRESETS:
    raise Z1KeyError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
  return PRESETS[key].replace(**overrides)


def from_hf_config(hf: dict[str, Any], source: str = "config.json", **overrides) -> Qwen2Config:
  """Builds a config from a HF `config.json` dict (transformers 4.x and 5.x layouts)."""
  arch = hf.get("architectures") or []
  if hf.get("model_type") != "qwen2" or (arch and "Qwen2ForCausalLM" not in arch):
    raise Z1Error(f"{source}: model_type={hf.get('model_type')!r}, architectures={arch}: "
                  "z1-jax loads Qwen2ForCausalLM (model_type 'qwen2') checkpoints only")
  rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
  rope_type = rope.get("rope_type", rope.get("type", "default"))
  if rope_type != "default":
    raise Z1Error(f"{source}: rope type {rope_type!r} is not supported (only 'default')")
  if hf.get("use_sliding_window"):
    raise Z1Error(f"{source}: use_sliding_window=true is not supported")
  if hf.get("hidden_act", "silu") != "silu":
    raise Z1Error(f"{source}: hidden_act={hf['hidden_act']!r}; Qwen2 uses 'silu'")
  try:
    kw = dict(
        vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"], num_layers=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"],
        num_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
        head_dim=hf.get("head_dim"), rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
        rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10_000.0))),
        max_position_embeddings=hf.get("max_position_embeddings", 32768),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)))
  except KeyError as e:
    raise Z1Error(f"{source}: missing key {e.args[0]!r}") from None
  for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
    value = hf.get(key)
    if isinstance(value, list):
      value = value[0]
    if isinstance(value, int):
      kw[key] = value
  if kw["head_dim"] == kw["hidden_size"] // kw["num_heads"]:
    kw["head_dim"] = None
  kw.update(overrides)
  return Qwen2Config(**kw)


def to_hf_config(cfg: Qwen2Config, torch_dtype: str = "bfloat16") -> dict[str, Any]:
  """The `config.json` transformers needs to load the exported checkpoint as Qwen2ForCausalLM."""
  return {
      "architectures": ["Qwen2ForCausalLM"],
      "model_type": "qwen2",
      "vocab_size": cfg.vocab_size,
      "hidden_size": cfg.hidden_size,
      "intermediate_size": cfg.intermediate_size,
      "num_hidden_layers": cfg.num_layers,
      "num_attention_heads": cfg.num_heads,
      "num_key_value_heads": cfg.num_kv_heads,
      "head_dim": cfg.dim_per_head,
      "hidden_act": "silu",
      "rms_norm_eps": cfg.rms_norm_eps,
      "rope_theta": cfg.rope_theta,
      "rope_scaling": None,
      "max_position_embeddings": cfg.max_position_embeddings,
      "max_window_layers": cfg.num_layers,
      "use_sliding_window": False,
      "sliding_window": None,
      "tie_word_embeddings": cfg.tie_word_embeddings,
      "attention_dropout": 0.0,
      "initializer_range": 0.02,
      "use_cache": True,
      # Ids outside the vocabulary (tiny test models) are left out rather than written invalid.
      "bos_token_id": cfg.bos_token_id if cfg.bos_token_id < cfg.vocab_size else None,
      "eos_token_id": cfg.eos_token_id if cfg.eos_token_id < cfg.vocab_size else None,
      "torch_dtype": torch_dtype,
  }
