"""The `z1` command line. Heavy imports happen inside each command."""

from __future__ import annotations

import argparse
import json
import sys

from z1_jax.cli_args import (Z1Parser, accelerator_name, byte_size, choice_of, float_dtype,
                             int_list, mesh_spec, non_negative_float, non_negative_int,
                             positive_float, positive_int, probability)
from z1_jax.data.format import DEFAULT_SYSTEM_PROMPT
from z1_jax.data.sources import HUB_DATASET


def cmd_convert(args) -> int:
  from z1_jax.checkpoint.convert import hf_to_orbax, orbax_to_hf
  if args.direction == "hf-to-orbax":
    result = hf_to_orbax(args.hf, args.out, args.dtype, args.mesh, args.overwrite)
  else:
    result = orbax_to_hf(args.ckpt, args.out, args.dtype, args.tokenizer, args.max_shard_size,
                         args.mesh, args.overwrite)
  print(json.dumps(result))
  return 0


def cmd_bench(args) -> int:
  from z1_jax.bench.common import print_rows
  if args.what == "forward":
    from z1_jax.bench.forward import bench_forward
    rows = bench_forward(args.preset, args.batch, args.seq_len, args.repeats)
  elif args.what == "train":
    from z1_jax.bench.train import bench_train
    rows = bench_train(args.preset, args.batch, args.seq_len, args.repeats)
  elif args.what == "data":
    from z1_jax.bench.data import bench_data
    rows = bench_data(args.examples, args.seq_len, args.tokenize_examples)
  elif args.what == "decode":
    from z1_jax.bench.decode import bench_decode
    rows = bench_decode(args.preset, args.batch, args.prompt_len, args.gen_len, args.repeats,
                        args.budgets, args.answer_tokens)
  elif args.what == "sweep":
    from z1_jax.bench.sweep import bench_sweep
    rows = bench_sweep(args.problems, tuple(args.budgets), args.answer_tokens, args.batch_size,
                       args.workers)
  else:
    from z1_jax.bench.score import bench_score
    rows = bench_score(args.workers)
  print_rows(rows, args.json)
  return 0


def cmd_demo(args) -> int:
  import dataclasses
  from z1_jax.demo.run import DemoSettings, run_demo
  settings = DemoSettings(train_examples=args.train_examples, eval_examples=args.eval_examples,
                          budgets=tuple(args.budgets or DemoSettings.budgets))
  settings = dataclasses.replace(settings, seed=args.seed)
  return run_demo(args.out, args.overrides, args.config, settings, args.overwrite)


def cmd_launch(args) -> int:
  from z1_jax.launch.tpu import run
  return run(args)


def cmd_train(args) -> int:
  from z1_jax.train.distributed import initialize
  initialize(args.coordinator, args.num_processes, args.process_id)
  from z1_jax.config import load_config
  from z1_jax.train.loop import train
  summary = train(load_config(args.config, args.overrides), args.out)
  print(json.dumps(summary))
  return 0


def cmd_plan(args) -> int:
  from z1_jax.train.plan import prepare_cpu_devices
  prepare_cpu_devices(args.devices)  # before JAX starts
  from z1_jax.config import load_config
  from z1_jax.train.plan import plan_train
  plan = plan_train(load_config(args.config, args.overrides), args.accelerator, args.mesh,
                    args.devices)
  print(json.dumps(plan.to_dict(), indent=2) if args.json else plan.summary())
  return 0


def cmd_data(args) -> int:
  from z1_jax.data.command import run_data
  print(json.dumps(run_data(args), indent=2))
  return 0


def cmd_generate(args) -> int:
  from z1_jax.infer.command import run_generate
  return run_generate(args)


