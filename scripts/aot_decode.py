"""Compiles the decode programs of Qwen2.5-Coder-7B (bf16, all 28 layers, serving rules) for
TPU v5e slices on this host (compile-only devices: needs libtpu, no chips) and prints the
compiler's per-chip memory figures. Nothing is allocated. v5e-4 runs tensor=4; v5e-8 runs
data=2 x tensor=4, since 28 query heads do not divide over tensor=8.

usage: JAX_PLATFORMS=cpu TPU_LIBRARY_PATH=<site-packages>/libtpu/libtpu.so \\
       .venv/bin/python scripts/aot_decode.py [--batch 8] [--prompt-width 1024] [--gen-width 4096]
"""

import argparse
import json

from z1_jax.infer.aot import compile_decode
from z1_jax.model.config import get_preset
from z1_jax.topology import topology_mesh

GiB = 2**30


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--prompt-width", type=int, default=1024)
  p.add_argument("--gen-width", type=int, default=4096)
  p.add_argument("--layers", type=int, default=28)
  args = p.parse_args()
  cfg = get_preset("qwen2.5-coder-7b-instruct", param_dtype="bfloat16", dtype="bfloat16",
                   num_layers=args.layers)
  for slice_name, shape in (("v5e-4", {"tensor": 4}), ("v5e-8", {"data": 2, "tensor": 4})):
    mesh = topology_mesh(slice_name, shape)
    out = compile_decode(cfg, mesh, args.batch, args.prompt_width, args.gen_width)
    for program, fig in out.items():
      print(json.dumps({"slice": slice_name, "mesh": shape,
                        "program": program, "layers": args.layers, "batch": args.batch,
                        "prompt_width": args.prompt_width, "gen_width": args.gen_width,
                        "compile_s": round(fig["compile_s"], 1),
                        **{k: round(v / GiB, 3) for k, v in fig.items()
                           if k.endswith("_bytes")}}).replace("_bytes", "_gib"))


if __name__ == "__main__":
  main()
