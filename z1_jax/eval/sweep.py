"""`z1 sweep`: accuracy against thinking tokens for one model on several benchmarks.

For each benchmark: its problems (`--limit` first ones), each rendered as the Qwen2.5 chat
prompt with Z1's evaluation instruction for its family (`benchmarks.PROMPTS`), decoded once for
all budgets with `z1_jax.sweep` (the shared trunk is decoded once, an answer branch forks at
each budget), scored while the next batch decodes, and reported with `eval.report`.

Output directory:
  config.json     what was asked (model, benchmarks, budgets, ...): a rerun with another config
                  is refused, a rerun with the same one resumes
  journal.jsonl   one line per finished (problem, sample, budget) row, appended as verdicts
                  arrive; on resume every problem whose rows are all there is not decoded again
  samples.jsonl   every row, in benchmark / problem / sample / budget order (written at the end)
  summary.json, summary.md, sweep.png   see `eval.report`

Which text is graded: the whole completion for a row that ended by itself inside its window;
for a row that hit its budget only the answer after the trigger, as in the paper's two-pass
evaluation.

Multi-host: every process runs this same loop on the same prompts and the whole mesh decodes
each batch (one SPMD program; a problem stride per process would need one mesh per host and
lose the tensor / fsdp sharding a 7B model needs on small chips). Process 0 alone scores, keeps
the journal and writes the outputs; its verdict on the output directory (accepted or refused)
and the set of finished problems are broadcast to the others before the model loads, so they
need not see the output directory and never wait on a process 0 that stopped.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import json
import os
import threading
from pathlib import Path
from typing import Callable, Sequence

from tqdm.auto import tqdm

from z1_jax.data.format import DEFAULT_SYSTEM_PROMPT, render_prompt
from z1_jax.errors import Z1Error
from z1_jax.eval.benchmarks import ID_FIELD, LOADERS, Problem, load_benchmark

CONFIG_FILE, JOURNAL_FILE, SAMPLES_FILE = "config.json", "journal.jsonl", "samples.jsonl"
OUTPUT_FILES = (CONFIG_FILE, JOURNAL_FILE, SAMPLES_FILE, "summary.json", "summary.md",
                "sweep.png")


@dataclasses.dataclass(frozen=True)
class SweepConfig:
  """Everything that decides the rows of a sweep (batch size, mesh and workers do not)."""
  model: str  # "hf:<path>" or "ckpt:<path>" (absolute), or a name given by the caller
  benchmarks: tuple[str, ...]
  budgets: tuple[int, ...]
  answer_tokens: int = 1024
  mode: str = "z1"
  placement: str | None = None  # None: the mode's default ("replace" for z1, "append" for s1)
  limit: int | None = None
  samples_per_problem: int = 1
  temperature: float = 0.0
  seed: int = 0
  data: dict[str, str] | None = None  # benchmark -> local file
  system_prompt: str | None = DEFAULT_SYSTEM_PROMPT
  instruction: str | None = None  # None: Z1's instruction for each benchmark family
  # What is in the model, not only where: a resumed sweep never mixes two models' rows.
  weights: str | None = None  # checkpoint.fingerprint of the HF directory / Orbax step
  dtype: str | None = None  # --dtype, resolved by `infer.load.decode_dtype`
  tokenizer: str | None = None  # sha256 of the tokenizer's serialized form, or "default"

  def __post_init__(self):
    unknown = [b for b in self.benchmarks if b not in LOADERS]
    if not self.benchmarks or unknown:
      raise Z1Error(f"--benchmark {','.join(unknown) or '(none)'}: unknown; known: "
                    f"{', '.join(LOADERS)}")
    if len(set(self.benchmarks)) != len(self.benchmarks):
      raise Z1Error(f"--benchmark {','.join(self.benchmarks)}: a benchmark is named twice")
    b = list(self.budgets)
    if not b or any(x <= 0 for x in b) or any(x >= y for x, y in zip(b, b[1:])):
      raise Z1Error(f"--budgets {','.join(map(str, b))}: expected thinking budgets > 0 in "
                    "strictly increasing order, e.g. 512,1024,2048,4096")
    if self.answer_tokens < 1:
      raise Z1Error(f"--answer-tokens {self.answer_tokens}: expected an integer >= 1 (the "
                    "answer after the trigger needs room)")
    if self.mode not in ("z1", "s1"):
      raise Z1Error(f"--mode {self.mode!r}: expected z1 or s1")
    if self.placement not in (None, "replace", "append"):
      raise Z1Error(f"--placement {self.placement!r}: expected replace or append")
    if self.limit is not None and self.limit < 1:
      raise Z1Error(f"--limit {self.limit}: expected an integer >= 1")
    if self.samples_per_problem < 1:
      raise Z1Error(f"--samples-per-problem {self.samples_per_problem}: expected >= 1")
    if self.temperature < 0:
      raise Z1Error(f"--temperature {self.temperature}: expected a number >= 0")
    if self.samples_per_problem > 1 and self.temperature == 0:
      raise Z1Error(f"--samples-per-problem {self.samples_per_problem} with greedy decoding "
                    "gives identical samples: pass --temperature > 0")
    for name, path in (self.data or {}).items():
      if name not in self.benchmarks:
        raise Z1Error(f"--data {name}={path}: {name} is not among --benchmark")
      if not Path(path).is_file():
        raise FileNotFoundError(f"--data {name}={path}: file not found")

  def to_json(self) -> dict:
    d = dataclasses.asdict(self)
    d["benchmarks"], d["budgets"] = list(self.benchmarks), list(self.budgets)
    return d


def parse_data(text: str | None, benchmarks: Sequence[str]) -> dict[str, str] | None:
  """`--data FILE` (one benchmark) or `--data NAME=FILE[,NAME=FILE...]` -> {name: abs path}."""
  if not text:
    return None
  if "=" not in text:
    if len(benchmarks) != 1:
      raise Z1Error(f"--data {text}: with several benchmarks name each file, "
                    "e.g. --data gpqa-diamond=gpqa.csv,math500=math500.jsonl")
    return {benchmarks[0]: str(Path(text).resolve())}
  out = {}
  for part in text.split(","):
    name, sep, path = part.partition("=")
    if not sep or not name or not path:
      raise Z1Error(f"--data {text}: expected NAME=FILE[,NAME=FILE...]")
    out[name.strip()] = str(Path(path).resolve())
  return out


@dataclasses.dataclass(frozen=True)
class Unit:
  """One (problem, sample) to decode; `index` is its place in the whole sweep, which is also
  its sampling row id, so a resumed sweep samples exactly what an uninterrupted one would."""
  index: int
  problem: Problem
  sample: int

  @property
  def key(self) -> tuple[str, str, int]:
    return (self.problem.benchmark, self.problem.id, self.sample)


def load_problems(cfg: SweepConfig) -> list[Problem]:
  problems = []
  for name in cfg.benchmarks:
    path = (cfg.data or {}).get(name)
    try:
      ps = load_benchmark(name, path=path, instruction=cfg.instruction)
    except FileNotFoundError as e:
      raise Z1Error(f"--benchmark {name}: {e}") from None
    problems += ps[:cfg.limit] if cfg.limit else ps
  return problems


def prepare_out(out: str | os.PathLike, cfg: SweepConfig) -> Path:
  """Creates `out` with config.json, or accepts one holding the same config (resume)."""
  from z1_jax.outputs import resumable_out
  return resumable_out(out, CONFIG_FILE, cfg.to_json(), "sweep")


class Journal:
  """Append-only finished rows. A torn last line (the process died mid-write) is dropped."""

  def __init__(self, path: Path):
    self.path = path
    self.rows: dict[tuple, dict] = {}
    good = 0
    if path.exists():
      data = path.read_bytes()
      for line in data.splitlines(keepends=True):
        try:
          row = json.loads(line)
        except json.JSONDecodeError:
          break
        if not line.endswith(b"\n"):
          break
        self.rows[self.key(row)] = row
        good += len(line)
      if good != len(data):
        with open(path, "r+b") as f:
          f.truncate(good)
    self._file = open(path, "a")
    self._lock = threading.Lock()
    self._closed = False

  @staticmethod
  def key(row: dict) -> tuple:
    return (row["benchmark"], str(row[ID_FIELD[row["benchmark"]]]), row["sample"], row["budget"])

  def add(self, row: dict) -> None:
    with self._lock:
      if self._closed:  # a verdict that arrived after an interrupt: the resume redoes it
        return
      if self.key(row) in self.rows:  # recorded by the scorer's callback already
        return
      self._file.write(json.dumps(row) + "\n")
      self._file.flush()
      self.rows[self.key(row)] = row

  def close(self) -> None:
    with self._lock:
      self._closed = True
      self._file.close()


def _graded_text(g, tokenizer) -> str:
  """The answer after the trigger for a row that got one, else the whole completion."""
  if g.answer_tokens > 0:
    return tokenizer.decode(g.tokens[len(g.tokens) - g.answer_tokens:], skip_special_tokens=True)
  return g.text if g.text is not None else tokenizer.decode(g.tokens, skip_special_tokens=True)


def make_row(unit: Unit, budget: int, g, tokenizer) -> dict:
  p = unit.problem
  return {"benchmark": p.benchmark, ID_FIELD[p.benchmark]: p.id, "sample": unit.sample,
          "budget": budget, "thinking_tokens": g.thinking_tokens, "hit_budget": g.hit_budget,
          "answer_tokens": g.answer_tokens, "ended": g.ended, "finish_reason": g.finish_reason,
          "completion": g.text if g.text is not None else tokenizer.decode(g.tokens),
          "graded": _graded_text(g, tokenizer)}


def _is_writer() -> bool:
  import jax
  return jax.process_index() == 0


def _from_process_0(flags: list[bool]) -> list[bool]:
  """Process 0's flags on every process (multi-host); unchanged on one host."""
  import jax
  if jax.process_count() == 1:
    return flags
  import numpy as np
  from jax.experimental import multihost_utils
  return [bool(x) for x in multihost_utils.broadcast_one_to_all(np.array(flags, np.bool_))]