def cmd_score(args) -> int:
  from z1_jax.eval.score import score_file
  summary = score_file(args.benchmark, args.samples, out=args.out, data=args.data,
                       workers=args.workers, timeout=args.timeout,
                       allow_unsandboxed=args.allow_unsandboxed,
                       sandbox_python=args.sandbox_python, overwrite=args.overwrite)
  print(json.dumps({"benchmark": args.benchmark, **summary}, indent=2))
  return 0


def cmd_sweep(args) -> int:
  from z1_jax.eval.sweep import run_from_args
  from z1_jax.model.sharding import mesh_from_spec
  summary = run_from_args(args, mesh=lambda: mesh_from_spec(args.mesh))
  print(json.dumps({"out": args.out, "accuracy": {
      name: {e["budget"]: round(e["accuracy"], 4) for e in entries}
      for name, entries in summary.get("benchmarks", {}).items()}}, indent=2))
  return 0


def _benchmarks() -> list[str]:
  from z1_jax.eval.benchmarks import LOADERS
  return list(LOADERS)


def _presets() -> list[str]:
  from z1_jax.model.config import PRESETS
  return sorted(PRESETS)


def _add_scoring_args(p: argparse.ArgumentParser) -> None:
  """The scorer's options, shared by `z1 score` and `z1 sweep`."""
  p.add_argument("--workers", type=positive_int, default=None,
                 help="samples scored in parallel (default: the number of CPUs)")
  p.add_argument("--allow-unsandboxed", action="store_true",
                 help="run model code without bubblewrap (limits only): unsafe")
  p.add_argument("--sandbox-python", default=None,
                 help="interpreter that runs the programs (default: the system python3); "
                      "BigCodeBench needs one with its libraries (pandas, matplotlib, ...)")


