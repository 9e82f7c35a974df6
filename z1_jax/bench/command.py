"""`z1 bench ...`: options and dispatch (each benchmark is a module of this package)."""

from __future__ import annotations

from z1_jax.cli_args import choice_of, int_list, positive_int
from z1_jax.errors import Z1Error


def run(args) -> int:
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
  elif args.what == "decode" and args.mix:
    from z1_jax.bench.decode import bench_padding
    if len(args.mix) != 2 or not 0 < args.mix[0] < args.mix[1]:
      raise Z1Error(f"--mix {','.join(map(str, args.mix))}: expected two lengths LO,HI with "
                    "0 < LO < HI")
    rows = bench_padding(args.preset, args.batch, args.requests, *args.mix, args.prompt_len,
                         args.repeats)
  elif args.what == "decode":
    from z1_jax.bench.decode import bench_decode
    rows = bench_decode(args.preset, args.batch, args.prompt_len, args.gen_len, args.repeats)
  elif args.what == "paged":
    from z1_jax.bench.paged import bench_capacity, bench_lengths
    rows = []
    if args.case in ("lengths", "all"):
      rows += bench_lengths(args.preset, repeats=args.repeats)
    if args.case in ("capacity", "all"):
      rows += bench_capacity(args.preset)
  elif args.what == "sweep":
    from z1_jax.bench.sweep import bench_sweep
    rows = bench_sweep(args.problems, tuple(args.budgets), args.answer_tokens, args.batch_size,
                       args.workers)
  elif args.what == "serve":
    from z1_jax.bench.serve import bench_serve
    rows = bench_serve(args.requests, args.clients, args.slots, tuple(args.budgets),
                       args.answer_tokens, args.max_seq_len, args.mix)
  else:
    from z1_jax.bench.score import bench_score
    rows = bench_score(args.workers)
  print_rows(rows, args.json)
  return 0


def _presets() -> list[str]:
  from z1_jax.model.config import PRESETS
  return sorted(PRESETS)


def add_parser(sub) -> None:
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
  dec.add_argument("--mix", type=int_list, default=None,
                   help="LO,HI: instead, the engine's useful tokens/s and occupancy on "
                        "--requests requests of log-uniform lengths LO..HI through --batch "
                        "slots, against the same requests all at HI, at max_seq_len of the "
                        "mix and 16384 (no HF run; e.g. --preset tiny --batch 8 --mix 12,768 "
                        "--prompt-len 16; default: off)")
  dec.add_argument("--requests", type=positive_int, default=64,
                   help="requests of the --mix run")
  scr = bench_sub.add_parser("score", help="sandboxed HumanEval scoring vs plain subprocesses")
  scr.add_argument("--workers", type=positive_int, default=None,
                   help="parallel samples (default: the number of CPUs)")
  bsw = bench_sub.add_parser("sweep", help="z1 sweep: decode vs scoring time, vs separate runs "
                             "(one decode per budget) at the same slots (tiny model)")
  bsw.add_argument("--problems", type=positive_int, default=64, help="HumanEval problems")
  bsw.add_argument("--budgets", type=int_list, default=[32, 64, 128, 256, 512],
                   help="thinking budgets")
  bsw.add_argument("--answer-tokens", type=positive_int, default=64, help="answer allowance")
  bsw.add_argument("--batch-size", type=positive_int, default=64,
                   help="problems per decode batch (engine slots)")
  bsw.add_argument("--workers", type=positive_int, default=None,
                   help="scoring workers (default: CPUs)")
  bsv = bench_sub.add_parser("serve", help="z1 serve over HTTP vs the offline engine: "
                             "tokens/s, TTFT and inter-token latency (tiny model)")
  bsv.add_argument("--requests", type=positive_int, default=64, help="requests in the set")
  bsv.add_argument("--clients", type=positive_int, default=16, help="concurrent clients")
  bsv.add_argument("--slots", type=positive_int, default=8, help="engine slots, both sides")
  bsv.add_argument("--budgets", type=int_list, default=[32, 64, 128],
                   help="thinking budgets, cycled over the requests")
  bsv.add_argument("--answer-tokens", type=positive_int, default=32, help="answer allowance")
  bsv.add_argument("--max-seq-len", type=positive_int, default=None,
                   help="longest request (default: the mix's longest, bucketed)")
  bsv.add_argument("--mix", choices=("simple", "z1"), default="simple",
                   help="simple: short prompts cycling --budgets; z1: prompts of 100..2,000 "
                        "tokens, budgets 64..4,096 (log-uniform), 64 answer tokens")
  pgd = bench_sub.add_parser("paged", help="the paged KV cache: the same short requests at "
                             "max_seq_len 512 and 16384; 128 rows from a 32,768-token pool")
  pgd.add_argument("--case", choices=("lengths", "capacity", "all"), default="all",
                   help="which measurement")
  pgd.add_argument("--preset", type=choice_of(_presets, "preset"), default="tiny",
                   help="model size (random weights)")
  pgd.add_argument("--repeats", type=positive_int, default=3, help="timed rounds (lengths)")
  for c in (fwd, btr, dat, dec, scr, bsw, bsv, pgd):
    c.add_argument("--json", action="store_true", help="JSON lines output")
    c.set_defaults(fn=run)
