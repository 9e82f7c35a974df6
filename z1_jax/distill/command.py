"""`z1 distill`: its options and its handler (the work is in `distill/run.py`)."""

from __future__ import annotations

import json

from z1_jax import distributed
from z1_jax.cli_args import float_dtype, mesh_spec, positive_float


def _teacher_name(kind: str, path: str) -> str:
  """The `teacher` column's default: the checkpoint's directory name (for a `z1 train` run's
  `checkpoints/` or a step inside it, the run's name)."""
  from pathlib import PurePath
  p = PurePath(path.rstrip("/"))
  while kind == "ckpt" and (p.name == "checkpoints" or p.name.isdigit()) and p.parent != p:
    p = p.parent
  return p.name or path


def run(args) -> int:
  distributed.initialize(args.coordinator, args.num_processes, args.process_id)
  import jax
  from z1_jax.distill.config import load_config
  cfg = load_config(args.config, args.overrides)  # bad keys and values fail before any work
  from z1_jax.distill.run import Teacher, run_distill
  from z1_jax.errors import Z1Error
  from z1_jax.infer.load import decode_dtype, load_for_decoding
  from z1_jax.model.sharding import mesh_from_spec
  from z1_jax.paths import as_path
  kind, path = ("hf", args.hf) if args.hf else ("ckpt", args.ckpt)
  where = as_path(path)
  if not where.is_dir():
    raise Z1Error(f"--{kind} {path}: not a directory")
  from z1_jax.data.tokenizer import load_tokenizer
  own = kind == "hf" and (where / "tokenizer.json").exists()
  tokenizer = load_tokenizer(args.tokenizer or (path if own else None))
  resolved = str(where.resolve()) if "://" not in str(path) else str(path)
  teacher = Teacher(kind, resolved, args.teacher_name or _teacher_name(kind, resolved))

  def load_model():
    return load_for_decoding(args.hf, args.ckpt, mesh_from_spec(args.mesh), args.dtype)

  report = run_distill(cfg, args.problems, args.out, teacher=teacher, tokenizer=tokenizer,
                       load_model=load_model, dtype=decode_dtype(args.dtype),
                       progress=not args.no_progress, host_timeout_s=args.host_timeout)
  if jax.process_index() == 0:
    print(json.dumps({"out": args.out, "kept": report["kept"],
                      "failed_split": report["failed_split"], "removed": report["removed"],
                      "mean_length": report["lengths"]["mean"]}, indent=2))
  return 0


def add_parser(sub) -> None:
  from z1_jax.infer.load import DTYPE_HELP, MESH_HELP
  p = sub.add_parser(
      "distill", help="a teacher answers problems on the engine: a Z1-style trajectory set "
      "(Parquet for z1 train), filtered, decontaminated, with a report (resumable)",
      description="Decodes every problem with the teacher (plainly, up to the length cap), "
      "filters the answers (length cap, empty or malformed, repetitive, optionally a sandboxed "
      "check), removes problems that overlap evaluation benchmarks, and writes Parquet shards "
      "(OUT/data: `z1 train ... data.dataset=OUT/data`), report.md/json and lengths.png. "
      "Settings: --config (default configs/distill.toml) and section.key=value overrides.")
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument("--hf", default=None, help="teacher: HF checkpoint directory (default: none)")
  src.add_argument("--ckpt", default=None,
                   help="teacher: Orbax checkpoint or z1 train run directory (default: none)")
  p.add_argument("--problems", required=True,
                 help="problems: JSONL/Parquet/Arrow file or directory, a save_to_disk "
                      "directory, a gs:// glob, or a hub dataset id; the question column is "
                      "problems.question_column (required)")
  p.add_argument("--out", required=True,
                 help="output directory; rerun the same command to resume (required)")
  p.add_argument("--config", default=None,
                 help="distill TOML config (default: configs/distill.toml, Z1's recipe)")
  p.add_argument("--teacher-name", default=None,
                 help="the `teacher` column (default: the checkpoint directory's name)")
  p.add_argument("--tokenizer", default=None,
                 help="tokenizer dir (default: --hf's own, else the offline Qwen2.5 one)")
  p.add_argument("--mesh", type=mesh_spec, default=None, help=MESH_HELP)
  p.add_argument("--dtype", type=float_dtype, default=None, help=DTYPE_HELP)
  p.add_argument("--no-progress", action="store_true", help="no progress bar")
  p.add_argument("--host-timeout", type=positive_float, default=1800.0,
                 help="multi-process: seconds the other processes wait for process 0 to check "
                      "the output and build the decontamination index, and to write the report "
                      "(default 1800)")
  p.add_argument("overrides", nargs="*", metavar="section.key=value",
                 help="config overrides, e.g. generation.max_tokens=4096 decode.temperature=0.7 "
                      "(default: none)")
  distributed.add_args(p)
  p.set_defaults(fn=run)
