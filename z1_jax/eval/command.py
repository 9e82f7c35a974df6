"""`z1 score` and `z1 sweep`: options and handlers (the work is in `score.py` and `sweep.py`)."""

from __future__ import annotations

import argparse
import json

from z1_jax import distributed
from z1_jax.cli_args import (choice_of, float_dtype, int_list, mesh_spec, non_negative_float,
                             non_negative_int, positive_float, positive_int)
from z1_jax.data.format import DEFAULT_SYSTEM_PROMPT


def run_score(args) -> int:
  from z1_jax.eval.score import score_file
  summary = score_file(args.benchmark, args.samples, out=args.out, data=args.data,
                       workers=args.workers, timeout=args.timeout,
                       allow_unsandboxed=args.allow_unsandboxed,
                       sandbox_python=args.sandbox_python, overwrite=args.overwrite)
  print(json.dumps({"benchmark": args.benchmark, **summary}, indent=2))
  return 0


def run_sweep(args) -> int:
  distributed.initialize(args.coordinator, args.num_processes, args.process_id)
  import jax
  from z1_jax.eval.sweep import run_from_args
  from z1_jax.model.sharding import mesh_from_spec
  summary = run_from_args(args, mesh=lambda: mesh_from_spec(args.mesh))
  if jax.process_index() != 0:  # process 0 wrote the outputs and reports them
    return 0
  print(json.dumps({"out": args.out, "accuracy": {
      name: {e["budget"]: round(e["accuracy"], 4) for e in entries}
      for name, entries in summary.get("benchmarks", {}).items()}}, indent=2))
  return 0


def _benchmarks() -> list[str]:
  from z1_jax.eval.benchmarks import LOADERS
  return list(LOADERS)


def _add_scoring_args(p: argparse.ArgumentParser) -> None:
  """The scorer's options, shared by `z1 score` and `z1 sweep`."""
  p.add_argument("--workers", type=positive_int, default=None,
                 help="samples scored in parallel (default: the number of CPUs)")
  p.add_argument("--allow-unsandboxed", action="store_true",
                 help="run model code without bubblewrap (limits only): unsafe")
  p.add_argument("--sandbox-python", default=None,
                 help="interpreter that runs the programs (default: the system python3); "
                      "BigCodeBench needs one with its libraries (pandas, matplotlib, ...)")


def add_parser(sub) -> None:
  from z1_jax.infer.load import DTYPE_HELP, MESH_HELP, add_cache_args
  score = sub.add_parser("score", help="score given completions against a benchmark")
  score.add_argument("--benchmark", required=True, type=choice_of(_benchmarks, "benchmark"),
                     help="humaneval, aime2024, aime2025, math500-mmath, math500, gpqa-diamond, "
                          "livecodebench, bigcodebench-hard (required)")
  score.add_argument("--samples", required=True,
                     help="JSONL rows with the benchmark's id field and 'completion' (required)")
  score.add_argument("--out", default=None,
                     help="JSONL verdicts, one per input row, in order (default: summary only)")
  score.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
  score.add_argument("--data", default=None,
                     help="local benchmark file instead of the packaged copy or the hub "
                          "(default: packaged copy or hub)")
  score.add_argument("--timeout", type=positive_float, default=None,
                     help="seconds per program run (default: the benchmark's own: humaneval 10, "
                          "livecodebench 30, bigcodebench-hard 240, see eval/score.py)")
  _add_scoring_args(score)
  score.set_defaults(fn=run_score)


  swp = sub.add_parser("sweep", help="accuracy against thinking budget on benchmarks: "
                       "samples.jsonl, summary.json/.md, sweep.png (resumable)")
  src = swp.add_mutually_exclusive_group(required=True)
  src.add_argument("--hf", default=None, help="HF checkpoint directory (default: none)")
  src.add_argument("--ckpt", default=None, help="Orbax checkpoint directory (default: none)")
  swp.add_argument("--benchmark", required=True,
                   help="NAME[,NAME...] of humaneval, aime2024, aime2025, math500-mmath, "
                        "math500, gpqa-diamond, livecodebench, bigcodebench-hard (required)")
  swp.add_argument("--budgets", type=int_list, required=True,
                   help="increasing thinking budgets, e.g. 512,1024,2048,4096 (required)")
  swp.add_argument("--answer-tokens", type=positive_int, default=1024,
                   help="tokens allowed after the trigger")
  swp.add_argument("--mode", choices=("z1", "s1"), default="z1",
                   help="Shifted Thinking Window (z1) or s1 budget forcing")
  swp.add_argument("--placement", choices=("replace", "append"), default=None,
                   help="trigger inside the window's last tokens or after it (default: replace "
                        "for z1, append for s1)")
  swp.add_argument("--limit", type=positive_int, default=None,
                   help="first N problems of each benchmark (default: all)")
  swp.add_argument("--samples-per-problem", type=positive_int, default=1,
                   help="samples per problem (> 1 needs --temperature)")
  swp.add_argument("--temperature", type=non_negative_float, default=0.0,
                   help="0 = greedy, the paper's setting")
  swp.add_argument("--seed", type=non_negative_int, default=0, help="sampling seed")
  swp.add_argument("--mesh", type=mesh_spec, default=None, help=MESH_HELP)
  add_cache_args(swp)
  swp.add_argument("--batch-size", type=positive_int, default=None,
                   help="problems decoded together (default 64)")
  swp.add_argument("--dtype", type=float_dtype, default=None, help=DTYPE_HELP)
  swp.add_argument("--tokenizer", default=None,
                   help="tokenizer dir (default: --hf's own, else the offline Qwen2.5 one)")
  swp.add_argument("--data", default=None,
                   help="local benchmark file(s) instead of the hub: FILE for one benchmark, "
                        "or NAME=FILE[,NAME=FILE...] (default: none)")
  swp.add_argument("--system-prompt", default=DEFAULT_SYSTEM_PROMPT,
                   help="system turn of the prompt (default: Qwen's own)")
  swp.add_argument("--instruction", default=None,
                   help="text after each problem (default: Z1's per family, e.g. 'Please reason "
                        "step by step.' for code)")
  swp.add_argument("--reference", default=None,
                   help="JSON points to plot beside the run, e.g. "
                        "configs/paper_reference_points.json (default: none)")
  _add_scoring_args(swp)
  swp.add_argument("--no-progress", action="store_true", help="no progress bars")
  swp.add_argument("--out", required=True,
                   help="directory for the outputs; rerun with the same config to resume "
                        "(required)")
  distributed.add_args(swp)
  swp.set_defaults(fn=run_sweep)
