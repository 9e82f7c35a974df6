"""The 7B serving table, on paper: compiles the engine's decode chunk (and a prefill chunk) of
Qwen2.5-Coder-7B (bf16, all 28 layers, padded heads on tensor=8, the Pallas ragged paged
attention kernel) for TPU slices on this host (compile-only devices: libtpu, no chips) with
`--batch` sequences and a pool sized as `z1 serve` sizes it, and prints per chip: the
compiler's memory figures, the HBM bytes one decode step reads, the sequences that fit, and
the output tokens/s a memory-bandwidth roofline predicts for Z1's length mix.

HBM bytes per step: what a decode step must read, the weights on a chip (from the compiled
program's argument bytes, less the pool) and each row's live tokens x the KV bytes of a token
on a chip (the Pallas kernel reads only those; it is opaque to XLA's cost analysis, whose
`bytes accessed` estimate of the rest of the step, every op's operands and outputs, is printed
beside it). The roofline: a step takes (HBM bytes per step) / (HBM bandwidth) and makes one
token per row. Z1's mix (README, "Serve"): prompts of `--prompt` tokens and trajectories of Z1's
mean length (1,159 tokens, Z1-Code-Reasoning-107K), so a row holds prompt + 1,159 tokens at its
end and about prompt + 580 on average while it decodes. The dense cache (the engine before
paging, kept for the comparison) held `--dense-len` positions per row and read all of them at
every step.

usage: JAX_PLATFORMS=cpu .venv/bin/python scripts/aot_decode.py [--batch 256] [--only v5e-8]
"""

import argparse
import json

from z1_jax.infer.aot import compile_decode
from z1_jax.infer.engine.core import DEVICE_MEMORY_SHARE
from z1_jax.model.config import get_preset
from z1_jax.model.serving import padded_config
from z1_jax.topology import accelerator, topology_mesh

GiB = 2**30
CHUNK = 16
# HBM bandwidth per chip (Cloud TPU system architecture pages: v5e 819 GB/s, v6e 1,640 GB/s)
HBM_BYTES_PER_S = {"v5e": 819e9, "v6e": 1640e9}
Z1_MEAN_TRAJECTORY = 1159  # tokens, Z1-Code-Reasoning-107K


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--batch", type=int, default=256, help="rows decoded at once (paged)")
  p.add_argument("--prompt", type=int, default=600, help="mean prompt tokens of the mix")
  p.add_argument("--max-seq-len", type=int, default=8192, help="longest request")
  p.add_argument("--dense-len", type=int, default=8192, help="positions per row, dense cache")
  p.add_argument("--dense-batch", type=int, default=64, help="rows of the dense cache")
  p.add_argument("--layers", type=int, default=28)
  p.add_argument("--only", default=None, help="one slice, e.g. v5e-8")
  args = p.parse_args()
  cfg = get_preset("qwen2.5-coder-7b-instruct", param_dtype="bfloat16", dtype="bfloat16",
                   num_layers=args.layers)
  for name in [args.only] if args.only else ["v5e-8", "v6e-8"]:
    acc = accelerator(name)
    mesh = topology_mesh(name, {"tensor": 8})
    served = padded_config(cfg, 8)
    kv_token = served.num_layers * 2 * (served.num_kv_heads // 8) * served.dim_per_head * 2
    # a first compile with a small pool: the weights' and the step's own bytes per chip
    probe = compile_decode(cfg, mesh, args.batch, pool_tokens=args.max_seq_len,
                           max_seq_len=args.max_seq_len)["decode_loop"]
    pool_probe = probe["pool_pages"] * 128 * kv_token
    fixed = probe["argument_bytes"] - pool_probe + probe["temp_bytes"]
    pool_tokens = int((acc.hbm_bytes - fixed) * DEVICE_MEMORY_SHARE) // kv_token // 128 * 128
    out = compile_decode(cfg, mesh, args.batch, pool_tokens=pool_tokens,
                         max_seq_len=args.max_seq_len, prefill_tokens=512, chunk_steps=CHUNK)
    dec = out["decode_loop"]
    peak_row = args.prompt + Z1_MEAN_TRAJECTORY
    mean_row = args.prompt + Z1_MEAN_TRAJECTORY // 2
    bw = HBM_BYTES_PER_S[acc.generation.name]
    weights = probe["argument_bytes"] - pool_probe
    paged_step = weights + args.batch * mean_row * kv_token
    dense_cache = args.dense_batch * args.dense_len * kv_token
    dense_step = weights + dense_cache  # the dense step read every position of every row
    dense_fit = int((acc.hbm_bytes - fixed) // (args.dense_len * kv_token))
    row = {
        "slice": name, "layers": args.layers, "batch": args.batch,
        "pool_tokens": pool_tokens, "pool_gib": round(pool_tokens * kv_token / GiB, 2),
        "decode_argument_gib": round(dec["argument_bytes"] / GiB, 2),
        "decode_temp_gib": round(dec["temp_bytes"] / GiB, 3),
        "prefill_temp_gib": round(out["prefill"]["temp_bytes"] / GiB, 3),
        "fits": dec["argument_bytes"] + dec["temp_bytes"] <= acc.hbm_bytes,
        "compile_s": round(dec["compile_s"], 1),
        "kernel_calls": dec["hlo"].count('custom_call_target="tpu_custom_call"'),
        "weights_gib": round(weights / GiB, 2), "kv_bytes_per_token": kv_token,
        "step_cost_analysis_gib": round(dec["cost_bytes_accessed"] / GiB, 3),
        "paged_step_hbm_gib": round(paged_step / GiB, 2),
        "paged_sequences_fit": pool_tokens // peak_row,
        "paged_tokens_per_s": round(args.batch / (paged_step / bw)),
        "dense_step_hbm_gib": round(dense_step / GiB, 2),
        "dense_sequences_fit": dense_fit,
        "dense_tokens_per_s": round(args.dense_batch / (dense_step / bw)),
    }
    dense_at_fit = dense_fit / ((dense_step - dense_cache + dense_fit * args.dense_len
                                 * kv_token) / bw)
    row["dense_at_fit_tokens_per_s"] = round(dense_at_fit)
    row["paged_over_dense"] = round(row["paged_tokens_per_s"] / max(
        row["dense_tokens_per_s"], dense_at_fit), 2)
    print(json.dumps(row))


if __name__ == "__main__":
  main()
