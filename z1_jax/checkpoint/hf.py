"""Hugging Face safetensors checkpoints in and out.

One table (`_LAYER_TABLE`, `_GLOBAL_TABLE`) says, for every HF key, which parameter of ours it
fills and how (transpose / reshape). Import checks that every HF key is used exactly once and
every shape is right before reading any data, then reads one tensor at a time and places it
straight onto its target sharding. Export writes to a temporary directory and renames it at the
end, so an interrupted export leaves nothing half-written under the target name.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from safetensors import safe_open
from tqdm.auto import tqdm

from z1_jax.errors import Z1Error
from z1_jax.outputs import commit, sweep_partials, temp_sibling
from z1_jax.model.config import Qwen2Config, from_hf_config, to_hf_config
from z1_jax.model.qwen2 import Qwen2, abstract_model, state_shardings
from z1_jax.model.sharding import LogicalRules

Transform = Callable[[np.ndarray, Qwen2Config], np.ndarray]


def _t(w, c):
  return w.T


def _same(w, c):
  return w


# (HF key suffix, our path inside a decoder layer, HF -> ours, ours -> HF, HF shape[, part]).
# `part`: the index along our axis 1 that the key fills (gate and up share one `[E, 2, F]`).
_LAYER_TABLE: list[tuple] = [
    ("self_attn.q_proj.weight", ("attn", "q_proj"),
     lambda w, c: w.T.reshape(c.hidden_size, c.num_heads, c.dim_per_head),
     lambda w, c: w.reshape(c.hidden_size, -1).T,
     lambda c: (c.num_heads * c.dim_per_head, c.hidden_size)),
    ("self_attn.q_proj.bias", ("attn", "q_bias"),
     lambda w, c: w.reshape(c.num_heads, c.dim_per_head),
     lambda w, c: w.reshape(-1),
     lambda c: (c.num_heads * c.dim_per_head,)),
    ("self_attn.k_proj.weight", ("attn", "k_proj"),
     lambda w, c: w.T.reshape(c.hidden_size, c.num_kv_heads, c.dim_per_head),
     lambda w, c: w.reshape(c.hidden_size, -1).T,
     lambda c: (c.num_kv_heads * c.dim_per_head, c.hidden_size)),
    ("self_attn.k_proj.bias", ("attn", "k_bias"),
     lambda w, c: w.reshape(c.num_kv_heads, c.dim_per_head),
     lambda w, c: w.reshape(-1),
     lambda c: (c.num_kv_heads * c.dim_per_head,)),
    ("self_attn.v_proj.weight", ("attn", "v_proj"),
     lambda w, c: w.T.reshape(c.hidden_size, c.num_kv_heads, c.dim_per_head),
     lambda w, c: w.reshape(c.hidden_size, -1).T,
     lambda c: (c.num_kv_heads * c.dim_per_head, c.hidden_size)),
    ("self_attn.v_proj.bias", ("attn", "v_bias"),
     lambda w, c: w.reshape(c.num_kv_heads, c.dim_per_head),
     lambda w, c: w.reshape(-1),
     lambda c: (c.num_kv_heads * c.dim_per_head,)),
    ("self_attn.o_proj.weight", ("attn", "o_proj"),
     lambda w, c: w.T.reshape(c.num_heads, c.dim_per_head, c.hidden_size),
     lambda w, c: w.reshape(-1, c.hidden_size).T,
     lambda c: (c.hidden_size, c.num_heads * c.dim_per_head)),
    ("mlp.gate_proj.weight", ("mlp", "gate_up"), _t, _t,
     lambda c: (c.intermediate_size, c.hidden_size), 0),
    ("mlp.up_proj.weight", ("mlp", "gate_up"), _t, _t,
     lambda c: (c.intermediate_size, c.hidden_size), 1),
    ("mlp.down_proj.weight", ("mlp", "down"), _t, _t,
     lambda c: (c.hidden_size, c.intermediate_size)),
    ("input_layernorm.weight", ("input_norm", "scale"), _same, _same,
     lambda c: (c.hidden_size,)),
    ("post_attention_layernorm.weight", ("post_attn_norm", "scale"), _same, _same,
     lambda c: (c.hidden_size,)),
]

_GLOBAL_TABLE = [
    ("model.embed_tokens.weight", ("embed",), lambda c: (c.vocab_size, c.hidden_size)),
    ("model.norm.weight", ("final_norm", "scale"), lambda c: (c.hidden_size,)),
    ("lm_head.weight", ("lm_head",), lambda c: (c.vocab_size, c.hidden_size)),
]

# Buffers some older checkpoints carry; not parameters.
_IGNORED_KEYS = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")


class CheckpointError(Z1Error):
  """A checkpoint that does not match the model: names the file, key and shapes."""


def _expected_hf_shapes(cfg: Qwen2Config) -> dict[str, tuple[int, ...]]:
  shapes = {}
  for key, _, shape in _GLOBAL_TABLE:
    if key == "lm_head.weight" and cfg.tie_word_embeddings:
      continue
    shapes[key] = shape(cfg)
  for i in range(cfg.num_layers):
    for suffix, _, _, _, shape, *_ in _LAYER_TABLE:
      shapes[f"model.layers.{i}.{suffix}"] = shape(cfg)
  return shapes


_FILE_SUFFIXES = (".safetensors", ".json", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".txt")


def resolve_checkpoint_dir(path_or_id: str | os.PathLike) -> Path:
  """A local directory as is; otherwise a hub id downloaded (config, safetensors, tokenizer).
  A path to a file (e.g. `dir/model.safetensors`) is refused, naming the directory to pass."""
  from z1_jax.hub import check_reachable, hub_offline
  path = Path(path_or_id).expanduser()
  text = str(path_or_id)
  if path.is_dir():
    return path
  if path.exists():
    raise CheckpointError(f"{text} is a file; pass the checkpoint directory that holds "
                          f"config.json and the *.safetensors files: {path.parent}")
  looks_like_hub_id = (re.fullmatch(r"[\w.-]+/[\w.-]+", text) and
                       not text.startswith((".", "/", "~")) and
                       not text.lower().endswith(_FILE_SUFFIXES) and
                       not Path(text.split("/")[0]).expanduser().is_dir())
  if not looks_like_hub_id:
    raise FileNotFoundError(f"checkpoint directory not found: {text}")
  check_reachable("checkpoint", text)
  try:
    from huggingface_hub import snapshot_download
    return Path(snapshot_download(text, allow_patterns=["*.json", "*.safetensors", "*.txt",
                                                        "*.model", "*.tiktoken"]))
  except Exception as e:  # noqa: BLE001 - report why the hub id could not be used
    first = str(e).splitlines()[0] if str(e) else ""
    raise CheckpointError(
        f"{text!r} is not a local directory and could not be downloaded from the Hugging Face "
        f"hub{' (HF_HUB_OFFLINE is set)' if hub_offline() else ''}: {type(e).__name__}: "
        f"{first}. Pass a local checkpoint directory instead (e.g. one made with "
        f"`huggingface-cli download {text} --local-dir DIR` where the hub is reachable)") from e


def _tensor_files(ckpt: Path) -> dict[str, Path]:
  """HF key -> safetensors file holding it."""
  index = ckpt / "model.safetensors.index.json"
  if index.exists():
    weight_map = json.loads(index.read_text())["weight_map"]
    return {k: ckpt / f for k, f in weight_map.items()}
  files = sorted(ckpt.glob("*.safetensors"))
  if not files:
    raise CheckpointError(f"{ckpt}: no *.safetensors files (and no model.safetensors.index.json)")
  out = {}
  for f in files:
    with _open(f) as st:
      for k in st.keys():
        out[k] = f
  return out


def _open(f: Path):
  """`safe_open` of one file; a truncated or corrupt file is a CheckpointError naming it."""
  try:
    return safe_open(f, framework="flax")
  except Exception as e:  # noqa: BLE001 - safetensors raises its own SafetensorError/OSError
    raise CheckpointError(f"{f}: not a readable safetensors file ({type(e).__name__}: {e}); "
                          "the download may be incomplete: fetch the file again") from None


def read_hf_config(ckpt: Path, **overrides) -> Qwen2Config:
  cfg_file = ckpt / "config.json"
  if not cfg_file.exists():
    raise CheckpointError(f"{ckpt}: missing config.json")
  return from_hf_config(json.loads(cfg_file.read_text()), source=str(cfg_file), **overrides)


def _check_keys(cfg: Qwen2Config, files: dict[str, Path]) -> dict[str, tuple[int, ...]]:
  expected = _expected_hf_shapes(cfg)
  present = {k for k in files if not _IGNORED_KEYS.fullmatch(k)}
  missing = sorted(set(expected) - present)
  extra = sorted(present - set(expected))
  if missing:
    raise CheckpointError(f"checkpoint is missing {len(missing)} tensor(s) the config needs: "
                          f"{missing[:8]}{' ...' if len(missing) > 8 else ''}")
  if extra:
    hint = " (tie_word_embeddings=true but lm_head.weight is present)" if (
        "lm_head.weight" in extra) else ""
    raise CheckpointError(f"checkpoint has {len(extra)} tensor(s) the model does not use{hint}: "
                          f"{extra[:8]}{' ...' if len(extra) > 8 else ''}")
  by_file: dict[Path, list[str]] = {}
  for k in expected:
    by_file.setdefault(files[k], []).append(k)
  for f, keys in by_file.items():
    if not f.exists():
      raise CheckpointError(f"{f}: listed in the index but does not exist")
    with _open(f) as st:
      for k in keys:
        shape = tuple(st.get_slice(k).get_shape())
        if shape != expected[k]:
          raise CheckpointError(f"{f.name}: tensor {k!r} has shape {shape}, the config expects "
                                f"{expected[k]}")
  return expected


class _Reader:
  """Reads one tensor at a time to host memory (bf16 via ml_dtypes), keeping files open."""

  def __init__(self, files: dict[str, Path]):
    self.files = files
    self.handles: dict[Path, Any] = {}
    self.cpu = jax.local_devices(backend="cpu")[0]  # this process's own

  def __call__(self, key: str) -> np.ndarray:
    f = self.files[key]
    if f not in self.handles:
      self.handles[f] = _open(f)
    try:
      with jax.default_device(self.cpu):
        return np.asarray(self.handles[f].get_tensor(key))
    except Exception as e:  # noqa: BLE001 - a file cut short after its header
      raise CheckpointError(f"{f}: tensor {key!r} cannot be read ({type(e).__name__}: {e}); "
                            "the file may be truncated: fetch it again") from None


def _get(tree, path):
  for p in path:
    tree = tree[p]
  return tree


def _hf_sources(cfg: Qwen2Config):
  """(our path, [(hf key, HF->ours, ours->HF, layer in stack or None, part or None)], stacked)
  for every parameter, in a fixed order."""
  out = []
  for key, path, _ in _GLOBAL_TABLE:
    if key == "lm_head.weight" and cfg.tie_word_embeddings:
      continue
    out.append((path, [(key, _same, _same, None, None)], False))
  by_path: dict[tuple, list] = {}
  for suffix, sub, to_ours, to_hf, _, *part in _LAYER_TABLE:
    by_path.setdefault(sub, []).append((suffix, to_ours, to_hf, part[0] if part else None))
  for sub, entries in by_path.items():
    layer_keys = [[(f"model.layers.{i}.{suffix}", to_ours, to_hf, i, part)
                   for suffix, to_ours, to_hf, part in entries] for i in range(cfg.num_layers)]
    if cfg.scan_layers:
      out.append((("layers", *sub), [k for keys in layer_keys for k in keys], True))
    else:
      out.extend((("layers", i, *sub), [(k, a, b, None, p) for k, a, b, _, p in keys], False)
                 for i, keys in enumerate(layer_keys))
  return out


def _slot(array: np.ndarray, layer: int | None, part: int | None) -> np.ndarray:
  """The view of one HF tensor inside our (possibly stacked, possibly fused) parameter."""
  view = array if layer is None else array[layer]
  return view if part is None else view[:, part]


def load_hf(path_or_id: str | os.PathLike, dtype: str | None = None,
            mesh: jax.sharding.Mesh | None = None, rules: LogicalRules | None = None,
            **config_overrides) -> Qwen2:
  """Loads a HF Qwen2 checkpoint into a model sharded on `mesh` (or on one device).

  `dtype` sets both the parameter and compute dtype (default: float32). Other `Qwen2Config`
  fields (e.g. `scan_layers=True`, `remat_policy="full"`) can be overridden by keyword.
  """
  ckpt = resolve_checkpoint_dir(path_or_id)
  if dtype is not None:
    config_overrides.setdefault("param_dtype", dtype)
    config_overrides.setdefault("dtype", dtype)
  cfg = read_hf_config(ckpt, **config_overrides)
  if rules is None and mesh is not None:
    rules = LogicalRules(mesh)
  files = _tensor_files(ckpt)
  _check_keys(cfg, files)

  graphdef, abstract = nnx.split(abstract_model(cfg, rules))
  shardings = None if rules is None else state_shardings(abstract, rules)
  device = jax.local_devices()[0]
  read = _Reader(files)
  sources = _hf_sources(cfg)
  for path, keys, stacked in tqdm(sources, desc=f"load {ckpt.name}", unit="param",
                                  disable=len(sources) < 50):
    var = _get(abstract, path)
    target = var.get_value()
    sharding = (_get(shardings, path).get_value() if shardings is not None else
                jax.sharding.SingleDeviceSharding(device))
    var.set_value(_place_shards(path, keys, target.shape, target.dtype, sharding, read, cfg))
  return nnx.merge(graphdef, abstract)


def _place_shards(path, keys, shape, dtype, sharding, read, cfg) -> jax.Array:
  """One parameter as a sharded array, building only the shards this host's devices hold
  (never the whole parameter: a stacked or fused tensor of 7B is several GB). Each HF tensor
  (one layer, one part) is read once and the part of it that falls in each distinct local
  shard is copied there (replicated devices share one buffer)."""
  by_device = sharding.addressable_devices_indices_map(shape)
  shards: dict[tuple, tuple[tuple[range, ...], np.ndarray]] = {}
  device_key = {}
  for d, idx in by_device.items():
    idx = tuple(idx) + (slice(None),) * (len(shape) - len(idx))
    ranges = tuple(range(*sl.indices(n)) for sl, n in zip(idx, shape))
    k = tuple((r.start, r.stop, r.step) for r in ranges)
    device_key[d] = k
    if k not in shards:
      shards[k] = (ranges, np.empty(tuple(len(r) for r in ranges), dtype))
  for key, to_ours, _, layer, part in keys:
    lead = 0 if layer is None else 1  # parameter axes: [layer]? then the HF tensor's axes
    value = None
    for ranges, out in shards.values():
      if layer is not None and layer not in ranges[0]:
        continue
      if part is not None and part not in ranges[lead + 1]:
        continue
      if value is None:
        value = to_ours(read(key), cfg)
      src, dst = [], []
      if layer is not None:
        dst.append(ranges[0].index(layer))
      for axis in range(lead, len(shape)):
        r = ranges[axis]
        if part is not None and axis == lead + 1:  # fused tensors: the part's axis
          dst.append(r.index(part))
          continue
        src.append(slice(r.start, r.stop, r.step))
        dst.append(slice(None))
      piece = value[tuple(src)]
      slot = out[tuple(dst)]
      if piece.shape != slot.shape:  # the table and the model disagree: a bug, not bad input
        raise AssertionError(f"{path} <- {key}: converted piece {piece.shape} != {slot.shape}")
      slot[...] = piece
  arrays = [jax.device_put(shards[device_key[d]][1], d) for d in by_device]
  return jax.make_array_from_single_device_arrays(shape, sharding, arrays)


def _host_array(x: jax.Array) -> np.ndarray:
  if x.is_fully_addressable:
    return np.asarray(jax.device_get(x))
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _parse_size(size: int | str) -> int:
  if isinstance(size, int):
    return size
  m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?B)\s*", size.upper())
  if not m:
    raise ValueError(f"max_shard_size={size!r}: expected bytes or e.g. '5GB', '500MB'")
  return int(float(m.group(1)) * {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9}[m.group(2)])


def save_hf(model: Qwen2, out_dir: str | os.PathLike, dtype: str = "bfloat16",
            tokenizer: Any = None, max_shard_size: int | str = "5GB",
            overwrite: bool = False) -> Path:
  """Writes `model` as a HF checkpoint that `transformers` loads unmodified.

  `tokenizer`: a HF tokenizer object or a directory holding tokenizer files, copied along
  with Z1's chat template (`data.tokenizer.Z1_CHAT_TEMPLATE`: the Qwen2.5 layout with the
  default system prompt, the prompt Z1 trains on) in place of the tokenizer's own.
  Multi-host: every process must call this (tensors are gathered); process 0 writes.
  """
  out = Path(out_dir).expanduser().absolute()
  if out.exists() and not overwrite:
    raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
  cfg = model.cfg
  np_dtype = np.dtype(jax.numpy.dtype(dtype))
  if not jax.numpy.issubdtype(np_dtype, jax.numpy.floating):
    raise Z1Error(f"dtype={dtype!r} (--dtype): weights need a float dtype such as bfloat16")
  cap = _parse_size(max_shard_size)
  state = nnx.state(model)
  sources = _hf_sources(cfg)

  # Plan the shards from shapes alone, then fill them one tensor at a time.
  hf_shapes = _expected_hf_shapes(cfg)
  plan: list[list[int]] = [[]]
  size = 0
  for i, (_, keys, _) in enumerate(sources):
    nbytes = sum(int(np.prod(hf_shapes[k[0]])) for k in keys) * np_dtype.itemsize
    if plan[-1] and size + nbytes > cap:
      plan.append([])
      size = 0
    plan[-1].append(i)
    size += nbytes
  names = (["model.safetensors"] if len(plan) == 1 else
           [f"model-{j + 1:05d}-of-{len(plan):05d}.safetensors" for j in range(len(plan))])

  writer = jax.process_index() == 0
  tmp = temp_sibling(out)
  if writer:
    out.parent.mkdir(parents=True, exist_ok=True)
    sweep_partials(out)
    tmp.mkdir()
  try:
    weight_map, total = {}, 0
    bar = tqdm(total=len(sources), desc=f"export {out.name}", unit="param",
               disable=len(sources) < 50 or not writer)
    for name, members in zip(names, plan):
      tensors = {}
      for i in members:
        path, keys, stacked = sources[i]
        host = _host_array(_get(state, path).get_value())
        for key, _, to_hf, layer, part in keys:
          w = np.ascontiguousarray(to_hf(_slot(host, layer, part), cfg).astype(np_dtype))
          tensors[key] = w
          weight_map[key] = name
          total += w.nbytes
        bar.update()
      if writer:
        _save_safetensors(tensors, tmp / name)
    bar.close()
    if writer:
      if len(names) > 1:
        (tmp / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))},
            indent=2))
      (tmp / "config.json").write_text(json.dumps(to_hf_config(cfg, str(np_dtype)), indent=2))
      (tmp / "generation_config.json").write_text(json.dumps({
          "bos_token_id": cfg.bos_token_id, "pad_token_id": cfg.pad_token_id,
          "eos_token_id": sorted({cfg.eos_token_id, cfg.pad_token_id}), "do_sample": False},
          indent=2))
      if tokenizer is not None:
        _save_tokenizer(tokenizer, tmp)
        from z1_jax.data.tokenizer import write_chat_template
        write_chat_template(tmp)  # the prompt layout the model was trained on
      _replace_dir(tmp, out, overwrite)
  except BaseException:
    if writer:
      shutil.rmtree(tmp, ignore_errors=True)
    raise
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"save_hf:{out}")
  return out


def _save_safetensors(tensors: dict[str, np.ndarray], path: Path) -> None:
  # safetensors' numpy writer has no bfloat16; its flax writer does (CPU arrays, no copy).
  from safetensors.flax import save_file
  with jax.default_device(jax.local_devices(backend="cpu")[0]):
    save_file({k: jax.numpy.asarray(v) for k, v in tensors.items()}, str(path),
              metadata={"format": "pt"})


def _save_tokenizer(tokenizer: Any, dest: Path) -> None:
  if isinstance(tokenizer, (str, os.PathLike)):
    src = Path(tokenizer)
    names = ["tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
             "special_tokens_map.json", "added_tokens.json"]
    copied = [n for n in names if (src / n).exists()]
    if not copied:
      raise FileNotFoundError(f"tokenizer directory {src} holds none of {names}")
    for n in copied:
      shutil.copy2(src / n, dest / n)
  else:
    tokenizer.save_pretrained(str(dest))


def _replace_dir(tmp: Path, out: Path, overwrite: bool) -> None:
  if out.exists() and not overwrite:
    raise FileExistsError(f"{out} appeared during export; pass overwrite=True (--overwrite) to "
                          "replace it")
  commit(tmp, out)
