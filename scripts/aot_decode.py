"""Compiles the decode programs of Qwen2.5-Coder-7B (bf16, all 28 layers, serving rules) for
TPU slices on this host (compile-only devices: needs libtpu, no chips) and prints the
compiler's per-chip memory figures and the decode step's collective bytes per token per chip
(`z1_jax.collectives`). Nothing is allocated. Meshes: v5e-4 tensor=4; v5e-8 data=2 x tensor=4
and tensor=8, v6e-8 tensor=8 (28 query heads do not divide over 8: padded to 32,
`model/serving.py`).

usage: JAX_PLATFORMS=cpu .venv/bin/python scripts/aot_decode.py [--batch 64]
       [--prompt-width 1024] [--gen-width 7168] [--only INDEX] [--no-prefill]
"""

import argparse
import json

from z1_jax.collectives import collective_bytes
from z1_jax.infer.aot import compile_decode
from z1_jax.model.config import get_preset
from z1_jax.topology import topology_mesh

GiB = 2**30
CHUNK = 16  # tokens per decode chunk (the engine's default)
MESHES = (("v5e-4", {"tensor": 4}), ("v5e-8", {"data": 2, "tensor": 4}),
          ("v5e-8", {"tensor": 8}), ("v6e-8", {"tensor": 8}))


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--prompt-width", type=int, default=1024)
  p.add_argument("--gen-width", type=int, default=4096)
  p.add_argument("--layers", type=int, default=28)
  p.add_argument("--only", type=int, default=None, help="index of one mesh of MESHES")
  p.add_argument("--no-prefill", action="store_true", help="the decode chunk only")
  args = p.parse_args()
  cfg = get_preset("qwen2.5-coder-7b-instruct", param_dtype="bfloat16", dtype="bfloat16",
                   num_layers=args.layers)
  meshes = MESHES if args.only is None else MESHES[args.only:args.only + 1]
  for slice_name, shape in meshes:
    mesh = topology_mesh(slice_name, shape)
    out = compile_decode(cfg, mesh, args.batch, args.prompt_width, args.gen_width,
                         prefill=not args.no_prefill, chunk_steps=CHUNK)
    for program, fig in out.items():
      per_token = {}
      if program == "decode_loop":  # a chunk of CHUNK tokens (its loop may stop earlier)
        per_token = {f"{k}_per_token_mib": round(v.bytes / CHUNK / 2**20, 3) for k, v in
                     collective_bytes(fig.pop("hlo"), mesh.size, unknown_trips=CHUNK).items()
                     if v.count}
      fig.pop("hlo", None)
      print(json.dumps({"slice": slice_name, "mesh": shape, **per_token,
                        "program": program, "layers": args.layers, "batch": args.batch,
                        "prompt_width": args.prompt_width, "gen_width": args.gen_width,
                        "compile_s": round(fig["compile_s"], 1),
                        **{k: round(v / GiB, 3) for k, v in fig.items()
                           if k.endswith("_bytes")}}).replace("_bytes", "_gib"))


if __name__ == "__main__":
  main()
