"""Loading a model for decoding (`z1 generate`, `z1 sweep`, `z1 serve`): from a HF directory or
an Orbax checkpoint, in the decoding dtype (`decode_dtype`), laid out on a serving mesh
(`model.sharding.serving_rules`: rows over `data`, heads over `tensor`; query heads that do
not divide over `tensor` are padded, `model/serving.py`) or on one device.

A mesh with `fsdp > 1` is refused: FSDP keeps each weight sharded and gathers it where it is
used, which in decoding is every layer of every token (the whole model crosses the
interconnect per token). Models too big for one chip are served with `tensor` parallelism."""

from __future__ import annotations

from typing import TYPE_CHECKING

from z1_jax.errors import Z1Error

if TYPE_CHECKING:  # importing this module stays light: the command line reads its help texts
  from z1_jax.model.qwen2 import Qwen2


DTYPE_HELP = ("weights and compute dtype (default: bfloat16 on TPU and GPU, float32 on CPU)")
MESH_HELP = ("serving mesh DATA,1,TENSOR: rows over data, heads over tensor; FSDP > 1 is refused "
             "(default: one device)")


def decode_dtype(dtype: str | None) -> str:
  """The weights' and compute dtype for decoding: `dtype` if given, else bfloat16 on TPU and GPU
  (the checkpoints' own dtype; the cache and matmuls at half the bytes) and float32 on CPU
  (where bfloat16 matmuls are emulated and slower)."""
  if dtype is not None:
    return dtype
  import jax
  return "float32" if jax.default_backend() == "cpu" else "bfloat16"


def check_serving_mesh(mesh, flag: str = "--mesh") -> None:
  if mesh is not None and mesh.shape["fsdp"] > 1:
    d, f, t = (mesh.shape[a] for a in ("data", "fsdp", "tensor"))
    raise Z1Error(f"{flag} {d},{f},{t}: decoding with fsdp > 1 would all-gather every weight on "
                  f"every token; use a serving mesh DATA,1,TENSOR (rows over data, heads over "
                  f"tensor), e.g. {d * f},1,{t} or {d},1,{f * t}")


def load_for_decoding(hf: str | None = None, ckpt: str | None = None, mesh=None,
                      dtype: str | None = None) -> Qwen2:
  from z1_jax.model.serving import needs_padding, pad_heads, padded_config
  from z1_jax.model.sharding import serving_rules
  check_serving_mesh(mesh)
  if hf is not None:
    from z1_jax.checkpoint.hf import load_hf, read_hf_config, resolve_checkpoint_dir
    read = lambda: read_hf_config(resolve_checkpoint_dir(hf))
  else:
    from z1_jax.checkpoint.orbax_io import load_params, read_config
    read = lambda: read_config(ckpt)[0]
  rules = None if mesh is None else serving_rules(mesh, read().num_heads)
  dtype = decode_dtype(dtype)
  if hf is not None:
    model = load_hf(hf, dtype=dtype, rules=rules)
  else:  # weights cast as read; decoding wants unrolled layers (a scanned checkpoint unstacks)
    model = load_params(ckpt, rules=rules, scan_layers=False, dtype=dtype, param_dtype=dtype)
  if mesh is not None and needs_padding(model.cfg, mesh.shape["tensor"]):
    # loaded with head_dim split over tensor, served with padded heads (`model/serving.py`)
    padded = padded_config(model.cfg, mesh.shape["tensor"])
    model = pad_heads(model, serving_rules(mesh, padded.num_heads))
  return model


def unrolled(model: Qwen2) -> Qwen2:
  """The model with unrolled layers (itself when it has them). Decoding a scanned-layer model
  would carry the whole KV cache through `lax.scan`'s xs/ys: a copy of it per token."""
  if not model.cfg.scan_layers:
    return model
  import jax
  from flax import nnx
  from z1_jax.checkpoint.orbax_io import unstack_layers
  from z1_jax.model.qwen2 import abstract_model, state_shardings
  cfg = model.cfg.replace(scan_layers=False)
  graphdef, abstract = nnx.split(abstract_model(cfg, model.rules))
  shardings = None if model.rules is None else nnx.to_pure_dict(
      state_shardings(abstract, model.rules))
  params = jax.jit(lambda p: unstack_layers(p, cfg.num_layers), out_shardings=shardings)(
      nnx.to_pure_dict(nnx.state(model)))
  nnx.replace_by_pure_dict(abstract, params)
  return nnx.merge(graphdef, abstract)


def add_cache_args(parser) -> None:
  """The paged KV cache's options, the same on `z1 generate`, `z1 sweep`, `z1 serve` and
  `z1 distill` (and `DecodeOptions` fields in Python)."""
  from z1_jax.cli_args import positive_int
  parser.add_argument("--page-size", type=positive_int, default=None,
                      help="tokens per KV cache page (default: 16 on CPU and GPU, 128 on TPU)")
  parser.add_argument("--max-total-tokens", type=positive_int, default=None,
                      help="the KV cache pool's capacity in tokens, shared by all rows (default: "
                           "90%% of the device memory left after the weights on TPU/GPU; "
                           "65,536 on CPU; at most batch size x the longest request)")
  parser.add_argument("--prefill-tokens", type=positive_int, default=512,
                      help="prompt tokens prefilled per engine step, a power of two (long "
                           "prompts go in chunks beside decoding)")


def cache_options(args) -> dict:
  """`add_cache_args`' values as engine keyword arguments."""
  return {"page_size": args.page_size, "max_total_tokens": args.max_total_tokens,
          "prefill_tokens": args.prefill_tokens}