def run_sweep(cfg: SweepConfig, out: str | os.PathLike, *, model=None, tokenizer=None,
              load_model: Callable[[], object] | None = None, batch_size: int | None = None,
              workers: int | None = None, reference=None, progress: bool = True,
              allow_unsandboxed: bool = False, sandbox_python: str | None = None,
              decode: Callable | None = None, cache: dict | None = None) -> dict:
  """Runs (or resumes) a sweep into `out`; returns the summary. `model` or `load_model` (called
  after every input check), `tokenizer` (default: the offline Qwen2.5 one). `decode` defaults
  to `z1_jax.sweep`. `batch_size` problems decode together (default 64) on an engine with the
  paged cache's options `cache` (`infer.load.cache_options`)."""
  from z1_jax.eval.report import read_reference, write_report
  from z1_jax.eval.score import Scorer
  if reference is not None and not isinstance(reference, list):
    reference = read_reference(reference)  # a bad file fails before any decoding
  problems = load_problems(cfg)
  if not problems:
    raise Z1Error(f"--benchmark {','.join(cfg.benchmarks)}: no problems to run")
  writer = _is_writer()
  units = [Unit(i, p, s) for i, (p, s) in enumerate(
      (p, s) for p in problems for s in range(cfg.samples_per_problem))]
  if tokenizer is None:
    from z1_jax.data.tokenizer import load_tokenizer
    tokenizer = load_tokenizer()
  _check_budgets(cfg, tokenizer)
  scorer = journal = None
  try:
    done, refused = [False] * len(units), None
    if writer:  # process 0 checks the sandbox and the output directory, reads the journal
      try:
        scorer = Scorer(problems, workers=workers, allow_unsandboxed=allow_unsandboxed,
                        sandbox_python=sandbox_python)
        out = prepare_out(out, cfg)
        journal = Journal(Path(out) / JOURNAL_FILE)
        done = [all((u.problem.benchmark, u.problem.id, u.sample, b) in journal.rows
                    for b in cfg.budgets) for u in units]
      except Exception as e:  # noqa: BLE001 - the other processes must hear of it too
        refused = e
    ok, *done = _from_process_0([refused is None] + done)
    if refused is not None:
      raise refused
    if not ok:
      raise Z1Error("process 0 refused this sweep (its log says why)")
    if model is None:
      model = load_model()
    if decode is None:
      import z1_jax
      decode = z1_jax.sweep
    pending = [u for u, d in zip(units, done) if not d]
    chunk = batch_size or 64
    futures: list[tuple[dict, cf.Future]] = []
    decode_bar = tqdm(total=len(units), initial=len(units) - len(pending), desc="decode",
                      unit="problem", disable=not progress or not writer)
    score_bar = tqdm(total=len(pending) * len(cfg.budgets), desc="score", unit="row",
                     disable=not progress or not writer)
    for lo in range(0, len(pending), chunk):
      batch = pending[lo:lo + chunk]
      prompts = [tokenizer.encode(render_prompt(u.problem.question, cfg.system_prompt),
                                  add_special_tokens=False) for u in batch]
      by_budget = decode(model, prompts, budgets=list(cfg.budgets),
                         answer_tokens=cfg.answer_tokens, mode=cfg.mode,
                         placement=cfg.placement, temperature=cfg.temperature, seed=cfg.seed,
                         tokenizer=tokenizer, batch_size=chunk,
                         row_ids=[u.index for u in batch], **(cache or {}))
      decode_bar.update(len(batch))
      if not writer:
        continue
      for budget in cfg.budgets:
        for u, g in zip(batch, by_budget[budget]):
          row = make_row(u, budget, g, tokenizer)
          fut = scorer.submit(u.problem, row["graded"])
          fut.add_done_callback(_recorder(row, journal, score_bar))
          futures.append((row, fut))
    for row, fut in futures:  # scoring overlapped the decoding above; wait for what is left
      journal.add({**row, **fut.result()})  # (a future's callbacks may still be running)
    decode_bar.close()
    score_bar.close()
    if not writer:
      return {}
    rows = _ordered(journal.rows, units, cfg.budgets)
    from z1_jax.data.sources import write_jsonl
    write_jsonl(rows, Path(out) / SAMPLES_FILE)
    return write_report(rows, out, model=cfg.model, config=cfg.to_json(), reference=reference)
  finally:
    if journal is not None:
      journal.close()
    if scorer is not None:
      scorer.close()


