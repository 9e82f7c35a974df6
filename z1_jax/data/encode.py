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
from typing import Callable

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
                 progress: bool = True, on_progress: Callable[[str], None] | None = None
                 ) -> Encoded:
  ids, prompt_lens, sources = [], [], []
  bar = tqdm(total=len(examples), desc="tokenize", unit="ex", disable=not progress)
  for start in range(0, len(examples), chunk):
    if on_progress is not None:
      on_progress(f"tokenized {start} of {len(examples)}")
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
                   tokenizer=None, progress: bool = True,
                   on_progress: Callable[[str], None] | None = None) -> Encoded:
  """Reads, checks and tokenizes the dataset; reuses `cache_dir/tokenized-<key>.npz` if there.
  `on_progress(text)` is told how far it got: at each stage, every 1,000 examples read and
  every 512 tokenized."""
  tell = on_progress or (lambda text: None)
  tell("loading the tokenizer")
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
  examples = []
  tell(f"reading {cfg.dataset}")
  for example in read_examples(cfg.dataset, cfg.columns, cfg.on_bad_row, cfg.split, stats):
    examples.append(example)
    if len(examples) % 1000 == 0:
      tell(f"read {len(examples)} examples")
  if not examples:
    raise DataError(f"{cfg.dataset}: no usable examples ({stats.skipped} skipped"
                    f"{': ' + stats.errors[0] if stats.errors else ', the input is empty'})")
  encoded = encode_texts(tokenizer, examples, cfg, progress=progress, on_progress=on_progress)
  encoded.skipped = stats.skipped
  if cache is not None:
    tell(f"writing {cache}")
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


# How long the other processes wait for process 0 to tokenize without any sign of progress
# (its progress markers come every 1,000 examples read and 512 tokenized; reading a hub dataset
# can be silent for its download).
SHARED_STALL_TIMEOUT_S = 1800.0


def encode_shared(cfg: EncodeConfig, cache_dir: str | os.PathLike | None = None,
                  tokenizer=None, progress: bool = True) -> Encoded:
  """`encode_dataset` for a multi-process run: with a `cache_dir`, process 0 tokenizes and
  writes the cache while the others wait, then they read it (a `gs://` or shared directory:
  the dataset is tokenized once for the whole pod; a per-host local directory: each other host
  finds no cache there and tokenizes for itself, which is correct, only slower). The trainer
  then checks that every host packed the same rows (`train/data_identity.py`).

  The others wait on the distributed runtime's key-value store, not on a device collective
  (gloo's first collective gives up after 30 s): process 0 posts a progress marker as it
  reads and tokenizes, then "ok" or its error. A waiting process raises a Z1Error naming
  process 0 as soon as process 0 reports an error, or when its progress marker has not moved
  for SHARED_STALL_TIMEOUT_S; if process 0 dies, the distributed runtime (which it hosts)
  ends the others at once."""
  import jax
  from z1_jax import distributed
  if jax.process_count() == 1 or cache_dir is None:
    return encode_dataset(cfg, cache_dir, tokenizer, progress)
  client, key = distributed.client(), distributed.unique_key("encode")
  if jax.process_index() == 0:
    post = lambda text: client.key_value_set(f"{key}/progress", text, allow_overwrite=True)
    try:
      encoded = encode_dataset(cfg, cache_dir, tokenizer, progress, on_progress=post)
    except BaseException as e:
      client.key_value_set(f"{key}/status", f"{type(e).__name__}: {e}"[:2000])
      try:  # let the others read it before this process, which hosts the store, exits
        client.wait_at_barrier(f"{key}/error-read", 10_000)
      except Exception:  # noqa: BLE001 - a peer that is gone cannot read it anyway
        pass
      raise
    client.key_value_set(f"{key}/status", "ok")
    return encoded
  _wait_for_process_0(client, key, cfg.dataset)
  return encode_dataset(cfg, cache_dir, tokenizer, progress=False)


def _wait_for_process_0(client, key: str, dataset: str) -> None:
  import time
  from z1_jax.distributed import missing
  marker, moved = None, time.monotonic()
  while True:
    try:
      status = client.blocking_key_value_get(f"{key}/status", 1000)
    except Exception as e:  # noqa: BLE001
      if not missing(e):
        raise
      status = None
    if status == "ok":
      return
    if status is not None:
      try:
        client.wait_at_barrier(f"{key}/error-read", 10_000)
      except Exception:  # noqa: BLE001
        pass
      raise DataError(f"process 0 failed while tokenizing {dataset} for every process: {status}")
    try:
      now = client.key_value_try_get(f"{key}/progress")
    except Exception as e:  # noqa: BLE001
      if not missing(e):
        raise
      now = None
    if now != marker:
      marker, moved = now, time.monotonic()
    elif time.monotonic() - moved > SHARED_STALL_TIMEOUT_S:
      raise DataError(f"process 0 has shown no progress tokenizing {dataset} for "
                      f"{SHARED_STALL_TIMEOUT_S:g} s (last: {marker or 'nothing yet'}); it hangs "
                      "or cannot read the data")
