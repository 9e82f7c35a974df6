"""Tokenizing Z1 examples once, with a cache next to the run.

An encoded example is `input_ids` = prompt ids + target ids, and `prompt_len`: the loss covers
exactly the target ids (response and the closing `<|im_end|>`). Prompt and target are
tokenized separately, so the mask boundary is exact: the prompt ends with the special token
`<|im_start|>` + `assistant\\n`, after which no BPE merge can cross.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import zipfile
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from z1_jax.data.format import DEFAULT_SYSTEM_PROMPT, render_prompt, render_target
from z1_jax.data.sources import (Columns, DataError, Example, ReadStats, read_examples,
                                 resolve_files)
from z1_jax.data.tokenizer import load_tokenizer
from z1_jax.outputs import atomic_path
from z1_jax.paths import as_path

CACHE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class EncodeConfig:
  dataset: str  # local file/directory, or a hub dataset id
  tokenizer: str | None = None  # None: the offline Qwen2.5 tokenizer
  system_prompt: str | None = DEFAULT_SYSTEM_PROMPT
  strip_think_tags: bool = False
  columns: Columns = Columns()
  on_bad_row: str = "error"  # or "skip" (counted)
  split: str = "train"


@dataclasses.dataclass
class Encoded:
  """Tokenized examples: ragged `input_ids` as one flat array plus offsets."""
  tokens: np.ndarray  # int32, all examples concatenated
  offsets: np.ndarray  # int64 [n + 1]
  prompt_lens: np.ndarray  # int32 [n]
  sources: list[str]  # "file:row" per example
  skipped: int = 0
  from_cache: bool = False

  def __len__(self) -> int:
    return len(self.prompt_lens)

  @property
  def lengths(self) -> np.ndarray:
    return np.diff(self.offsets).astype(np.int32)

  def ids(self, i: int) -> np.ndarray:
    return self.tokens[self.offsets[i]:self.offsets[i + 1]]


def encode_texts(tokenizer, examples: list[Example], cfg: EncodeConfig, chunk: int = 512,
                 progress: bool = True) -> Encoded:
  ids, prompt_lens, sources = [], [], []
  bar = tqdm(total=len(examples), desc="tokenize", unit="ex", disable=not progress)
  for start in range(0, len(examples), chunk):
    part = examples[start:start + chunk]
    prompts = tokenizer([render_prompt(e.question, cfg.system_prompt) for e in part],
                        add_special_tokens=False)["input_ids"]
    targets = tokenizer([render_target(e.response, cfg.strip_think_tags) for e in part],
                        add_special_tokens=False)["input_ids"]
    for e, p, t in zip(part, prompts, targets):
      ids.append(np.asarray(p + t, np.int32))
      prompt_lens.append(len(p))
      sources.append(f"{e.source}:{e.row}")
    bar.update(len(part))
  bar.close()
  offsets = np.concatenate([[0], np.cumsum([len(x) for x in ids])]).astype(np.int64)
  tokens = np.concatenate(ids) if ids else np.zeros(0, np.int32)
  return Encoded(tokens, offsets, np.asarray(prompt_lens, np.int32), sources)


def _cache_key(cfg: EncodeConfig, tokenizer) -> str:
  local = Path(cfg.dataset).expanduser()
  if local.exists():
    inputs = [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns)
              for f in resolve_files(local, cfg.split)]
  else:
    inputs = [cfg.dataset, cfg.split]
  vocab = tokenizer.backend_tokenizer.to_str() if hasattr(tokenizer, "backend_tokenizer") else (
      json.dumps(tokenizer.get_vocab(), sort_keys=True))
  blob = json.dumps({"version": CACHE_VERSION, "inputs": inputs,
                     "tokenizer": hashlib.sha256(vocab.encode()).hexdigest(),
                     "cfg": dataclasses.asdict(dataclasses.replace(cfg, tokenizer=None))},
                    sort_keys=True, default=str)
  return hashlib.sha256(blob.encode()).hexdigest()[:20]


def encode_dataset(cfg: EncodeConfig, cache_dir: str | os.PathLike | None = None,
                   tokenizer=None, progress: bool = True) -> Encoded:
  """Reads, checks and tokenizes the dataset; reuses `cache_dir/tokenized-<key>.npz` if there."""
  tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg.tokenizer)
  cache = None
  if cache_dir is not None:
    cache = as_path(cache_dir) / f"tokenized-{_cache_key(cfg, tokenizer)}.npz"
    if cache.exists():
      try:
        with cache.open("rb") as f, np.load(f, allow_pickle=False) as z:
          return Encoded(z["tokens"], z["offsets"], z["prompt_lens"], z["sources"].tolist(),
                         int(z["skipped"]), from_cache=True)
      except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        # Written atomically, so this is outside damage: say so, then tokenize afresh.
        print(f"z1: ignoring unreadable tokenization cache {cache} ({type(e).__name__}: {e}); "
              "it will be rewritten", file=sys.stderr)
  stats = ReadStats()
  examples = list(read_examples(cfg.dataset, cfg.columns, cfg.on_bad_row, cfg.split, stats))
  if not examples:
    raise DataError(f"{cfg.dataset}: no usable examples ({stats.skipped} skipped"
                    f"{': ' + stats.errors[0] if stats.errors else ', the input is empty'})")
  encoded = encode_texts(tokenizer, examples, cfg, progress=progress)
  encoded.skipped = stats.skipped
  if cache is not None:
    arrays = dict(tokens=encoded.tokens, offsets=encoded.offsets,
                  prompt_lens=encoded.prompt_lens, sources=np.asarray(encoded.sources),
                  skipped=np.asarray(encoded.skipped))
    if isinstance(cache, Path):
      with atomic_path(cache) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    else:  # an object store (gs://): an object appears whole when its upload completes
      cache.parent.mkdir(parents=True, exist_ok=True)
      with cache.open("wb") as f:
        np.savez(f, **arrays)
  return encoded


def encode_shared(cfg: EncodeConfig, cache_dir: str | os.PathLike | None = None,
                  tokenizer=None, progress: bool = True) -> Encoded:
  """`encode_dataset` for a multi-process run: with a `cache_dir`, process 0 tokenizes and
  writes the cache while the others wait, then they read it (a `gs://` or shared directory:
  the dataset is tokenized once for the whole pod; a per-host local directory: each other host
  finds no cache there and tokenizes for itself, which is correct, only slower). The trainer
  then checks that every host packed the same rows (`train/data_identity.py`)."""
  import jax
  if jax.process_count() == 1 or cache_dir is None:
    return encode_dataset(cfg, cache_dir, tokenizer, progress)
  from jax.experimental import multihost_utils
  lead = jax.process_index() == 0
  encoded = encode_dataset(cfg, cache_dir, tokenizer, progress) if lead else None
  multihost_utils.sync_global_devices("z1: tokenization cache written")
  return encoded if lead else encode_dataset(cfg, cache_dir, tokenizer, progress=False)