def _recorder(row: dict, journal: Journal, bar) -> Callable[[cf.Future], None]:
  def record(fut: cf.Future) -> None:
    if fut.cancelled() or fut.exception() is not None:
      return  # the waiter in run_sweep raises it
    journal.add({**row, **fut.result()})
    bar.update(1)
  return record


def _ordered(rows: dict[tuple, dict], units: list[Unit], budgets: Sequence[int]) -> list[dict]:
  return [rows[(*u.key, b)] for u in units for b in budgets]


def _check_budgets(cfg: SweepConfig, tokenizer) -> None:
  """Every budget must exceed the trigger (`infer.budget.Budget`, the one rule)."""
  from z1_jax.infer import budget as budget_lib
  marker = budget_lib.marker_ids(cfg.mode, None, None, tokenizer)
  placement = cfg.placement or ("replace" if cfg.mode == "z1" else "append")
  try:
    budget_lib.Budget(min(cfg.budgets), cfg.answer_tokens, marker, placement)
  except Z1Error as e:
    raise Z1Error(f"--budgets {min(cfg.budgets)}: {e}") from None


def _weights_identity(kind: str, path: str) -> str:
  from z1_jax.checkpoint.fingerprint import fingerprint
  if kind == "hf":
    return fingerprint(path)
  from z1_jax.checkpoint.orbax_io import resolve_checkpoint
  root, step = resolve_checkpoint(path)
  if step is None:
    steps = [int(p.name) for p in root.iterdir() if p.name.isdigit()]
    if not steps:
      return fingerprint(root)
    step = max(steps)
  return f"step {step} {fingerprint(root / str(step))}"


