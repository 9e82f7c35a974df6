"""Compiles the decode programs of Qwen2.5-Coder-7B (bf16, all 28 layers, serving rules) for
TPU v5e slices on this host (compile-only devices; needs libtpu, no chips) and prints the
compiler's per-chip memory figures. Nothing is allocated.

usage: JAX_PLATFORMS=cpu TPU_LIBRARY_PATH=<site-packages>/libtpu/libtpu.so \\
       .venv/bin/python scripts/aot_decode.py [--batch 8] [--prompt-width 1024] [--gen-width 4096]
"""

import argparse
import json
import os

os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

from jax.experimental import mesh_utils, topologies  # noqa: E402
from jax.sharding import AxisType, Mesh  # noqa: E402

from z1_jax.infer.aot import compile_decode  # noqa: E402
from z1_jax.model.config import get_preset  # noqa: E402

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
  for grid, tensor in (("2x2", 4), ("2x4", 8)):
    topo = topologies.get_topology_desc(
        topology_name=f"v5e:{grid}", platform="tpu", chip_config_name="default",
        chips_per_host_bounds=(2, 2, 1), num_slices=1, wrap=(False, False, False))
    mesh = Mesh(mesh_utils.create_device_mesh((len(topo.devices) // tensor, 1, tensor),
                                              devices=topo.devices),
                ("data", "fsdp", "tensor"), axis_types=(AxisType.Auto,) * 3)
    out = compile_decode(cfg, mesh, args.batch, args.prompt_width, args.gen_width)
    for program, fig in out.items():
      print(json.dumps({"slice": f"v5e-{len(topo.devices)}", "tensor": tensor,
                        "program": program, "layers": args.layers, "batch": args.batch,
                        "prompt_width": args.prompt_width, "gen_width": args.gen_width,
                        "compile_s": round(fig["compile_s"], 1),
                        **{k: round(v / GiB, 3) for k, v in fig.items()
                           if k.endswith("_bytes")}}).replace("_bytes", "_gib"))


if __name__ == "__main__":
  main()