def build_parser() -> argparse.ArgumentParser:
  """Every option has a `type=` validator from `cli_args` (bad values are refused before any
  work) and a help text that ends with its default (`Z1HelpFormatter`; a test checks)."""
  p = Z1Parser(prog="z1", description=__doc__,
               epilog="exit codes: 0 done, 2 bad usage or input (one message naming the flag, "
                      "file or row), 1 unexpected failure, 130 interrupted. `z1 COMMAND --help` "
                      "lists a command's options with their defaults.")
  p.add_argument("--debug", action="store_true",
                 help="show Python tracebacks on errors (or set Z1_DEBUG=1)")
  sub = p.add_subparsers(dest="command", required=True)

  demo = sub.add_parser("demo", help="the whole Z1 loop on a CPU: synthetic task, tokenizer, "
                        "training from scratch, budget sweep, report, HF export (no downloads)")
  demo.add_argument("--out", default=None,
                    help="directory to create with every output (default: a new temp directory)")
  demo.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
  demo.add_argument("--config", default=None, help="run config (default: configs/demo.toml)")
  demo.add_argument("overrides", nargs="*", metavar="key=value",
                    help="config overrides, e.g. train.max_steps=50")
  demo.add_argument("--train-examples", type=positive_int, default=8000,
                    help="training programs to generate (default 8000)")
  demo.add_argument("--eval-examples", type=positive_int, default=200,
                    help="held-out programs in the sweep (default 200)")
  demo.add_argument("--budgets", type=int_list, default=None,
                    help="thinking budgets, trigger included (default 16,24,32,40,56)")
  demo.add_argument("--seed", type=non_negative_int, default=0, help="task seed (default 0)")
  demo.set_defaults(fn=cmd_demo)

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
    c.set_defaults(fn=cmd_convert)

  data = sub.add_parser("data", help="inspect and pack training data")
  data_sub = data.add_subparsers(dest="action", required=True)
  stats = data_sub.add_parser("stats", help="token lengths, overlong counts, packing efficiency")
  pack_rows = data_sub.add_parser("pack", help="write packed rows (JSONL) for inspection")
  pack_rows.add_argument("--out", required=True,
                         help="JSONL file to write, atomically (required)")
  pack_rows.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
  for c in (stats, pack_rows):
    c.add_argument("--dataset", default=None,
                   help="JSONL (.jsonl/.json, gzipped too), Parquet or Arrow file or directory, "
                        "a datasets save_to_disk directory, or a hub id such as "
                        f"{HUB_DATASET} (default: the built-in sample)")
    c.add_argument("--seq-len", type=positive_int, default=8192, help="tokens per packed row")
    c.add_argument("--tokenizer", default=None,
                   help="HF tokenizer directory or hub id (default: the offline Qwen2.5 copy)")
    c.add_argument("--overlong", choices=("truncate", "drop"), default="truncate",
                   help="what to do with examples longer than --seq-len")
    c.add_argument("--system-prompt", default=DEFAULT_SYSTEM_PROMPT,
                   help="system turn of the Qwen2.5 chat prompt (default: Qwen's own)")
    c.add_argument("--strip-think-tags", action="store_true",
                   help="remove <think>...</think> markup from responses")
    c.add_argument("--question-column", default="question", help="column holding the prompt")
    c.add_argument("--response-column", default="response", help="column holding the target")
    c.add_argument("--on-bad-row", choices=("error", "skip"), default="error",
                   help="a bad row stops with its file and row, or is skipped and counted")
    c.add_argument("--select-tokens", type=positive_int, default=None,
                   help="keep examples up to this many tokens in total, Z1 ablations "
                        "(default: keep all)")
    c.add_argument("--select-order", choices=("shortest", "longest"), default="shortest",
                   help="which examples --select-tokens keeps first")
    c.add_argument("--cache-dir", default=None,
                   help="directory to reuse tokenization across runs (default: no cache)")
    c.set_defaults(fn=cmd_data)

  gen = sub.add_parser("generate", help="decode prompts, optionally with a thinking budget")
  src = gen.add_mutually_exclusive_group(required=True)
  src.add_argument("--hf", help="HF checkpoint directory or hub id (default: none; one of "
                   "--hf/--ckpt is required)")
  src.add_argument("--ckpt", help="Orbax checkpoint: a z1 train run, a checkpoint root or one "
                   "step directory (default: none)")
  ask = gen.add_mutually_exclusive_group(required=True)
  ask.add_argument("--prompt", action="append", help="prompt text, tokenized as is (repeat "
                   "for a batch; needs a tokenizer; default: none, one of --prompt/--prompt-ids "
                   "is required)")
  ask.add_argument("--prompt-ids", action="append", type=int_list,
                   help="prompt token ids 1,2,3 (repeat for a batch; default: none)")
  gen.add_argument("--max-new-tokens", type=positive_int, default=None,
                   help="tokens to generate without a budget (default 256)")
  gen.add_argument("--thinking-budget", type=positive_int, default=None,
                   help="thinking window B in tokens (needs --answer-tokens; default: none)")
  gen.add_argument("--answer-tokens", type=positive_int, default=None,
                   help="answer allowance A after the trigger (default: none)")
  trig = gen.add_mutually_exclusive_group()
  trig.add_argument("--trigger", default=None, help="trigger text (default: the Z1 phrase; "
                    "s1: the answer marker)")
  trig.add_argument("--trigger-ids", type=int_list, default=None,
                    help="trigger token ids 1,2 (default: the trigger text tokenized)")
  gen.add_argument("--placement", choices=("replace", "append"), default=None,
                   help="trigger in the window's last positions or after it "
                        "(default: replace for z1, append for s1)")
  gen.add_argument("--mode", choices=("z1", "s1"), default="z1",
                   help="Shifted Thinking Window or s1 budget forcing (default z1)")
  gen.add_argument("--eos-ids", type=int_list, default=None,
                   help="end ids 1,2 (default: <|im_end|> and <|endoftext|>)")
  gen.add_argument("--temperature", type=non_negative_float, default=0.0,
                   help="0 is greedy (default 0)")
  gen.add_argument("--top-k", type=positive_int, default=None, help="default: off")
  gen.add_argument("--top-p", type=probability, default=None, help="default: off")
  gen.add_argument("--seed", type=non_negative_int, default=0, help="sampling seed (default 0)")
  gen.add_argument("--tokenizer", default=None,
                   help="tokenizer directory (default: the model directory's, if any)")
  gen.add_argument("--dtype", type=float_dtype, default=None, help="default float32")
  gen.add_argument("--batch-size", type=positive_int, default=None,
                   help="rows decoded together (default: all prompts, up to 64)")
  gen.add_argument("--mesh", type=mesh_spec, default=None,
                   help="device mesh DATA,FSDP,TENSOR; serving layout when FSDP is 1: batch "
                        "over data, heads over tensor (default: one device)")
  gen.add_argument("--json", action="store_true", help="one JSON object per prompt")
  gen.set_defaults(fn=cmd_generate)

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
  tr.add_argument("--coordinator", default=None,
                  help="multi-process: coordinator host:port (default: single process; TPU "
                       "pods find their peers without it)")
  tr.add_argument("--num-processes", type=positive_int, default=None,
                  help="multi-process: number of processes (default: none)")
  tr.add_argument("--process-id", type=non_negative_int, default=None,
                  help="multi-process: this process's index (default: none)")
  tr.set_defaults(fn=cmd_train)

  pl = sub.add_parser(
      "plan", help="compile the train step for a TPU slice ahead of time: does it fit?",
      description="Compiles the run's real train step ahead of time for a Cloud TPU slice "
      "(libtpu, the tpu extra; no TPU needed) or for N CPU devices, on abstract arguments "
      "(nothing is allocated), and prints per-chip memory against HBM, FLOPs per step, the "
      "mesh and whether it fits. Extra arguments section.key=value override the config.")
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
  pl.set_defaults(fn=cmd_plan)

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
  score.set_defaults(fn=cmd_score)

  launch = sub.add_parser("launch", help="train on a Cloud TPU VM slice through gcloud")
  launch_sub = launch.add_subparsers(dest="action", required=True)
  l_tpu = launch_sub.add_parser(
      "tpu", help="plan, create or reuse the TPU VM, ship the code at a pinned commit, install "
      "it (tpu extra) and run `z1 train` on all workers; stream worker 0's log")
  l_tpu.add_argument("--accelerator", required=True,
                     help="Cloud TPU type: v4-32, v5e-16 (= v5litepod-16), v5p-64, v6e-8, ... (required)")
  l_tpu.add_argument("--config", required=True, help="training config file (TOML) to ship (required)")
  l_tpu.add_argument("--out", required=True,
                     help="run directory for `z1 train --out` on the workers: gs://bucket/path "
                          "(required on multi-host slices) or an absolute path")
  l_tpu.add_argument("overrides", nargs="*", metavar="key=value",
                     help="config overrides passed to `z1 train` on every worker")
  tier = l_tpu.add_mutually_exclusive_group()
  tier.add_argument("--spot", action="store_true", help="Spot capacity (preemptible)")
  tier.add_argument("--reserved", action="store_true", help="use the project's reservation")
  l_tpu.add_argument("--runtime-version", default=None,
                     help="TPU VM software version (default: per generation, e.g. "
                          "v2-alpha-tpuv5 for v5p)")
  l_tpu.add_argument("--commit", default="HEAD", help="git revision to ship (default HEAD)")
  l_tpu.add_argument("--allow-dirty", action="store_true",
                     help="launch although the checkout has uncommitted changes (not shipped)")
  l_tpu.add_argument("--code-uri", default=None,
                     help="gs://bucket/prefix to stage the code through (default: scp)")
  l_tpu.add_argument("--remote-python", default="3.11",
                     help="Python version of the workers' venv (default 3.11, via uv)")
  l_tpu.add_argument("--skip-plan", action="store_true",
                     help="launch even if the memory plan says the config does not fit")
  l_tpu.add_argument("--queue-timeout", type=positive_float, default=120.0,
                     help="minutes to wait for a queued resource to become ACTIVE (default 120)")
  l_tpu.add_argument("--no-follow", dest="follow", action="store_false",
                     help="do not stream worker 0's log after starting")
  l_status = launch_sub.add_parser(
      "status", help="TPU state and whether z1 train runs on each worker")
  l_logs = launch_sub.add_parser("logs", help="print (and follow) one worker's training log")
  l_logs.add_argument("--worker", type=non_negative_int, default=0,
                      help="worker index (default 0)")
  l_logs.add_argument("--lines", type=positive_int, default=200,
                      help="lines of history (default 200)")
  l_logs.add_argument("--no-follow", dest="follow", action="store_false", help="print and exit")
  l_stop = launch_sub.add_parser(
      "stop", help="send SIGINT to z1 train on every worker (keeps the VM)")
  l_delete = launch_sub.add_parser("delete", help="delete the TPU VM (or its queued resource)")
  for c in (l_tpu, l_status, l_logs, l_stop, l_delete):
    c.add_argument("--name", required=True, help="TPU VM (and queued resource) name (required)")
    c.add_argument("--zone", required=True, help="Cloud zone, e.g. us-east5-a (required)")
    c.add_argument("--project", default=None, help="GCP project (default: gcloud's own)")
    c.add_argument("--dry-run", action="store_true",
                   help="print every gcloud command instead of running it")
    c.set_defaults(fn=cmd_launch)
  for c in (l_tpu, l_status, l_delete):
    c.add_argument("--queued", action=argparse.BooleanOptionalAction, default=None,
                   help="a queued resource (default: launch uses one for v5e/v5p/v6e; "
                        "status/delete look it up)")

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
  swp.add_argument("--mesh", type=mesh_spec, default=None,
                   help="device mesh DATA,FSDP,TENSOR (default: one device)")
  swp.add_argument("--batch-size", type=positive_int, default=None,
                   help="problems decoded together (default 64)")
  swp.add_argument("--dtype", type=float_dtype, default=None,
                   help="weights and compute dtype for --hf (default float32)")
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
  swp.set_defaults(fn=cmd_sweep)

  bench = sub.add_parser("bench", help="speed benchmarks against a reference")
  bench_sub = bench.add_subparsers(dest="what", required=True)
  fwd = bench_sub.add_parser("forward", help="prefill and decode step vs HF transformers")
  fwd.add_argument("--preset", type=choice_of(_presets, "preset"), default="qwen2.5-0.5b",
                   help="model size (random weights)")
  fwd.add_argument("--batch", type=positive_int, default=1, help="sequences per step")
  fwd.add_argument("--seq-len", type=positive_int, default=512, help="prompt tokens")
  fwd.add_argument("--repeats", type=positive_int, default=5, help="timed rounds")
  btr = bench_sub.add_parser("train", help="one train step (fwd, bwd, AdamW) vs HF PyTorch")
  btr.add_argument("--preset", type=choice_of(_presets, "preset"), default="qwen2.5-0.5b",
                   help="model shape (random weights)")
  btr.add_argument("--batch", type=positive_int, default=1, help="rows per step")
  btr.add_argument("--seq-len", type=positive_int, default=512, help="tokens per row")
  btr.add_argument("--repeats", type=positive_int, default=3,
                   help="timed steps per implementation")
  dat = bench_sub.add_parser("data", help="packing efficiency and tokenize+pack throughput")
  dat.add_argument("--examples", type=positive_int, default=107_000, help="lengths to pack")
  dat.add_argument("--seq-len", type=positive_int, default=8192,
                   help="tokens per packed row (Z1-like lengths longer than this are truncated)")
  dat.add_argument("--tokenize-examples", type=positive_int, default=1000,
                   help="texts to tokenize")
  dec = bench_sub.add_parser("decode", help="generate tokens/s vs HF transformers generate")
  dec.add_argument("--preset", type=choice_of(_presets, "preset"), default="qwen2.5-0.5b",
                   help="model size (random weights)")
  dec.add_argument("--batch", type=positive_int, default=1, help="sequences per step")
  dec.add_argument("--prompt-len", type=positive_int, default=128, help="prompt tokens")
  dec.add_argument("--gen-len", type=positive_int, default=64, help="generated tokens")
  dec.add_argument("--repeats", type=positive_int, default=3, help="timed rounds")
  dec.add_argument("--budgets", type=int_list, default=None,
                   help="also time a sweep over these budgets, e.g. 64,128,256,512,1024 "
                        "(default: no sweep)")
  dec.add_argument("--answer-tokens", type=positive_int, default=32,
                   help="answer allowance of the sweep")
  scr = bench_sub.add_parser("score", help="sandboxed HumanEval scoring vs plain subprocesses")
  scr.add_argument("--workers", type=positive_int, default=None,
                   help="parallel samples (default: the number of CPUs)")
  bsw = bench_sub.add_parser("sweep", help="z1 sweep: decode vs scoring time, vs one decode per "
                             "budget and one decode at the largest budget (tiny model)")
  bsw.add_argument("--problems", type=positive_int, default=64, help="HumanEval problems")
  bsw.add_argument("--budgets", type=int_list, default=[32, 64, 128, 256],
                   help="thinking budgets")
  bsw.add_argument("--answer-tokens", type=positive_int, default=32, help="answer allowance")
  bsw.add_argument("--batch-size", type=positive_int, default=16,
                   help="problems per decode batch")
  bsw.add_argument("--workers", type=positive_int, default=None,
                   help="scoring workers (default: CPUs)")
  for c in (fwd, btr, dat, dec, scr, bsw):
    c.add_argument("--json", action="store_true", help="JSON lines output")
    c.set_defaults(fn=cmd_bench)
  return p


