"""`z1 data stats` and `z1 data pack`: the command's work (the CLI only parses and dispatches)."""

from __future__ import annotations

import numpy as np

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