def _tokenizer_identity(tokenizer) -> str:
  if tokenizer is None:
    return "default"
  import hashlib
  return "sha256:" + hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()


def run_from_args(args, mesh=None) -> dict:
  """`z1 sweep`: the config from the command line, checked before the model loads."""
  benchmarks = tuple(b.strip() for b in args.benchmark.split(",") if b.strip())
  from z1_jax.infer.load import cache_options, decode_dtype
  from z1_jax.paths import as_path
  source = ("hf", args.hf) if args.hf else ("ckpt", args.ckpt)
  where = as_path(source[1])  # --ckpt may be any URI etils.epath knows (gs://, file://)
  if not where.is_dir():
    raise Z1Error(f"--{source[0]} {source[1]}: not a directory")
  tokenizer = None
  if args.tokenizer or (source[0] == "hf" and (where / "tokenizer.json").exists()):
    from z1_jax.data.tokenizer import load_tokenizer
    tokenizer = load_tokenizer(args.tokenizer or source[1])
  model = where.resolve() if isinstance(where, Path) else where  # one spelling per directory
  cfg = SweepConfig(model=f"{source[0]}:{model}", benchmarks=benchmarks,
                    budgets=tuple(args.budgets), answer_tokens=args.answer_tokens,
                    mode=args.mode, placement=args.placement, limit=args.limit,
                    samples_per_problem=args.samples_per_problem,
                    temperature=args.temperature, seed=args.seed,
                    data=parse_data(args.data, benchmarks), system_prompt=args.system_prompt,
                    instruction=args.instruction,
                    weights=_weights_identity(*source), dtype=decode_dtype(args.dtype),
                    tokenizer=_tokenizer_identity(tokenizer))
  if args.sandbox_python is not None and not os.access(args.sandbox_python, os.X_OK):
    raise Z1Error(f"--sandbox-python {args.sandbox_python}: not an executable file")

  def load_model():
    from z1_jax.infer.load import load_for_decoding
    mesh_ = mesh() if callable(mesh) else mesh
    return load_for_decoding(args.hf, args.ckpt, mesh_, args.dtype)

  return run_sweep(cfg, args.out, load_model=load_model, tokenizer=tokenizer,
                   batch_size=args.batch_size, workers=args.workers, reference=args.reference,
                   allow_unsandboxed=args.allow_unsandboxed, sandbox_python=args.sandbox_python,
                   progress=not args.no_progress, cache=cache_options(args))
