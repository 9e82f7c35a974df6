"""`z1 convert hf-to-orbax|orbax-to-hf`: options and handler (the work is in `convert.py`)."""

from __future__ import annotations

import json

from z1_jax import distributed
from z1_jax.cli_args import byte_size, float_dtype, mesh_spec


def run(args) -> int:
  distributed.initialize(args.coordinator, args.num_processes, args.process_id)
  from z1_jax.checkpoint.convert import hf_to_orbax, orbax_to_hf
  if args.direction == "hf-to-orbax":
    result = hf_to_orbax(args.hf, args.out, args.dtype, args.mesh, args.overwrite)
  else:
    result = orbax_to_hf(args.ckpt, args.out, args.dtype, args.tokenizer, args.max_shard_size,
                         args.mesh, args.overwrite)
  print(json.dumps(result))
  return 0


def add_parser(sub) -> None:
  conv = sub.add_parser("convert", help="convert checkpoints between HF and Orbax")
  conv_sub = conv.add_subparsers(dest="direction", required=True)
  h2o = conv_sub.add_parser("hf-to-orbax", help="HF safetensors directory (or hub id) -> Orbax")
  h2o.add_argument("--hf", required=True, help="local HF checkpoint directory (the one holding "
                   "config.json) or hub id (required)")
  h2o.add_argument("--out", required=True,
                   help="Orbax checkpoint directory to create, written atomically (required)")
  h2o.add_argument("--dtype", type=float_dtype, default=None,
                   help="parameter dtype: float32, bfloat16 or float16 (default: float32)")
  o2h = conv_sub.add_parser("orbax-to-hf", help="Orbax checkpoint -> HF safetensors directory")
  o2h.add_argument("--ckpt", required=True, help="Orbax checkpoint directory (required)")
  o2h.add_argument("--out", required=True,
                   help="HF directory to create, written atomically (required)")
  o2h.add_argument("--dtype", type=float_dtype, default="bfloat16",
                   help="tensor dtype written: float32, bfloat16 or float16")
  o2h.add_argument("--tokenizer", default=None,
                   help="directory with tokenizer files to copy along (default: none copied)")
  o2h.add_argument("--max-shard-size", type=byte_size, default="5GB",
                   help="size cap per safetensors file, e.g. 5GB, 500MB")
  for c in (h2o, o2h):
    c.add_argument("--overwrite", action="store_true",
                   help="replace --out if it holds a previous export of this kind (never a "
                        "directory holding the input or other files)")
    c.add_argument("--mesh", type=mesh_spec, default=None,
                   help="device mesh DATA,FSDP,TENSOR (one may be -1: the rest), e.g. -1,4,2 "
                        "or data=-1,fsdp=4,tensor=2 (default: one device)")
    distributed.add_args(c)
    c.set_defaults(fn=run)
