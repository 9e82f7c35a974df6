"""`z1 train` and `z1 plan`: options and handlers (the work is in `loop.py` and `plan.py`)."""

from __future__ import annotations

import json
import sys

from z1_jax import distributed
from z1_jax.cli_args import accelerator_name, mesh_spec, positive_int


def run_train(args) -> int:
  distributed.initialize(args.coordinator, args.num_processes, args.process_id)
  from z1_jax.config import load_config
  from z1_jax.train.loop import train
  from z1_jax.train.interrupt import EXIT_CODES
  summary = train(load_config(args.config, args.overrides), args.out)
  print(json.dumps(summary))
  if summary.get("already_done"):
    print(f"z1 train: {summary['already_done']}", file=sys.stderr)
  if summary.get("stopped_by"):
    print(f"z1 train: stopped by {summary['stopped_by']} after step {summary['step']}, which is "
          f"saved; rerun the same command to resume", file=sys.stderr)
    return EXIT_CODES[summary["stopped_by"]]
  return 0


def run_plan(args) -> int:
  from z1_jax.train.plan import prepare_cpu_devices
  prepare_cpu_devices(args.devices)  # before JAX starts
  from z1_jax.config import load_config
  from z1_jax.train.plan import plan_train
  plan = plan_train(load_config(args.config, args.overrides), args.accelerator, args.mesh,
                    args.devices)
  print(json.dumps(plan.to_dict(), indent=2) if args.json else plan.summary())
  return 0


def add_parser(sub) -> None:
  tr = sub.add_parser("train", help="SFT on packed Z1 data (resumes when --out holds a run)",
                      description="Train from a TOML run config (configs/*.toml). Extra "
                      "arguments section.key=value override it, e.g. train.max_steps=10 "
                      "checkpoint.every_steps=5 train.peak_lr=2e-5.")
  tr.add_argument("--config", required=True, help="TOML run config, e.g. configs/tiny.toml (required)")
  tr.add_argument("--out", required=True,
                  help="run directory: checkpoints/, metrics.jsonl, tb/ (resumed if it holds "
                       "a run; required)")
  tr.add_argument("overrides", nargs="*", metavar="section.key=value",
                  help="config overrides (default: none)")
  distributed.add_args(tr)
  tr.set_defaults(fn=run_train)


  pl = sub.add_parser(
      "plan", help="compile the train step for a TPU slice ahead of time: does it fit?",
      description="Compiles the run's real train step ahead of time for a Cloud TPU slice "
      "(libtpu, the tpu extra; no TPU needed) or for N CPU devices, on abstract arguments "
      "(nothing is allocated), and prints per-chip memory against HBM, FLOPs per step, the "
      "mesh and whether it fits. Extra arguments section.key=value override the config. Exit "
      "status 0 whether or not the run fits (the answer is `fits`), 2 for bad input.")
  pl.add_argument("--config", required=True,
                  help="TOML run config, e.g. configs/z1-qwen2.5-coder-7b.toml (required)")
  target = pl.add_mutually_exclusive_group(required=True)
  target.add_argument("--accelerator", type=accelerator_name, default=None,
                      help="Cloud TPU slice: v5p-8..., v5litepod-16 (v5e-16), v4-32, v6e-8 "
                           "(default: none; this or --devices is required)")
  target.add_argument("--devices", type=positive_int, default=None,
                      help="plan on this many host CPU devices instead, no libtpu needed "
                           "(default: none; this or --accelerator is required)")
  pl.add_argument("--mesh", type=mesh_spec, default=None,
                  help="data=A,fsdp=B,tensor=C (one may be -1; default: the config's [mesh] "
                       "over the target's devices)")
  pl.add_argument("--json", action="store_true", help="print the plan as JSON")
  pl.add_argument("overrides", nargs="*", metavar="section.key=value",
                  help="config overrides (default: none)")
  pl.set_defaults(fn=run_plan)
