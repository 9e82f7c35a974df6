"""`z1 data stats` and `z1 data pack`: the command's work (the CLI only parses and dispatches)."""

from __future__ import annotations

import numpy as np

from z1_jax.cli_args import positive_int
from z1_jax.data.format import DEFAULT_SYSTEM_PROMPT
from z1_jax.data.sources import HUB_DATASET
from z1_jax.errors import Z1Error


def _packed(args):
  from z1_jax.data.encode import EncodeConfig, encode_dataset
  from z1_jax.data.pack import pack
  from z1_jax.data.sources import Columns, sample_dataset_path
  from z1_jax.data.tokenizer import load_tokenizer
  tokenizer = load_tokenizer(args.tokenizer)
  cfg = EncodeConfig(dataset=args.dataset or str(sample_dataset_path()), tokenizer=args.tokenizer,
                     system_prompt=args.system_prompt, strip_think_tags=args.strip_think_tags,
                     columns=Columns(args.question_column, args.response_column),
                     on_bad_row=args.on_bad_row)
  encoded = encode_dataset(cfg, cache_dir=args.cache_dir, tokenizer=tokenizer)
  return encoded, pack(encoded, args.seq_len, tokenizer.pad_token_id or 0, args.overlong,
                       args.select_tokens, args.select_order)


def run_data(args) -> dict:
  """`z1 data stats|pack`: token-length and packing statistics (and, for pack, the rows)."""
  from z1_jax.outputs import check_dir, check_output_file
  if args.action == "pack":
    check_output_file(args.out, "--out", args.overwrite, inputs=[("--dataset", args.dataset)])
  if args.cache_dir is not None:
    check_dir(args.cache_dir, "--cache-dir")
  encoded, packed = _packed(args)
  lengths = encoded.lengths
  stats = {
      "examples": len(encoded), "skipped_bad_rows": encoded.skipped,
      "tokenized_from_cache": encoded.from_cache,
      "tokens": {"mean": round(float(lengths.mean()), 1), "min": int(lengths.min()),
                 **{f"p{q}": int(np.percentile(lengths, q)) for q in (50, 90, 99)},
                 "max": int(lengths.max())},
      "seq_len": args.seq_len, "overlong_policy": args.overlong,
      "kept": int((packed.used > 0).sum()), "truncated": packed.report.truncated,
      "dropped": packed.report.dropped, "rows": len(packed),
      "packing_efficiency": round(packed.efficiency, 4),
  }
  if args.action == "pack":
    from z1_jax.data.pack import write_rows
    if len(packed) == 0:
      raise Z1Error(f"--seq-len {args.seq_len}: no example fits ({packed.report.dropped} "
                    f"dropped); nothing written to {args.out}")
    stats["wrote"] = str(write_rows(packed, args.out))
  return stats


def run(args) -> int:
  import json
  print(json.dumps(run_data(args), indent=2))
  return 0


def add_parser(sub) -> None:
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
    c.set_defaults(fn=run)
