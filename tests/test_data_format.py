"""Z1 rendering and tokenization with the real (offline) Qwen2.5 tokenizer."""

import numpy as np
import pytest

from z1_jax.data.encode import EncodeConfig, encode_dataset, encode_texts
from z1_jax.data.format import render_prompt, render_target
from z1_jax.data.sources import Example, sample_dataset_path
from z1_jax.data.tokenizer import load_tokenizer, offline_tokenizer_dir

Z1_PROMPT = ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
             "assistant.<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n"
             "<|im_start|>assistant\n")


@pytest.fixture(scope="module")
def tok():
  return load_tokenizer()


def test_prompt_is_the_z1_training_prompt_byte_for_byte():
  q = "Write a function that returns 42.\nUse Python."
  assert render_prompt(q) == Z1_PROMPT.format(question=q)
  assert render_target("Sure.") == "Sure.<|im_end|>"
  assert render_target("<think>\nhm</think>\nok", strip_think_tags=True) == "hmok<|im_end|>"


def test_special_ids_are_qwen25(tok):
  assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [
      151643, 151644, 151645]


def test_prompt_ids_match_the_tokenizers_chat_template(tok):
  q = "Reverse a linked list in O(1) space."
  ours = tok(render_prompt(q), add_special_tokens=False)["input_ids"]
  messages = [{"role": "system", "content": "You are Qwen, created by Alibaba Cloud. You are a "
               "helpful assistant."}, {"role": "user", "content": q}]
  theirs = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
  theirs = theirs["input_ids"] if hasattr(theirs, "keys") else theirs
  assert ours == list(theirs)


def test_loss_covers_exactly_the_target(tok):
  ex = Example("mem", 0, "What is 2+2?", "Let me add: 2+2 = 4.\n\nAnswer: 4")
  enc = encode_texts(tok, [ex], EncodeConfig("unused"), progress=False)
  ids, p = enc.ids(0), int(enc.prompt_lens[0])
  assert tok.decode(ids[:p]) == render_prompt(ex.question)
  assert tok.decode(ids[p:]) == ex.response + "<|im_end|>"
  assert ids[-1] == 151645
  # separate tokenization equals joint tokenization here: the boundary is a special token + \n
  assert list(ids) == tok(render_prompt(ex.question) + render_target(ex.response),
                          add_special_tokens=False)["input_ids"]


def test_any_hf_tokenizer_directory_works(tmp_path):
  import shutil
  for f in offline_tokenizer_dir().iterdir():
    shutil.copy(f, tmp_path / f.name)
  assert load_tokenizer(str(tmp_path))("hello")["input_ids"] == [14990]
  with pytest.raises(FileNotFoundError, match="cannot load a tokenizer"):
    load_tokenizer(str(tmp_path / "missing"))


def test_tokenization_is_cached_and_reused(tmp_path, monkeypatch):
  cfg = EncodeConfig(str(sample_dataset_path()))
  first = encode_dataset(cfg, cache_dir=tmp_path, progress=False)
  assert not first.from_cache and len(list(tmp_path.glob("tokenized-*.npz"))) == 1
  import z1_jax.data.encode as encode_mod
  monkeypatch.setattr(encode_mod, "encode_texts", lambda *a, **k: pytest.fail("re-tokenized"))
  second = encode_dataset(cfg, cache_dir=tmp_path, progress=False)
  assert second.from_cache and np.array_equal(first.tokens, second.tokens)
  assert second.sources == first.sources
  # another system prompt is another cache entry
  monkeypatch.undo()
  third = encode_dataset(EncodeConfig(str(sample_dataset_path()), system_prompt="Be brief."),
                         cache_dir=tmp_path, progress=False)
  assert not third.from_cache and len(list(tmp_path.glob("tokenized-*.npz"))) == 2
