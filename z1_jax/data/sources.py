"""Reading trajectory examples: local JSONL / Parquet / Arrow files or directories, or the hub.

Every record is checked as it is read; a bad one raises `DataError` naming the file and row
(or, with `on_bad_row="skip"`, is counted and skipped). Records come out as
`Example(source, row, question, response)`, in file order.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Iterable, Iterator

from z1_jax.errors import Z1Error
from z1_jax.outputs import atomic_path
from z1_jax.paths import is_uri

HUB_DATASET = "efficientscaling/Z1-Code-Reasoning-107K"
SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".parquet", ".arrow")


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


def file_kind(path: Path) -> str | None:
  """"jsonl" (also .json, .jsonl.gz, .json.gz), "parquet", "arrow", or None."""
  name = path.name.lower()
  for suffix, kind in ((".jsonl", "jsonl"), (".json", "jsonl"), (".jsonl.gz", "jsonl"),
                       (".json.gz", "jsonl"), (".parquet", "parquet"), (".arrow", "arrow")):
    if name.endswith(suffix):
      return kind
  return None


# JSON files that describe a dataset rather than hold its rows (hub snapshots, save_to_disk).
_METADATA_FILES = {"dataset_info.json", "dataset_infos.json", "state.json", "dataset_dict.json",
                   "config.json"}


def resolve_files(path: str | os.PathLike, split: str = "train") -> list[Path]:
  """The data files of a file or a directory (searched recursively; hidden entries and
  metadata skipped). A `datasets` `save_to_disk` directory gives its Arrow files, the `split`
  one for a saved `DatasetDict`."""
  p = Path(path).expanduser()
  if p.is_dir():
    if (p / "dataset_dict.json").is_file():
      splits = _json_file(p / "dataset_dict.json").get("splits", [])
      if split not in splits:
        raise DataError(f"{p}: saved DatasetDict has no split {split!r} (splits: {splits})")
      p = p / split
    if (p / "state.json").is_file() and (p / "dataset_info.json").is_file():
      state = _json_file(p / "state.json")
      try:
        files = [p / f["filename"] for f in state["_data_files"]]
      except (KeyError, TypeError) as e:
        raise DataError(f"{p / 'state.json'}: not a datasets save_to_disk state ({e!r})") from e
      for f in files:
        if not f.is_file():
          raise DataError(f"{f}: listed in {p / 'state.json'} but missing")
      return files
    files = sorted(f for f in p.rglob("*") if file_kind(f) and f.is_file() and
                   f.name not in _METADATA_FILES and
                   not any(part.startswith(".") for part in f.relative_to(p).parts))
    if not files:
      raise DataError(f"{p}: no {'/'.join(SUFFIXES)} files in this directory")
    return files
  if p.is_file():
    if file_kind(p) is None:
      raise DataError(f"{p}: unsupported file type; expected one of {', '.join(SUFFIXES)}")
    return [p]
  raise FileNotFoundError(f"dataset not found: {p}")


def _json_file(path: Path) -> dict:
  try:
    value = json.loads(path.read_text())
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise DataError(f"{path}: invalid JSON ({e})") from e
  if not isinstance(value, dict):
    raise DataError(f"{path}: expected a JSON object")
  return value


def jsonl_records(path: Path) -> Iterator[tuple[int, dict]]:
  """(row, object) per non-blank line (or per element of a file holding one JSON array);
  gzip when the name ends in .gz. Bad UTF-8, bad JSON, or a truncated or corrupt file raise
  `DataError` naming the file and row."""
  import gzip
  import zlib
  path = Path(path)
  i = -1
  try:
    with (gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")) as f:
      first = True
      for i, raw in enumerate(f):
        if not raw.strip():
          continue
        if first and raw.lstrip().startswith(b"["):  # one JSON array of objects
          yield from _json_array(path, raw + f.read())
          return
        first = False
        try:
          line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
          raise DataError(f"{path}: row {i}: invalid UTF-8 ({e.reason} at byte {e.start})") from e
        try:
          record = json.loads(line)
        except json.JSONDecodeError as e:
          raise DataError(f"{path}: row {i}: invalid JSON ({e.msg})") from e
        if not isinstance(record, dict):
          raise DataError(f"{path}: row {i}: expected a JSON object, got {type(record).__name__}")
        yield i, record
  except (EOFError, OSError, zlib.error) as e:
    if isinstance(e, (FileNotFoundError, IsADirectoryError, PermissionError)):
      raise
    raise DataError(f"{path}: row {i + 1}: file truncated or corrupt ({e})") from e


def _json_array(path: Path, data: bytes) -> Iterator[tuple[int, dict]]:
  try:
    rows = json.loads(data.decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise DataError(f"{path}: invalid JSON array ({e})") from e
  for i, record in enumerate(rows):
    if not isinstance(record, dict):
      raise DataError(f"{path}: row {i}: expected a JSON object, got {type(record).__name__}")
    yield i, record


def write_jsonl(rows: Iterable[dict], out: str | os.PathLike) -> Path:
  """Rows as JSONL, written to a temporary file and renamed: never a half-written file."""
  out = Path(out)
  with atomic_path(out) as tmp:
    with open(tmp, "w") as f:
      for row in rows:
        f.write(json.dumps(row) + "\n")
  return out


def read_table(path: Path):
  """A Parquet or Arrow (stream or file) table, or a DataError naming a corrupt file."""
  import pyarrow as pa
  import pyarrow.parquet as pq
  try:
    if file_kind(path) == "parquet":
      table = pq.read_table(path)
    else:
      try:
        with pa.memory_map(str(path)) as source:
          table = pa.ipc.open_stream(source).read_all()
      except pa.ArrowInvalid:
        with pa.memory_map(str(path)) as source:
          table = pa.ipc.open_file(source).read_all()
  except (pa.ArrowException, OSError) as e:
    if isinstance(e, (FileNotFoundError, PermissionError)):
      raise
    raise DataError(f"{path}: not a readable {file_kind(path)} file (truncated or corrupt?): "
                    f"{e}") from e
  return table


def _table_records(path: Path, columns: Columns) -> Iterator[tuple[int, dict]]:
  table = read_table(path)
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
    raise Z1Error(f"on_bad_row={on_bad_row!r}: expected 'error' or 'skip'")
  stats = stats if stats is not None else ReadStats()
  local = Path(path_or_id).expanduser()
  if is_uri(path_or_id):
    sources = [(str(path_or_id), _uri_records(str(path_or_id)))]
  elif local.exists() or not _looks_like_hub_id(str(path_or_id)):
    sources = [(str(f), jsonl_records(f) if file_kind(f) == "jsonl" else
                _table_records(f, columns)) for f in resolve_files(local, split)]
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


# `datasets` builders by file suffix, for data read from a URI.
_URI_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".arrow": "arrow"}


def _uri_records(uri: str) -> Iterator[tuple[int, dict]]:
  """Rows of JSONL/Parquet/Arrow files at a URI such as gs://bucket/z1/train-*.parquet (a glob
  is fine), read by `datasets` through fsspec (gs:// needs gcsfs, in the `tpu` extra)."""
  import datasets
  suffix = "." + uri.rsplit(".", 1)[-1] if "." in uri.rsplit("/", 1)[-1] else ""
  if suffix not in _URI_BUILDERS:
    raise DataError(f"{uri}: a remote dataset must name its files with one of the suffixes "
                    f"{', '.join(_URI_BUILDERS)} (a glob such as gs://bucket/dir/*.parquet works)")
  try:
    ds = datasets.load_dataset(_URI_BUILDERS[suffix], data_files=uri, split="train")
  except Exception as e:  # noqa: BLE001 - say which URI failed and why
    raise DataError(f"{uri}: cannot read it ({type(e).__name__}: {e})") from e
  yield from enumerate(ds)


def _hub_records(dataset_id: str, split: str) -> Iterator[tuple[int, dict]]:
  from z1_jax.hub import check_reachable, hub_offline
  import datasets
  check_reachable("dataset", dataset_id)
  try:
    ds = datasets.load_dataset(dataset_id, split=split)
  except Exception as e:  # noqa: BLE001 - say which id failed and why
    raise DataError(f"{dataset_id!r} is not a local path and could not be loaded from the "
                    f"Hugging Face hub{' (HF_HUB_OFFLINE is set)' if hub_offline() else ''}: "
                    f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}. For a "
                    "local copy pass its path (a JSONL/Parquet/Arrow file or directory, or a "
                    "datasets save_to_disk directory)") from e
  yield from enumerate(ds)
