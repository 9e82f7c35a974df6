"""Reading trajectory examples: local JSONL / Parquet / Arrow files or directories, or the hub.

Every record is checked as it is read; a bad one raises `DataError` naming the file and row
(or, with `on_bad_row="skip"`, is counted and skipped). Records come out as
`Example(source, row, question, response)`, in file order.
"""

from __future__ import annotations

import dataclasses
import json
import os
import uuid
from pathlib import Path
from typing import Iterable, Iterator

from z1_jax.errors import Z1Error

HUB_DATASET = "efficientscaling/Z1-Code-Reasoning-107K"
SUFFIXES = (".jsonl", ".json", ".parquet", ".arrow")


class DataError(Z1Error):
  """Bad training data: the message names the file and row."""


@dataclasses.dataclass(frozen=True)
class Columns:
  """Column names in the source (configurable for other trajectory sets)."""
  question: str = "question"
  response: str = "response"


@dataclasses.dataclass(frozen=True)
class Example:
  source: str
  row: int
  question: str
  response: str


@dataclasses.dataclass
class ReadStats:
  read: int = 0
  skipped: int = 0
  errors: list[str] = dataclasses.field(default_factory=list)


def sample_dataset_path() -> Path:
  """The small Z1-format sample that ships inside the package."""
  return Path(__file__).parent / "sample" / "z1_sample.jsonl"


def resolve_files(path: str | os.PathLike) -> list[Path]:
  p = Path(path).expanduser()
  if p.is_dir():
    files = sorted(f for f in p.rglob("*") if f.suffix in SUFFIXES and f.is_file())
    if not files:
      raise DataError(f"{p}: no {'/'.join(SUFFIXES)} files in this directory")
    return files
  if p.is_file():
    if p.suffix not in SUFFIXES:
      raise DataError(f"{p}: unsupported file type {p.suffix!r}; expected one of {SUFFIXES}")
    return [p]
  raise FileNotFoundError(f"dataset not found: {p}")


def jsonl_records(path: Path) -> Iterator[tuple[int, dict]]:
  """(row, object) per non-blank line; bad UTF-8 or JSON raises `DataError` naming file and row."""
  with open(path, "rb") as f:
    for i, raw in enumerate(f):
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise DataError(f"{path}: row {i}: invalid UTF-8 ({e.reason} at byte {e.start})") from e
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise DataError(f"{path}: row {i}: invalid JSON ({e.msg})") from e
      if not isinstance(record, dict):
        raise DataError(f"{path}: row {i}: expected a JSON object, got {type(record).__name__}")
      yield i, record


def write_jsonl(rows: Iterable[dict], out: str | os.PathLike) -> Path:
  """Rows as JSONL, written to a temporary file and renamed: never a half-written file."""
  out = Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}")
  try:
    with open(tmp, "w") as f:
      for row in rows:
        f.write(json.dumps(row) + "\n")
    os.replace(tmp, out)
  finally:
    tmp.unlink(missing_ok=True)
  return out


def _table_records(path: Path, columns: Columns) -> Iterator[tuple[int, dict]]:
  import pyarrow as pa
  import pyarrow.parquet as pq
  if path.suffix == ".parquet":
    table = pq.read_table(path)
  else:
    try:
      with pa.memory_map(str(path)) as source:
        table = pa.ipc.open_stream(source).read_all()
    except pa.ArrowInvalid:
      with pa.memory_map(str(path)) as source:
        table = pa.ipc.open_file(source).read_all()
  for name in (columns.question, columns.response):
    if name not in table.column_names:
      raise DataError(f"{path}: missing column {name!r} (columns: {table.column_names})")
  for i, record in enumerate(table.select([columns.question, columns.response]).to_pylist()):
    yield i, record


def _check(source: str, row: int, record: dict, columns: Columns) -> Example:
  values = []
  for name in (columns.question, columns.response):
    if name not in record:
      raise DataError(f"{source}: row {row}: missing column {name!r}")
    value = record[name]
    if not isinstance(value, str):
      kind = "null" if value is None else type(value).__name__
      raise DataError(f"{source}: row {row}: column {name!r} is {kind}, expected a string")
    if not value.strip():
      raise DataError(f"{source}: row {row}: column {name!r} is empty")
    values.append(value)
  return Example(source, row, *values)


def read_examples(path_or_id: str | os.PathLike, columns: Columns = Columns(),
                  on_bad_row: str = "error", split: str = "train",
                  stats: ReadStats | None = None) -> Iterator[Example]:
  """Examples from local files/directories, or from the hub when `path_or_id` is a dataset id."""
  if on_bad_row not in ("error", "skip"):
    raise ValueError(f"on_bad_row={on_bad_row!r}: expected 'error' or 'skip'")
  stats = stats if stats is not None else ReadStats()
  local = Path(path_or_id).expanduser()
  if local.exists() or not _looks_like_hub_id(str(path_or_id)):
    sources = [(str(f), jsonl_records(f) if f.suffix in (".jsonl", ".json") else
                _table_records(f, columns)) for f in resolve_files(local)]
  else:
    sources = [(f"hub:{path_or_id}[{split}]", _hub_records(str(path_or_id), split))]
  for name, records in sources:
    for row, record in records:
      try:
        example = _check(name, row, record, columns)
      except DataError as e:
        if on_bad_row == "error":
          raise
        stats.skipped += 1
        stats.errors.append(str(e))
        continue
      stats.read += 1
      yield example


def _looks_like_hub_id(text: str) -> bool:
  parts = text.split("/")
  return len(parts) == 2 and all(parts) and not text.startswith((".", "/", "~"))


def _hub_records(dataset_id: str, split: str) -> Iterator[tuple[int, dict]]:
  import datasets
  try:
    ds = datasets.load_dataset(dataset_id, split=split)
  except Exception as e:  # noqa: BLE001 - say which id failed and why
    raise FileNotFoundError(f"{dataset_id!r} is not a local path and could not be loaded from "
                            f"the Hugging Face hub: {type(e).__name__}: {e}") from e
  yield from enumerate(ds)
