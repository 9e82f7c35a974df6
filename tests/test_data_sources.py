"""Reading trajectory files: formats, column names, and bad input naming file and row."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from z1_jax.data.sources import Columns, DataError, ReadStats, read_examples

ROWS = [{"question": "q0", "response": "r0", "token_num_qwen": 1},
        {"question": "q1", "response": "r1", "token_num_qwen": 1}]


def _jsonl(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return path


def test_jsonl_parquet_arrow_and_directories(tmp_path):
  _jsonl(tmp_path / "a.jsonl", ROWS)
  pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "b.parquet")
  table = pa.Table.from_pylist(ROWS)
  with pa.OSFile(str(tmp_path / "c.arrow"), "wb") as f, pa.ipc.new_stream(f, table.schema) as w:
    w.write_table(table)
  for name in ("a.jsonl", "b.parquet", "c.arrow"):
    got = list(read_examples(tmp_path / name))
    assert [(e.question, e.response, e.row) for e in got] == [("q0", "r0", 0), ("q1", "r1", 1)]
  assert len(list(read_examples(tmp_path))) == 6


def test_configurable_columns(tmp_path):
  path = _jsonl(tmp_path / "x.jsonl", [{"problem": "p", "trace": "t"}])
  got = list(read_examples(path, Columns(question="problem", response="trace")))
  assert (got[0].question, got[0].response) == ("p", "t")


@pytest.mark.parametrize("row, message", [
    ({"question": "q"}, r"row 1: missing column 'response'"),
    ({"question": None, "response": "r"}, r"row 1: column 'question' is null"),
    ({"question": "q", "response": 5}, r"row 1: column 'response' is int"),
    ({"question": "q", "response": "  "}, r"row 1: column 'response' is empty"),
])
def test_bad_rows_name_file_and_row(tmp_path, row, message):
  path = _jsonl(tmp_path / "bad.jsonl", [ROWS[0], row])
  with pytest.raises(DataError, match=rf"bad\.jsonl: {message}"):
    list(read_examples(path))
  stats = ReadStats()
  assert len(list(read_examples(path, on_bad_row="skip", stats=stats))) == 1
  assert stats.skipped == 1 and "row 1" in stats.errors[0]


def test_invalid_utf8_and_json(tmp_path):
  path = tmp_path / "enc.jsonl"
  path.write_bytes(json.dumps(ROWS[0]).encode() + b'\n{"question": "\xff", "response": "r"}\n')
  with pytest.raises(DataError, match=r"enc\.jsonl: row 1: invalid UTF-8"):
    list(read_examples(path))
  path.write_text(json.dumps(ROWS[0]) + "\n{not json\n")
  with pytest.raises(DataError, match=r"row 1: invalid JSON"):
    list(read_examples(path))


def test_missing_parquet_column_and_missing_files(tmp_path):
  pq.write_table(pa.Table.from_pylist([{"question": "q"}]), tmp_path / "p.parquet")
  with pytest.raises(DataError, match=r"p\.parquet: missing column 'response'"):
    list(read_examples(tmp_path / "p.parquet"))
  with pytest.raises(FileNotFoundError, match="dataset not found"):
    list(read_examples(tmp_path / "nope.jsonl"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(DataError, match="no .jsonl"):
    list(read_examples(tmp_path / "empty"))
