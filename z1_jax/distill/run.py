"""`z1 distill`: a teacher on z1-jax's engine answers a set of problems, and the answers that pass
the filters become a Z1-style trajectory set (`id`, `question`, `response`,
`token_num_<tokenizer>`, `source`, `teacher`, and `passed` where a check ran) that `z1 data` and
`z1 train` read unchanged (`data.dataset = OUT/data`).

Problems are decoded in batches of `generation.batch_problems` (the problem set cut in order),
each problem `generation.samples_per_problem` times, plainly up to `generation.max_tokens` (the
length cap), with the sampling of `[decode]`. A row's sampling stream is its problem's index
times the samples per problem plus its sample (`row_ids`), so its tokens do not depend on the
batch, the process or the run that decodes it. Then the filters (`filters.py`), the optional
sandboxed check (`checks.py`, in worker threads while the next batch decodes), and the batch's
shards are written.

Output directory (`--out`, a local path):
  distill.json            what decides the rows (config, teacher weights, tokenizer, problems):
                          a rerun with the same resumes, another is refused
  decontamination.json    indexed benchmarks, skipped ones and why, every match; written before
                          anything decodes and reused on resume
  journal.jsonl           one line per finished batch: each row's fate, lengths, check verdict,
                          the batch's shard files and decode time; appended after its shards
                          are in place (a torn last line is dropped on resume)
  data/train-NNNNN.parquet      batch NNNNN's kept rows (no file when it kept none)
  failed/failed-NNNNN.parquet   rows that failed the check, with filters.on_fail = "split"
  report.json, report.md, lengths.png   the counts at each filter and the lengths (report.py)
  manifest.json           written last: every shard of each split with its rows, the columns

Resuming: a rerun of the same command skips every batch in the journal; a batch that was
decoding or not yet journaled when the run died (SIGKILL included: the one decoding and at most
`BACKLOG` decoded ones whose checks and shards were under way) is decoded again from its start,
its shards replaced whole (each is written beside its name and renamed), so nothing is
half-written, no journaled row is decoded twice, and the set equals an uninterrupted run's.

Many hosts: every process runs the same command. The whole mesh decodes each batch: the
teacher is laid out on the serving mesh (`--mesh`, rows over `data` across the hosts, heads over
`tensor`), so each host's chips decode their share of the batch's rows, and a teacher too big
for one host still fits. (One engine per host on its own share of problems would need the
engine to keep each host's results local: today it gathers every chunk's tokens from all
processes.) Process 0 alone reads and writes the output directory: its verdict on it, the
finished batches and the decontaminated problems reach the others through the distributed
key-value store (`hosts.py`), and so does its final word after the report, so every process
exits with its outcome.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import json
import math
import re
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

from z1_jax.data.format import render_prompt
from z1_jax.distill import filters as filters_lib
from z1_jax.distill import hosts
from z1_jax.distill.config import DistillConfig
from z1_jax.distill.problems import Problem, fingerprint, load_problems
from z1_jax.outputs import atomic_path, write_text_atomic

CONFIG_FILE, DECONTAM_FILE, JOURNAL_FILE = "distill.json", "decontamination.json", "journal.jsonl"
MANIFEST_FILE = "manifest.json"
BACKLOG = 2  # decoded batches waiting for (or in) the writer before the decoding waits
SPLIT_DIRS = {"train": "data", "failed": "failed"}
FORMAT = 1
QWEN_SPECIAL_IDS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645}


@dataclasses.dataclass(frozen=True)
class Teacher:
  kind: str  # "hf" or "ckpt"
  path: str  # absolute path or URI
  name: str  # the `teacher` column


def token_column(cfg: DistillConfig, tokenizer) -> str:
  """`token_num_<name>` (`output.tokenizer_name`; "auto": "qwen" for a tokenizer with Qwen2.5's
  special ids, else its directory's name)."""
  name = cfg.output.tokenizer_name
  if name == "auto":
    if all(tokenizer.convert_tokens_to_ids(t) == i for t, i in QWEN_SPECIAL_IDS.items()):
      name = "qwen"
    else:
      name = re.sub(r"\W+", "_", Path(str(tokenizer.name_or_path)).name.lower()).strip("_")
      name = name or "tokenizer"
  return f"token_num_{name}"


def identity(cfg: DistillConfig, teacher: Teacher, tokenizer, problems: list[Problem],
             source: str, dtype: str) -> dict:
  """distill.json: everything that decides the rows."""
  from z1_jax.eval.sweep import _tokenizer_identity, _weights_identity
  return {"format": FORMAT, "config": cfg.identity(),
          "teacher": {"source": f"{teacher.kind}:{teacher.path}", "name": teacher.name,
                      "weights": _weights_identity(teacher.kind, teacher.path), "dtype": dtype},
          "tokenizer": _tokenizer_identity(tokenizer),
          "problems": {"source": source, "rows": len(problems),
                       "fingerprint": fingerprint(problems)}}


def prepare_out(out: str, wanted: dict) -> Path:
  """Creates `out` with distill.json, or accepts one holding the same (resume)."""
  from z1_jax.outputs import resumable_out
  return resumable_out(out, CONFIG_FILE, wanted, "distillation")


class Journal:
  """Finished batches, one JSON line each, appended; a torn last line is dropped on reading."""

  def __init__(self, path: Path):
    self.path, self.records = path, {}
    if path.exists():
      data, good = path.read_bytes(), 0
      for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
          break
        try:
          record = json.loads(line)
        except json.JSONDecodeError:
          break
        self.records[record["batch"]] = record
        good += len(line)
      if good != len(data):
        with open(path, "r+b") as f:
          f.truncate(good)
    self._lock = threading.Lock()

  def add(self, record: dict) -> None:
    with self._lock, open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
      f.flush()
      self.records[record["batch"]] = record


def _decontamination(out: Path, cfg: DistillConfig, problems: list[Problem]) -> dict:
  """decontamination.json: computed once, before decoding; a resume reads it back."""
  path = out / DECONTAM_FILE
  if path.exists():
    return json.loads(path.read_text())
  from z1_jax.distill.decontam import build_index, decontaminate
  d = cfg.decontaminate
  index = build_index(d.benchmarks, d.files, d.ngram)
  record = {"ngram": d.ngram, "loaded": index.loaded, "skipped": index.skipped,
            "matches": decontaminate(problems, index)}
  write_text_atomic(path, json.dumps(record, indent=2) + "\n")
  return record


class _Writer:
  """Process 0's side of each batch, in batch order on one thread while the engine decodes the
  next: filters, checks, shards, then the journal line."""

  def __init__(self, out: Path, cfg: DistillConfig, journal: Journal, checker, tokenizer,
               teacher: str, column: str, bar):
    self.out, self.cfg, self.journal, self.checker = out, cfg, journal, checker
    self.tokenizer, self.teacher, self.column, self.bar = tokenizer, teacher, column, bar
    import datasets
    datasets.disable_progress_bars()  # one bar per shard written; the distill bar says enough
    self.thread = cf.ThreadPoolExecutor(1, thread_name_prefix="z1-distill-write")
    self.futures: list[cf.Future] = []
    self.removed = {name: 0 for name in (*filters_lib.FATES, "prompt_too_long")}
    self.decode_s = self.generated = 0

  def submit(self, batch: int, units, gens, too_long: list[Problem], decode_s: float) -> None:
    """Queues a decoded batch; waits while `BACKLOG` batches are still being written (decoded
    rows are held in memory and lost to a kill until their journal line is written)."""
    self.raise_if_failed()
    while sum(not f.done() for f in self.futures) >= BACKLOG:
      cf.wait([f for f in self.futures if not f.done()], return_when=cf.FIRST_COMPLETED)
      self.raise_if_failed()
    self.futures.append(self.thread.submit(self._finish, batch, units, gens, too_long,
                                           decode_s))

  def raise_if_failed(self) -> None:
    for f in self.futures:
      if f.done() and f.exception() is not None:
        raise f.exception()

  def wait(self) -> None:
    for f in self.futures:
      f.result()

  def close(self) -> None:
    self.thread.shutdown(wait=True, cancel_futures=True)
    if self.checker is not None:
      self.checker.close()

  def _finish(self, batch, units, gens, too_long, decode_s) -> None:
    f, n = self.cfg.filters, self.cfg.generation.samples_per_problem
    eos = set(_eos_ids(self.tokenizer))
    rows, metas, checks = [], [], []
    for (p, s), g in zip(units, gens):
      ids = g.tokens[:-1] if g.ended and g.tokens and g.tokens[-1] in eos else g.tokens
      response = g.text if g.text is not None else self.tokenizer.decode(ids)
      hit_cap = not g.ended
      fate, share = filters_lib.fate(response, ids, hit_cap, f)
      meta = {"id": p.id if n == 1 else f"{p.id}/{s}", "problem": p.index, "sample": s,
              "generated": len(g.tokens), "hit_cap": hit_cap,
              "token_num": len(self.tokenizer.encode(response, add_special_tokens=False)),
              "repeated_share": round(share, 4), "fate": fate or "kept", "passed": None,
              "check_error": None}
      metas.append(meta)
      rows.append({"id": meta["id"], "question": p.question, "response": response,
                   self.column: meta["token_num"], "source": p.source, "teacher": self.teacher})
      checks.append(self.checker.submit(p, response) if self.checker and fate is None else None)
    for meta, row, check in zip(metas, rows, checks):
      if check is not None:
        meta["passed"], meta["check_error"] = check.result()
        if meta["passed"] is False:
          meta["fate"] = "failed" if f.on_fail == "split" else "check"
      if self.checker is not None:
        row["passed"] = meta["passed"]
    metas += [{"id": p.id, "problem": p.index, "sample": None, "generated": 0,
               "hit_cap": False, "token_num": None, "repeated_share": None,
               "fate": "prompt_too_long", "passed": None, "check_error": None}
              for p in too_long]
    files = {}
    for split, fate in (("train", "kept"), ("failed", "failed")):
      chosen = [r for r, m in zip(rows, metas) if m["fate"] == fate]
      files[split] = self._write_shard(split, batch, chosen) if chosen else None
    generated = sum(len(g.tokens) for g in gens)
    self.journal.add({"batch": batch, "rows": metas, "files": files, "decode_s": decode_s,
                      "generated_tokens": generated})
    for m in metas:
      if m["fate"] in self.removed:
        self.removed[m["fate"]] += 1
    self.decode_s += decode_s
    self.generated += generated
    self.bar.update(len(units) + len(too_long) * n)
    self.bar.set_postfix({"tok/s": f"{self.generated / max(self.decode_s, 1e-9):.0f}",
                          **{k: v for k, v in self.removed.items() if v}}, refresh=False)

  def _write_shard(self, split: str, batch: int, rows: list[dict]) -> str:
    import datasets
    name = f"{SPLIT_DIRS[split]}/{split}-{batch:05d}.parquet"
    with atomic_path(self.out / name) as tmp:
      datasets.Dataset.from_list(rows, features=features(self.column, self.checker is not None)
                                 ).to_parquet(str(tmp))
    return name


def features(column: str, with_passed: bool):
  """The shards' schema (`datasets.Features`)."""
  import datasets
  cols = {"id": "string", "question": "string", "response": "string", column: "int64",
          "source": "string", "teacher": "string"}
  if with_passed:
    cols["passed"] = "bool"
  return datasets.Features({k: datasets.Value(v) for k, v in cols.items()})


def _eos_ids(tokenizer) -> list[int]:
  from z1_jax.infer.budget import default_eos_ids
  return list(default_eos_ids(tokenizer))


def manifest(records: dict[int, dict], column: str, with_passed: bool, teacher: str) -> dict:
  """manifest.json: each split's shards (with rows) in batch order, the columns."""
  splits: dict[str, list[dict]] = {s: [] for s in SPLIT_DIRS}
  for batch in sorted(records):
    rec = records[batch]
    for split, name in rec["files"].items():
      if name:
        fate = "kept" if split == "train" else "failed"
        splits[split].append({"file": name,
                              "rows": sum(m["fate"] == fate for m in rec["rows"])})
  return {"format": FORMAT, "complete": True, "teacher": teacher,
          "columns": list(features(column, with_passed)), "token_column": column,
          "splits": splits, "rows": {s: sum(x["rows"] for x in v) for s, v in splits.items()},
          "train_with": f"z1 train ... data.dataset=<out>/{SPLIT_DIRS['train']}"}


def run_distill(cfg: DistillConfig, source: str, out: str, *, teacher: Teacher, tokenizer,
                load_model: Callable[[], object], dtype: str, progress: bool = True,
                host_timeout_s: float = 1800.0) -> dict | None:
  """Runs (or resumes) a distillation into `out`; returns the report on process 0 (None on the
  others). `load_model` is called after every input check."""
  import jax

  import z1_jax
  writer_process = jax.process_index() == 0
  problems = load_problems(source, cfg.problems)
  column = token_column(cfg, tokenizer)
  B, n = cfg.generation.batch_problems, cfg.generation.samples_per_problem
  batches = math.ceil(len(problems) / B)
  state: dict = {}

  def prepare():  # process 0, before the teacher loads: a refusal reaches every process
    checker = None
    if cfg.filters.check != "none":  # bubblewrap missing is known before anything is written
      from z1_jax.distill.checks import Checker
      checker = Checker(cfg.filters)
    state["checker"] = checker
    root = prepare_out(out, identity(cfg, teacher, tokenizer, problems, source, dtype))
    journal = Journal(root / JOURNAL_FILE)
    decontam = _decontamination(root, cfg, problems)
    excluded = sorted({m["problem_index"] for m in decontam["matches"]})
    state.update(root=root, journal=journal, decontam=decontam)
    return {"done": sorted(journal.records), "excluded": excluded}, None

  try:
    shared, _ = hosts.from_process_0("z1-distill/start", prepare, host_timeout_s)
  except BaseException:
    if state.get("checker") is not None:
      state["checker"].close()
    raise
  done, excluded = set(shared["done"]), set(shared["excluded"])
  pending = [k for k in range(batches) if k not in done]
  todo = [p for k in pending for p in problems[k * B:(k + 1) * B] if p.index not in excluded]
  bar = tqdm(total=len(todo) * n, desc="distill", unit="row", disable=not progress or
             not writer_process)
  writer = None
  if writer_process:
    writer = _Writer(state["root"], cfg, state["journal"], state["checker"], tokenizer,
                     teacher.name, column, bar)
  try:
    model = load_model()
    positions = model.cfg.max_position_embeddings
    if writer_process:
      print(f"z1 distill: {len(problems)} problems in {batches} batches, {len(done)} done, "
            f"{len(excluded)} decontaminated; decoding {len(todo) * n} rows with "
            f"{teacher.name}", file=sys.stderr, flush=True)
    for k in pending:
      if writer is not None:
        writer.raise_if_failed()
      batch = [p for p in problems[k * B:(k + 1) * B] if p.index not in excluded]
      prompts = {p.index: tokenizer.encode(render_prompt(p.question, cfg.problems.system_prompt),
                                           add_special_tokens=False) for p in batch}
      fits = [p for p in batch if len(prompts[p.index]) + cfg.generation.max_tokens <= positions]
      too_long = [p for p in batch if p not in fits]
      units = [(p, s) for p in fits for s in range(n)]
      start = time.perf_counter()
      gens = []
      if units:
        gens = z1_jax.generate(model, [prompts[p.index] for p, _ in units],
                               max_new_tokens=cfg.generation.max_tokens,
                               options=cfg.decode_options(tokenizer=tokenizer, row_ids=[
                                   p.index * n + s for p, s in units]))
      if writer is not None:
        writer.submit(k, units, gens, too_long, time.perf_counter() - start)

    def finish():  # process 0: the last checks and shards, then the report and the manifest
      writer.wait()
      report = _finalize(state["root"], cfg, state["journal"], state["decontam"], problems,
                         teacher, source, column)
      return {"kept": report["kept"]}, report

    _, report = hosts.from_process_0("z1-distill/done", finish, host_timeout_s)
  finally:
    bar.close()
    if writer is not None:
      writer.close()
  return report if writer_process else None


def _finalize(root: Path, cfg: DistillConfig, journal: Journal, decontam: dict,
              problems: list[Problem], teacher: Teacher, source: str, column: str) -> dict:
  from z1_jax.distill import report as report_lib
  report = report_lib.build(list(journal.records.values()), decontam, problems=len(problems),
                            cfg=cfg, teacher=teacher.name, source=source, token_column=column)
  report_lib.write(report, root)
  write_text_atomic(root / MANIFEST_FILE, json.dumps(
      manifest(journal.records, column, cfg.filters.check != "none", teacher.name),
      indent=2) + "\n")
  return report