def _exit_now(code: int) -> None:
  import os
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)


def main(argv: list[str] | None = None) -> int:
  """Runs one command. Exit codes: 0 done, 2 bad usage or input (one message, no traceback),
  1 an unexpected failure, 130 interrupted. `--debug` or Z1_DEBUG=1 re-raises for a traceback.
  `argv=None` (the real command line) exits at once on Ctrl-C; a list returns 130 instead."""
  import os
  from z1_jax.errors import Z1Error
  from z1_jax.topology import select_platform
  args = build_parser().parse_args(argv)
  debug = args.debug or os.environ.get("Z1_DEBUG", "") not in ("", "0")
  select_platform()  # before JAX starts: no TPU probing on hosts without chips (see there)
  try:
    code = args.fn(args)
  except KeyboardInterrupt:
    if debug:
      raise
    print(f"z1 {args.command}: interrupted; the previous output, if any, is left as it was",
          file=sys.stderr)
    if argv is None:
      # The real command line: exit now rather than wait for worker threads still running
      # (a sample being scored); `finally` blocks have run, sandboxes die with this process.
      _exit_now(130)
    return 130
  except (Z1Error, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
          PermissionError, ValueError, KeyError) as e:
    if debug:
      raise
    print(f"z1 {args.command}: error: {e}", file=sys.stderr)
    return 2
  except Exception as e:  # noqa: BLE001 - the one place that turns crashes into a message
    if debug:
      raise
    print(f"z1 {args.command}: unexpected {type(e).__name__}: {e}\n"
          f"(rerun with --debug or Z1_DEBUG=1 for the traceback)", file=sys.stderr)
    return 1
  if argv is None:  # done: a Ctrl-C while Python shuts down exits quietly with this code
    import signal
    signal.signal(signal.SIGINT, lambda *_: _exit_now(code))
  return code


if __name__ == "__main__":
  sys.exit(main())
