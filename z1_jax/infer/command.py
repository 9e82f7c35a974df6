"""`z1 generate`: load a checkpoint (HF directory or Orbax), decode prompts, print the rows.

Everything the user can get wrong is checked before the model loads; the model directory's
tokenizer is used when it has one (a directory without one works with `--prompt-ids`).
"""

from __future__ import annotations

import json
from pathlib import Path

from z1_jax.cli_args import (float_dtype, int_list, mesh_spec, non_negative_float, non_negative_int,
                             positive_int, probability)
from z1_jax.errors import Z1Error

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json")


def _check_flags(args) -> None:
  budgeted = args.thinking_budget is not None
  if budgeted and args.max_new_tokens is not None:
    raise Z1Error("--max-new-tokens and --thinking-budget exclude each other "
                  "(a budgeted run generates at most the budget plus --answer-tokens)")
  if budgeted != (args.answer_tokens is not None):
    raise Z1Error("--thinking-budget and --answer-tokens go together")
  if not budgeted:
    for flag, value in (("--trigger", args.trigger), ("--trigger-ids", args.trigger_ids),
                        ("--placement", args.placement)):
      if value is not None:
        raise Z1Error(f"{flag} applies with --thinking-budget only")
    if args.mode == "s1":
      raise Z1Error("--mode s1 needs --thinking-budget and --answer-tokens")
  if args.temperature == 0 and (args.top_k is not None or args.top_p is not None):
    raise Z1Error("--top-k / --top-p need --temperature > 0 (temperature 0 is greedy)")
  source = Path(args.hf or args.ckpt).expanduser()
  if args.ckpt and not source.is_dir():
    raise Z1Error(f"--ckpt {args.ckpt}: Orbax checkpoint directory not found")
  if args.tokenizer is None and args.prompt and not _has_tokenizer(source):
    raise Z1Error(f"--prompt needs a tokenizer and {source} has none: pass --tokenizer DIR "
                  "or give token ids with --prompt-ids")


def _has_tokenizer(path: Path) -> bool:
  return path.is_dir() and any((path / f).exists() for f in _TOKENIZER_FILES)


def run_generate(args) -> int:
  _check_flags(args)
  from z1_jax.model.sharding import mesh_from_spec
  mesh = mesh_from_spec(args.mesh)
  from z1_jax.infer.generate import generate, resolve_tokenizer
  source = Path(args.hf or args.ckpt).expanduser()
  tokenizer = resolve_tokenizer(args.tokenizer or (source if _has_tokenizer(source) else None))
  if args.prompt:
    prompts = [tokenizer.encode(p, add_special_tokens=False) for p in args.prompt]
  else:
    prompts = args.prompt_ids
  from z1_jax.infer.load import load_for_decoding
  model = load_for_decoding(args.hf, args.ckpt, mesh, args.dtype)
  budget = {} if args.thinking_budget is None else dict(
      thinking_budget=args.thinking_budget, answer_tokens=args.answer_tokens,
      placement=args.placement, trigger=args.trigger, trigger_ids=args.trigger_ids)
  out = generate(model, prompts, max_new_tokens=None if budget else args.max_new_tokens or 256,
                 mode=args.mode, eos_ids=args.eos_ids, temperature=args.temperature,
                 top_k=args.top_k, top_p=args.top_p, seed=args.seed, tokenizer=tokenizer,
                 batch_size=args.batch_size, **budget)
  for i, g in enumerate(out):
    row = {"prompt": i, "tokens": g.tokens, "thinking_tokens": g.thinking_tokens,
           "hit_budget": g.hit_budget, "answer_tokens": g.answer_tokens, "ended": g.ended,
           "text": g.text}
    if args.json:
      print(json.dumps(row, ensure_ascii=False))
    else:
      print(f"--- prompt {i}: {len(g.tokens)} tokens, thinking {g.thinking_tokens}, "
            f"hit budget {g.hit_budget}, answer {g.answer_tokens}, ended {g.ended}")
      print(g.text if g.text is not None else " ".join(map(str, g.tokens)))
  return 0


def add_parser(sub) -> None:
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
  gen.set_defaults(fn=run_generate)
