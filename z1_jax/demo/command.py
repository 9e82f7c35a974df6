"""`z1 demo`: its options and its handler (the work is in `demo/run.py`)."""

from __future__ import annotations

from z1_jax.cli_args import int_list, non_negative_int, positive_int


def run(args) -> int:
  import dataclasses
  from z1_jax.demo.run import DemoSettings, run_demo
  settings = DemoSettings(train_examples=args.train_examples, eval_examples=args.eval_examples,
                          budgets=tuple(args.budgets or DemoSettings.budgets))
  settings = dataclasses.replace(settings, seed=args.seed)
  return run_demo(args.out, args.overrides, args.config, settings, args.overwrite)


def add_parser(sub) -> None:
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
  demo.add_argument("--eval-examples", type=positive_int, default=240,
                    help="held-out programs in the sweep, the same number for every statement "
                    "count (a multiple of 6; default 240)")
  demo.add_argument("--budgets", type=int_list, default=None,
                    help="thinking budgets, trigger included "
                    "(default 16,20,24,28,32,40,48,56,64,80)")
  demo.add_argument("--seed", type=non_negative_int, default=0, help="task seed (default 0)")
  demo.set_defaults(fn=run)
