"""The problems a teacher answers: read from local JSONL / Parquet / Arrow files or directories
(as `z1 data` finds them, `data.sources.resolve_files`), a `datasets` `save_to_disk` directory,
a URI (`gs://.../*.parquet`, read by `datasets`), or a hub dataset id (read by `datasets`).

Each row becomes a `Problem`: its index in the set (its sampling row id comes from it), its id
(`problems.id_column`, else the index), the user message (`problems.template` filled from the
row's columns; Z1's is the question alone), its source, and what a check needs (tests, the
program whose output is the answer). A bad row is an error naming the file and row.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Iterator

from z1_jax.data.sources import DataError, file_kind, jsonl_records, read_table, resolve_files
from z1_jax.distill.config import ProblemsSection
from z1_jax.errors import Z1Error
from z1_jax.paths import is_uri


@dataclasses.dataclass(frozen=True)
class Problem:
  index: int  # place in the problem set (after `limit`)
  id: str
  question: str  # the user message: `template` filled from the row
  source: str
  tests: dict[str, Any] | None = None  # eval.code tests (check = "tests")
  program: str | None = None  # check = "output": the program whose printed output is the answer


def _table_rows(path: Path) -> Iterator[tuple[int, dict]]:
  yield from enumerate(read_table(path).to_pylist())


def _datasets_rows(source: str, split: str) -> Iterator[tuple[int, dict]]:
  """Rows of a URI (a builder chosen by the suffix) or a hub dataset id, through `datasets`."""
  import datasets
  if is_uri(source):
    builders = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".arrow": "arrow"}
    suffix = "." + source.rsplit(".", 1)[-1] if "." in source.rsplit("/", 1)[-1] else ""
    if suffix not in builders:
      raise DataError(f"--problems {source}: a remote file set must end in one of "
                      f"{', '.join(builders)} (a glob such as gs://bucket/dir/*.parquet works)")
    load = lambda: datasets.load_dataset(builders[suffix], data_files=source, split="train")
  else:
    from z1_jax.hub import check_reachable
    check_reachable("dataset", source)
    load = lambda: datasets.load_dataset(source, split=split)
  try:
    ds = load()
  except Exception as e:  # noqa: BLE001 - say which source failed and why
    first = str(e).splitlines()[0] if str(e) else ""
    raise DataError(f"--problems {source}: cannot read it ({type(e).__name__}: {first}); for "
                    "a local copy pass its path") from e
  yield from enumerate(ds)


def raw_rows(source: str, split: str = "train") -> Iterator[tuple[str, int, dict]]:
  """(file, row, record) of every problem row, in file order."""
  local = Path(source).expanduser()
  if is_uri(source) or not local.exists() and _looks_like_hub_id(source):
    for row, record in _datasets_rows(source, split):
      yield source, row, record
    return
  for f in resolve_files(local, split):
    records = jsonl_records(f) if file_kind(f) == "jsonl" else _table_rows(f)
    for row, record in records:
      yield str(f), row, record


def _looks_like_hub_id(text: str) -> bool:
  parts = text.split("/")
  return len(parts) == 2 and all(parts) and not text.startswith((".", "/", "~"))


def _text(record: dict, column: str, where: str) -> str:
  if column not in record:
    raise DataError(f"{where}: missing column {column!r} (columns: {sorted(record)})")
  value = record[column]
  if not isinstance(value, str) or not value.strip():
    kind = "empty" if isinstance(value, str) else ("null" if value is None else
                                                   type(value).__name__)
    raise DataError(f"{where}: column {column!r} is {kind}, expected a non-empty string")
  return value


def _tests(record: dict, column: str, where: str) -> dict | None:
  value = record.get(column)
  if value is None or value == "":
    return None
  if isinstance(value, str):
    try:
      value = json.loads(value)
    except json.JSONDecodeError as e:
      raise DataError(f"{where}: column {column!r} is not JSON ({e.msg})") from None
  if not isinstance(value, dict) or value.get("style") not in ("humaneval", "unittest",
                                                                "functional", "stdin"):
    raise DataError(f"{where}: column {column!r}: expected the tests of z1_jax/eval/code.py, "
                    "{\"style\": humaneval|unittest|functional|stdin, ...}")
  return value


def load_problems(source: str, cfg: ProblemsSection) -> list[Problem]:
  """Every problem of `source` (the first `cfg.limit` when set), checked row by row."""
  out: list[Problem] = []
  seen: dict[str, str] = {}
  for path, row, record in raw_rows(source, cfg.split):
    if cfg.limit and len(out) >= cfg.limit:
      break
    where = f"{path}: row {row}"
    _text(record, cfg.question_column, where)
    try:
      question = cfg.template.format_map(record)
    except KeyError as e:
      raise DataError(f"{where}: problems.template names {{{e.args[0]}}}, not a column "
                      f"(columns: {sorted(record)})") from None
    if not question.strip():
      raise DataError(f"{where}: problems.template gives an empty user message")
    index = len(out)
    pid = str(record[cfg.id_column]) if cfg.id_column else str(index)
    if cfg.id_column and cfg.id_column not in record:
      raise DataError(f"{where}: missing id column {cfg.id_column!r}")
    if pid in seen:
      raise DataError(f"{where}: id {pid!r} already used by {seen[pid]} (problems.id_column "
                      f"= {cfg.id_column!r} must be unique)")
    seen[pid] = where
    src = _text(record, cfg.source_column, where) if cfg.source_column else source
    tests = _tests(record, cfg.tests_column, where) if cfg.tests_column else None
    program = (_text(record, cfg.program_column or cfg.question_column, where))
    out.append(Problem(index, pid, question, src, tests, program))
  if not out:
    raise Z1Error(f"--problems {source}: no problems")
  return out


def fingerprint(problems: list[Problem]) -> str:
  """sha256 over every problem's id, message, source, tests and program: a resumed run on
  changed problems is refused."""
  h = hashlib.sha256()
  for p in problems:
    h.update(json.dumps([p.id, p.question, p.source, p.tests, p.program]).encode() + b"\n")
  return "sha256:" + h.hexdigest()
