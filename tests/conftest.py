"""Test set-up: 8 host CPU devices (before JAX starts) and tiny random HF Qwen2 checkpoints."""

import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # tests run on CPU even where libtpu is installed
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One persistent compilation cache for the whole suite, its workers and the processes it starts
# (servers, 2-process pods): they compile the same tiny programs many times over. A rerun on
# this machine starts warm; CI's clean machine starts cold (the measured time).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "z1-jax-tests-compile-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")

import pytest  # noqa: E402

# name -> transformers.Qwen2Config kwargs; together they cover tied/untied heads, GQA ratios
# 1, 2 and 4, and non-default rope theta and norm eps.
TINY_HF_CONFIGS = {
    "tied-gqa2": dict(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
    "untied-gqa4-theta": dict(vocab_size=320, hidden_size=64, intermediate_size=128,
                              num_hidden_layers=3, num_attention_heads=8, num_key_value_heads=2,
                              tie_word_embeddings=False, rope_theta=12345.0, rms_norm_eps=1e-5),
    "untied-mha-eps": dict(vocab_size=256, hidden_size=48, intermediate_size=80,
                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                           tie_word_embeddings=False, rope_theta=500.0, rms_norm_eps=1e-3),
    "tied-mqa": dict(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=True),
}


def make_hf_model(name: str, seed: int = 0):
  import torch
  import transformers
  torch.manual_seed(seed)
  cfg = transformers.Qwen2Config(max_position_embeddings=256, **TINY_HF_CONFIGS[name])
  model = transformers.Qwen2ForCausalLM(cfg).eval()
  with torch.no_grad():  # HF zero-initialises biases and ones the norms: randomise everything
    for p in model.parameters():
      p.normal_(0.0, 0.1)
  return model


@pytest.fixture(scope="session")
def hf_checkpoint(tmp_path_factory):
  """name -> (torch model, directory of its saved safetensors checkpoint)."""
  cache = {}

  def get(name: str):
    if name not in cache:
      model = make_hf_model(name)
      path = tmp_path_factory.mktemp(f"hf-{name}")
      model.save_pretrained(path)
      cache[name] = (model, path)
    return cache[name]

  return get


# The modules with the longest tests (multi-process runs, training to a signal) are collected
# first, so that the two xdist workers share them from the start instead of one worker running
# them alone at the end; each module's own order is kept (its module fixtures are set up once).
LONGEST_FIRST = ("test_multihost_infer.py", "test_pod.py", "test_train.py",
                 "test_serve_lm_eval.py", "test_train_guards.py", "test_distill.py",
                 "test_eval_sweep.py", "test_eval_code.py", "test_serve.py", "test_cli.py",
                 "test_demo.py", "test_data_pipeline.py")


def pytest_collection_modifyitems(config, items):
  def rank(item):
    name = item.path.name
    return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)
  items.sort(key=rank)  # stable
