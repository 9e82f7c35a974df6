"""`z1 generate`: load a checkpoint (HF directory or Orbax), decode prompts on the engine.

Single prompts (`--prompt` / `--prompt-ids`, printed) or many requests (`--prompts
REQUESTS.jsonl --out OUT.jsonl`: one JSON object per line with `prompt` text or `prompt_ids`,
optional `id`, `thinking_budget`, `answer_tokens`, `max_new_tokens`, `temperature`, `top_p`,
`top_k`, `seed`; a row's values override the flags, and a row's `max_new_tokens` or
`thinking_budget` replaces the flags' choice between the two). One output row per request in
input order with its `id` and the `Generation` fields, written atomically.

Everything the user can get wrong is checked before the model loads (`_plan`: flags, the
file's bytes and JSON line by line, every request against the model's config: vocabulary,
positions, the int32 / float32 widths the engine stores, the trigger and cache lengths), and
is exit 2 naming the flag, line or request; the model directory's tokenizer is used when it
has one (a directory without one works with ids).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from z1_jax.cli_args import (float_dtype, int_list, mesh_spec, non_negative_float,
                             non_negative_int, positive_int, probability)
from z1_jax.errors import Z1Error

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json")
_ROW_FIELDS = ("id", "prompt", "prompt_ids", "thinking_budget", "answer_tokens",
               "max_new_tokens", "temperature", "top_p", "top_k", "seed")


def _check_flags(args) -> None:
  from z1_jax.infer.engine.requests import valid_unicode
  texts = [("--trigger", args.trigger)] + [("--prompt", p) for p in args.prompt or ()]
  for flag, text in texts:
    if text is not None and not valid_unicode(text):  # argv bytes that are not UTF-8 arrive so
      raise Z1Error(f"{flag} {text.encode('utf-8', 'backslashreplace')!r}: not UTF-8 text")
  budgeted = args.thinking_budget is not None
  if budgeted and args.max_new_tokens is not None:
    raise Z1Error("--max-new-tokens and --thinking-budget exclude each other "
                  "(a budgeted run generates at most the budget plus --answer-tokens)")
  if not args.prompts and budgeted != (args.answer_tokens is not None):
    raise Z1Error("--thinking-budget and --answer-tokens go together")
  if not budgeted and not args.prompts:
    for flag, value in (("--trigger", args.trigger), ("--trigger-ids", args.trigger_ids),
                        ("--placement", args.placement)):
      if value is not None:
        raise Z1Error(f"{flag} applies with --thinking-budget only")
    if args.mode == "s1":
      raise Z1Error("--mode s1 needs --thinking-budget and --answer-tokens")
  if args.mode != "s1":
    for flag, value in (("--min-thinking", args.min_thinking or None),
                        ("--wait-ids", args.wait_ids)):
      if value is not None:
        raise Z1Error(f"{flag} applies with --mode s1 only")
  from z1_jax.infer.sampling import Sampling
  try:
    Sampling(args.temperature, args.top_k, args.top_p)
  except Z1Error as e:
    raise Z1Error(f"--temperature/--top-k/--top-p: {e}") from None
  if (args.out is None) != (args.prompts is None):
    raise Z1Error("--prompts REQUESTS.jsonl and --out OUT.jsonl go together")
  if args.json and args.prompts:
    raise Z1Error("--json applies to --prompt/--prompt-ids (with --prompts every row is JSON)")
  from z1_jax.paths import as_path, is_uri
  source = args.hf or args.ckpt
  if args.ckpt and not as_path(source).is_dir():
    raise Z1Error(f"--ckpt {args.ckpt}: Orbax checkpoint directory not found")
  local = None if is_uri(source) else Path(source).expanduser()
  needs_text = args.prompt or args.prompts
  if args.tokenizer is None and args.prompt and not (local and _has_tokenizer(local)):
    raise Z1Error(f"--prompt needs a tokenizer and {source} has none: pass --tokenizer DIR "
                  "or give token ids with --prompt-ids")
  del needs_text
  if args.prompts is not None:
    from z1_jax.outputs import check_output_file
    if not Path(args.prompts).is_file():
      raise Z1Error(f"--prompts {args.prompts}: file not found")
    check_output_file(args.out, "--out", args.overwrite, inputs=[("--prompts", args.prompts)])


def _has_tokenizer(path: Path) -> bool:
  return path.is_dir() and any((path / f).exists() for f in _TOKENIZER_FILES)


def read_config(hf: str | None, ckpt: str | None):
  """The model's config from an HF directory (`config.json`) or an Orbax checkpoint, without
  reading a weight: what every check before loading needs (vocabulary, positions)."""
  if hf is not None:
    from z1_jax.checkpoint.hf import read_hf_config, resolve_checkpoint_dir
    return read_hf_config(resolve_checkpoint_dir(hf))
  from z1_jax.checkpoint.orbax_io import read_config as read_orbax_config
  return read_orbax_config(ckpt)[0]


def _read_rows(path: str) -> list[dict]:
  """The file's requests: one JSON object per line (blank lines skipped; a null field is an
  absent one), each value of the type its field needs. Any other content is a `Z1Error`
  naming the line: bytes that are not UTF-8, JSON that Python will not read (an integer of
  more than 4300 digits, nesting past the recursion limit), a lone surrogate."""
  from z1_jax.infer.engine.requests import valid_unicode
  rows = []
  for n, raw in enumerate(Path(path).read_bytes().split(b"\n"), 1):
    where = f"--prompts {path}: line {n}"
    try:
      line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
      raise Z1Error(f"{where} is not UTF-8 text (byte {e.start + 1} of the line is "
                    f"{raw[e.start:e.start + 1]!r})") from None
    if not line.strip():
      continue
    try:
      row = json.loads(line)
      text_ok = valid_unicode(row)
    except RecursionError:
      raise Z1Error(f"{where}: the JSON is nested too deeply to read") from None
    except ValueError as e:  # JSONDecodeError, an integer past Python's 4300-digit limit
      raise Z1Error(f"{where} is not JSON ({str(e)[:200]})") from None
    if not text_ok:
      raise Z1Error(f"{where}: a string holds a lone surrogate (a \\ud800-\\udfff escape that "
                    "is not half of a pair): not valid Unicode")
    if not isinstance(row, dict):
      raise Z1Error(f"{where}: expected a JSON object")
    unknown = sorted(set(row) - set(_ROW_FIELDS))
    if unknown:
      raise Z1Error(f"{where}: unknown field(s) {', '.join(unknown)}; "
                    f"known: {', '.join(_ROW_FIELDS)}")
    row = {k: v for k, v in row.items() if v is not None}
    if ("prompt" in row) == ("prompt_ids" in row):
      raise Z1Error(f"{where}: give `prompt` (text) or `prompt_ids`, exactly one")
    _check_types(row, where)
    rows.append({**row, "_line": n})
  if not rows:
    raise Z1Error(f"--prompts {path}: no requests")
  return rows


_INT_FIELDS = ("thinking_budget", "answer_tokens", "max_new_tokens", "top_k", "seed")
_NUMBER_FIELDS = ("temperature", "top_p")


def _check_types(row: dict, where: str) -> None:
  """Each field of the type it needs (its range is the engine's check, `check_request`)."""
  from z1_jax.infer.engine.requests import _is_int, _short
  for name in _INT_FIELDS:
    if name in row and not _is_int(row[name]):
      raise Z1Error(f"{where}: {name}={_short(row[name])}: expected an integer")
  for name in _NUMBER_FIELDS:
    value = row.get(name)
    if value is not None and not _is_int(value) and not (
        isinstance(value, float) and math.isfinite(value)):
      raise Z1Error(f"{where}: {name}={_short(value)}: expected a finite number")
  if "prompt" in row and not isinstance(row["prompt"], str):
    raise Z1Error(f"{where}: `prompt` must be text")
  if "prompt_ids" in row and not (isinstance(row["prompt_ids"], list) and all(
      _is_int(i) for i in row["prompt_ids"])):
    raise Z1Error(f"{where}: `prompt_ids` must be a list of integer token ids")
  rid = row.get("id")
  if rid is not None and not (isinstance(rid, str) or _is_int(rid)):
    raise Z1Error(f"{where}: id {_short(rid)} must be a string or an integer")


def _requests(args, tokenizer):
  """The `Request`s of the invocation, and how to name each in an error."""
  from z1_jax.infer.engine import Request
  from z1_jax.infer.engine.requests import _short
  flags = dict(thinking_budget=args.thinking_budget, answer_tokens=args.answer_tokens,
               max_new_tokens=args.max_new_tokens, temperature=args.temperature,
               top_p=args.top_p, top_k=args.top_k, seed=args.seed)
  common = dict(mode=args.mode, placement=args.placement, min_thinking=args.min_thinking)
  if args.prompts is None:
    if args.prompt:
      prompts = [tokenizer.encode(p, add_special_tokens=False) for p in args.prompt]
    else:
      prompts = args.prompt_ids
    if flags["thinking_budget"] is None and flags["max_new_tokens"] is None:
      flags["max_new_tokens"] = 256
    return [Request(i, p, row_id=i, **flags, **common) for i, p in enumerate(prompts)], None
  rows = _read_rows(args.prompts)
  requests, ids = [], set()
  for i, row in enumerate(rows):
    where = f"--prompts {args.prompts}: line {row['_line']}"
    if "prompt" in row:
      if tokenizer is None:
        raise Z1Error(f"{where}: `prompt` text needs a tokenizer (pass --tokenizer DIR) or "
                      "give `prompt_ids`")
      ids_ = tokenizer.encode(row["prompt"], add_special_tokens=False)
    else:
      ids_ = row["prompt_ids"]
    values = dict(flags)
    if "max_new_tokens" in row:
      values.update(thinking_budget=None, answer_tokens=None)
    if "thinking_budget" in row:
      values.update(max_new_tokens=None)
    values.update({k: row[k] for k in flags if k in row})
    if values["thinking_budget"] is None and "answer_tokens" not in row:
      values["answer_tokens"] = None  # --answer-tokens is for the rows with a budget
    if values["thinking_budget"] is None and values["max_new_tokens"] is None:
      values["max_new_tokens"] = 256
    rid = row.get("id", i)
    if rid in ids:
      raise Z1Error(f"{where}: id {_short(rid)} is not unique in the file")
    ids.add(rid)
    budgeted = values["thinking_budget"] is not None
    req = Request(rid, ids_, row_id=i, **values, mode=args.mode,
                  placement=args.placement if budgeted else None,
                  min_thinking=args.min_thinking if budgeted else 0)
    requests.append(req)
  return requests, rows


def _row(g, rid) -> dict:
  return {"id": rid, "tokens": g.tokens, "text": g.text, "thinking_tokens": g.thinking_tokens,
          "hit_budget": g.hit_budget, "answer_tokens": g.answer_tokens,
          "finish_reason": g.finish_reason, "ended": g.ended}


def _plan(args):
  """Everything `z1 generate` checks before the model loads: the tokenizer, the markers, every
  request (against the model's config: vocabulary, positions, the widths the engine stores)
  and the cache length. Any problem is a `Z1Error` naming the prompt, line or request."""
  from z1_jax.infer.budget import marker_ids
  from z1_jax.infer import window
  from z1_jax.infer.engine import check_request, resolve_markers
  from z1_jax.infer.generate import bucket, resolve_tokenizer
  from z1_jax.paths import is_uri
  source = args.hf or args.ckpt
  local = None if is_uri(source) else Path(source).expanduser()
  tokenizer = resolve_tokenizer(args.tokenizer or (local if local and _has_tokenizer(local)
                                                   else None))
  cfg = read_config(args.hf, args.ckpt)  # the config only: weights load after every check
  trigger_ids = args.trigger_ids
  if trigger_ids is None and args.trigger is not None:
    trigger_ids = marker_ids(args.mode, args.trigger, None, tokenizer)
  markers = dict(trigger_ids=trigger_ids) if args.mode == "z1" else dict(
      s1_marker_ids=trigger_ids, wait_ids=args.wait_ids)
  resolved = resolve_markers(cfg.vocab_size, tokenizer, args.eos_ids, **markers)
  requests, _ = _requests(args, tokenizer)

  def longest(r):
    t = len(resolved.z1_ids if r.mode == "z1" else resolved.s1_ids)
    placement = r.placement or ("replace" if r.mode == "z1" else "append")
    budgeted = r.thinking_budget is not None and r.answer_tokens is not None
    stop = window.stop_for(r.thinking_budget if budgeted else None, r.answer_tokens, t,
                           placement, r.max_new_tokens or 0)
    return len(r.prompt_ids) + stop

  for r in requests:  # every request, before the model loads: the model's positions bound all
    try:
      check_request(r, cfg, resolved, cfg.max_position_embeddings)
    except Z1Error as e:
      raise Z1Error(str(e).replace("request ", "prompt " if args.prompts is None else
                                   "request id ", 1)) from None
  return tokenizer, markers, requests, bucket(max(longest(r) for r in requests))


def run_generate(args) -> int:
  from z1_jax import distributed
  distributed.initialize(args.coordinator, args.num_processes, args.process_id)
  _check_flags(args)
  tokenizer, markers, requests, max_len = _plan(args)
  from z1_jax.model.sharding import mesh_from_spec
  mesh = mesh_from_spec(args.mesh)
  from z1_jax.infer.load import load_for_decoding
  model = load_for_decoding(args.hf, args.ckpt, mesh, args.dtype)
  from z1_jax.infer.generate import make_engine
  from z1_jax.infer.load import cache_options
  engine = make_engine(model, max_len, args.batch_size, tokenizer=tokenizer,
                       eos_ids=args.eos_ids, n_requests=len(requests), **markers,
                       **cache_options(args))
  import jax
  writer = jax.process_index() == 0
  if args.prompts is None:
    out = engine.run(requests)
    if not writer:
      return 0
    for i, g in enumerate(out):
      row = {"prompt": i, **_row(g, i)}
      del row["id"]
      if args.json:
        print(json.dumps(row, ensure_ascii=False))
      else:
        print(f"--- prompt {i}: {len(g.tokens)} tokens, thinking {g.thinking_tokens}, "
              f"hit budget {g.hit_budget}, answer {g.answer_tokens}, "
              f"finish {g.finish_reason}")
        print(g.text if g.text is not None else " ".join(map(str, g.tokens)))
    return 0
  from tqdm import tqdm
  with tqdm(total=len(requests), desc="generate", unit="request",
            disable=not writer or args.no_progress) as bar:
    out = engine.run(requests, progress=bar.update)
  if writer:
    from z1_jax.outputs import write_text_atomic
    write_text_atomic(args.out, "".join(json.dumps(_row(g, r.id), ensure_ascii=False) + "\n"
                                        for g, r in zip(out, requests)))
  return 0


def add_parser(sub) -> None:
  from z1_jax.infer.load import DTYPE_HELP, MESH_HELP, add_cache_args
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
  ask.add_argument("--prompts", default=None,
                   help="REQUESTS.jsonl: one request per line (prompt or prompt_ids, optional "
                        "id, thinking_budget, answer_tokens, max_new_tokens, temperature, "
                        "top_p, top_k, seed overriding the flags); needs --out (default: none)")
  gen.add_argument("--out", default=None,
                   help="OUT.jsonl for --prompts: one row per request in input order, written "
                        "atomically (default: none)")
  gen.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out (default: refuse)")
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
  gen.add_argument("--wait-ids", type=int_list, default=None,
                   help="s1: ids that replace an end of thinking before --min-thinking "
                        "(default: \"Wait\" tokenized; needed for a non-Qwen vocabulary)")
  gen.add_argument("--min-thinking", type=non_negative_int, default=0,
                   help="s1: an end of thinking before this many tokens becomes \"Wait\" "
                        "(default 0)")
  gen.add_argument("--eos-ids", type=int_list, default=None,
                   help="end ids 1,2 (default: <|im_end|> and <|endoftext|>)")
  gen.add_argument("--temperature", type=non_negative_float, default=0.0,
                   help="0 is greedy; a positive value below 1e-6 is refused (default 0)")
  gen.add_argument("--top-k", type=positive_int, default=None, help="default: off")
  gen.add_argument("--top-p", type=probability, default=None, help="default: off")
  gen.add_argument("--seed", type=non_negative_int, default=0, help="sampling seed (default 0)")
  gen.add_argument("--tokenizer", default=None,
                   help="tokenizer directory (default: the model directory's, if any)")
  gen.add_argument("--dtype", type=float_dtype, default=None, help=DTYPE_HELP)
  gen.add_argument("--batch-size", type=positive_int, default=None,
                   help="slots: the most rows decoded at once (default: all requests, up to "
                        "64, a power of two)")
  gen.add_argument("--mesh", type=mesh_spec, default=None, help=MESH_HELP)
  add_cache_args(gen)
  gen.add_argument("--json", action="store_true", help="one JSON object per prompt")
  gen.add_argument("--no-progress", action="store_true",
                   help="no progress bar for --prompts (default: shown on stderr)")
  from z1_jax import distributed
  distributed.add_args(gen)
  gen.set_defaults(fn=run_generate)
