"""Decontamination: problems that share a word n-gram with an evaluation benchmark's problem are
removed before anything is decoded, and every match is listed (problem, benchmark, benchmark
problem id, the shared n-gram).

Text is normalised to lowercase words (runs of letters and digits; punctuation, whitespace and
code layout dropped), and n = `decontaminate.ngram` (13, the GPT-3 / lm-eval convention). A
benchmark problem contributes its text without Z1's evaluation instruction (`instruction=""`),
HumanEval its function prompt. An n-gram found in at least half of one benchmark's problems
(and in 5 or more) is that benchmark's template ("Read the inputs from stdin, solve the
problem, ..."), not its content, and is not indexed. A benchmark problem shorter than n words
cannot match (documented limit; raise it by lowering `decontaminate.ngram`).

Benchmarks: every one `z1 sweep` knows (`eval.benchmarks.LOADERS`) and MBPP. HumanEval, AIME
and the MATH500 subset load offline; the others (MBPP, LiveCodeBench, BigCodeBench, MATH500,
GPQA) come from `decontaminate.files` (a local file in the benchmark's schema) or the hub, and a
benchmark that cannot be loaded is skipped with a stated message on stderr and in the report
(`skipped`), never silently.
"""

from __future__ import annotations

import collections
import dataclasses
import re
import sys
from typing import Iterable

from z1_jax.errors import Z1Error

_WORD = re.compile(r"[^\W_]+")
TEMPLATE_SHARE, TEMPLATE_MIN = 0.5, 5
MBPP_HUB = ("google-research-datasets/mbpp", "full")


def words(text: str) -> list[str]:
  return _WORD.findall(text.lower())


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
  w = words(text)
  return {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}


@dataclasses.dataclass
class Index:
  """n-gram -> (benchmark, problem id) of the first benchmark problem holding it."""
  n: int
  grams: dict[tuple[str, ...], tuple[str, str]] = dataclasses.field(default_factory=dict)
  loaded: dict[str, int] = dataclasses.field(default_factory=dict)  # benchmark -> problems
  skipped: dict[str, str] = dataclasses.field(default_factory=dict)  # benchmark -> why

  def add(self, benchmark: str, texts: list[tuple[str, str]]) -> None:
    """Indexes one benchmark's (id, text) pairs, leaving out its template n-grams."""
    per_problem = [(pid, ngrams(text, self.n)) for pid, text in texts]
    counts = collections.Counter(g for _, gs in per_problem for g in gs)
    limit = max(TEMPLATE_MIN, TEMPLATE_SHARE * len(texts))
    for pid, gs in per_problem:
      for g in gs:
        if counts[g] < limit:
          self.grams.setdefault(g, (benchmark, pid))
    self.loaded[benchmark] = len(texts)

  def matches(self, text: str) -> list[dict]:
    """One match per benchmark problem the text shares an n-gram with (the first such n-gram
    in the text's order)."""
    w = words(text)
    found: dict[tuple[str, str], str] = {}
    for i in range(len(w) - self.n + 1):
      hit = self.grams.get(tuple(w[i:i + self.n]))
      if hit is not None and hit not in found:
        found[hit] = " ".join(w[i:i + self.n])
    return [{"benchmark": b, "benchmark_id": pid, "ngram": g} for (b, pid), g in found.items()]


def benchmark_texts(name: str, path: str | None) -> list[tuple[str, str]]:
  """(id, text) of a benchmark's problems, without the evaluation instruction."""
  if name == "mbpp":
    return _mbpp_texts(path)
  from z1_jax.eval.benchmarks import load_benchmark
  options = {"livecodebench": {"start_date": None}}.get(name, {})  # every problem, any date
  problems = load_benchmark(name, path=path, instruction="", **options)
  return [(p.id, (p.tests or {}).get("prompt") if name == "humaneval" else p.question)
          for p in problems]


def _mbpp_texts(path: str | None) -> list[tuple[str, str]]:
  """MBPP's problem statements: `text` (the full set) or `prompt` (the sanitized set), from a
  local file in the hub's schema or the hub (every split)."""
  from z1_jax.eval.benchmarks import _hub_rows, read_rows
  if path:
    rows = read_rows(path)
  else:
    rows = [r for split in ("train", "validation", "test", "prompt")
            for r in _hub_rows(*MBPP_HUB, split)]
  out = []
  for i, r in enumerate(rows):
    text = r.get("text") or r.get("prompt")
    if not isinstance(text, str):
      raise Z1Error(f"mbpp row {i}: no 'text' or 'prompt' field (fields: {sorted(r)})")
    out.append((str(r.get("task_id", i)), text))
  return out


def build_index(benchmarks: Iterable[str], files: dict[str, str], n: int, log=None) -> Index:
  """The n-gram index of every benchmark that loads; the others in `skipped` with the reason
  (printed on stderr)."""
  log = log or (lambda text: print(text, file=sys.stderr, flush=True))
  index = Index(n)
  for name in benchmarks:
    try:
      index.add(name, benchmark_texts(name, files.get(name)))
    except (Z1Error, OSError) as e:
      reason = str(e).splitlines()[0] if str(e) else type(e).__name__
      reason = reason.split("; pass a local file")[0]  # the loaders' advice names sweep's flag
      index.skipped[name] = reason
      log(f"z1 distill: decontamination against {name} skipped: {reason} (give a local file: "
          f"decontaminate.files.{name}=PATH)")
  return index


def decontaminate(problems, index: Index) -> list[dict]:
  """Every match of every problem (`problem_index`, `problem_id` added to `Index.matches`)."""
  out = []
  for p in problems:
    for m in index.matches(p.question):
      out.append({"problem_index": p.index, "problem_id": p.id, **m})
  return out
