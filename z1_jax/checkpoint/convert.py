"""`z1 convert`: HF safetensors <-> Orbax, with every path checked before any loading.

The output is written under a temporary name beside `--out` and renamed onto it at the end
(`z1_jax.outputs`), so Ctrl-C or a kill leaves the previous output as it was. An existing
`--out` is replaced only with `--overwrite`, and only when it is a previous export of the same
kind (an Orbax checkpoint root, or a HF directory of safetensors and JSON files): never a
directory holding the input, unrelated files, or the current directory.
"""

from __future__ import annotations

import re
from pathlib import Path

import jax

from z1_jax.errors import Z1Error
from z1_jax.model.sharding import mesh_from_spec
from z1_jax.outputs import atomic_path, check_output_dir
from z1_jax.paths import as_path, is_uri

# Files a HF export holds (save_hf and the tokenizer files it copies).
_HF_EXPORT_FILE = re.compile(
    r"(model(-\d+-of-\d+)?\.safetensors|model\.safetensors\.index\.json|config\.json|"
    r"generation_config\.json|tokenizer\.json|tokenizer_config\.json|vocab\.json|merges\.txt|"
    r"special_tokens_map\.json|added_tokens\.json|chat_template\.jinja)")


def is_hf_export(path: Path) -> bool:
  """A directory holding only what a HF export writes, with config.json and safetensors."""
  names = [e.name for e in path.iterdir()]
  return ("config.json" in names and any(n.endswith(".safetensors") for n in names) and
          all(_HF_EXPORT_FILE.fullmatch(e.name) and e.is_file() for e in path.iterdir()))


def _is_step(e: Path) -> bool:
  return e.name.isdigit() and e.is_dir() and ((e / "params").exists() or (e / "config").exists())


def is_orbax_export(path: Path) -> bool:
  """What `hf-to-orbax` writes: an Orbax checkpoint root holding only step directories (each
  with `params` or `config`), plus Orbax's own bookkeeping and unfinished-step temporaries."""
  entries = list(path.iterdir())
  return any(_is_step(e) for e in entries) and all(
      _is_step(e) or ".orbax-checkpoint-tmp" in e.name or e.name.startswith(("_CHECKPOINT", "."))
      for e in entries)


def _shared_token() -> str | None:
  """One temporary-name token for every process of a multi-host job (Orbax writes together)."""
  if jax.process_count() == 1:
    return None
  import os
  import numpy as np
  from jax.experimental import multihost_utils
  pid, value = multihost_utils.broadcast_one_to_all(
      np.asarray([os.getpid(), np.random.randint(0, 2**31 - 1)], np.int32))
  return f"{int(pid)}-{int(value):08x}"


def hf_to_orbax(hf: str, out: str, dtype: str | None = None, mesh_shape=None,
                overwrite: bool = False) -> dict:
  from z1_jax.checkpoint.hf import load_hf, resolve_checkpoint_dir
  from z1_jax.checkpoint.orbax_io import save_params
  local = Path(hf).expanduser()
  out_path = check_output_dir(out, "--out", overwrite, is_orbax_export, "Orbax checkpoint",
                              inputs=[("--hf", local)] if local.exists() else [])
  if local.is_dir() and is_orbax_export(local):
    raise Z1Error(f"--hf {hf} is an Orbax checkpoint; use `z1 convert orbax-to-hf` for it")
  mesh = mesh_from_spec(mesh_shape)
  ckpt = resolve_checkpoint_dir(hf)
  if not local.exists():  # a hub download: check it is not the output either
    check_output_dir(out, "--out", overwrite, is_orbax_export, "Orbax checkpoint",
                     inputs=[("--hf", ckpt)])
  model = load_hf(ckpt, dtype=dtype, mesh=mesh)
  with atomic_path(out_path, _shared_token(), write=jax.process_index() == 0) as tmp:
    save_params(model, tmp)
  return {"wrote": str(out_path), "params": model.cfg.num_params()}


def orbax_to_hf(ckpt: str, out: str, dtype: str = "bfloat16", tokenizer: str | None = None,
                max_shard_size: int | str = "5GB", mesh_shape=None,
                overwrite: bool = False) -> dict:
  from z1_jax.checkpoint.hf import save_hf
  from z1_jax.checkpoint.orbax_io import load_params, read_config, resolve_checkpoint
  ck = as_path(ckpt)  # a gs:// checkpoint of a pod run is read from Cloud Storage directly
  if ck.exists() and not ck.is_dir():
    raise Z1Error(f"--ckpt {ckpt} is a file; pass the Orbax checkpoint directory")
  if ck.is_dir():  # a run directory, a checkpoint root (latest step) or one step directory
    root, _ = resolve_checkpoint(ck)
    if not any(_is_step(e) for e in root.iterdir()):
      hint = (": it looks like a HF checkpoint, use `z1 convert hf-to-orbax` for it"
              if (ck / "config.json").exists() else "")
      raise Z1Error(f"--ckpt {ckpt} holds no Orbax checkpoint steps{hint}")
  if tokenizer is not None:
    tok = Path(tokenizer).expanduser()
    if not tok.is_dir() or not any((tok / n).exists() for n in ("tokenizer.json", "vocab.json")):
      raise Z1Error(f"--tokenizer {tokenizer}: not a directory holding tokenizer.json or "
                    "vocab.json")
  out_path = check_output_dir(out, "--out", overwrite, is_hf_export, "HF checkpoint",
                              inputs=[("--ckpt", None if is_uri(ck) else ck),
                                      ("--tokenizer", tokenizer)])
  mesh = mesh_from_spec(mesh_shape)
  read_config(ck)  # fails fast on a checkpoint without a config, before restoring arrays
  model = load_params(ck, mesh=mesh)
  save_hf(model, out_path, dtype=dtype, tokenizer=tokenizer, max_shard_size=max_shard_size,
          overwrite=overwrite)
  return {"wrote": str(out_path), "params": model.cfg.num_params()}
