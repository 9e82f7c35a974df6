"""gs:// (any scheme://) locations stay URIs end to end; local paths become absolute; datasets
read from a URI go through `datasets` (a file:// URI stands in for gs:// offline)."""

import json

import pytest

from z1_jax.data.sources import DataError, read_examples
from z1_jax.paths import as_path, is_uri


def test_uri_stays_a_uri_and_local_paths_become_absolute(tmp_path, monkeypatch):
  run = as_path("gs://bucket/runs/z1-7b")
  assert is_uri(run) and str(run / "checkpoints") == "gs://bucket/runs/z1-7b/checkpoints"
  monkeypatch.chdir(tmp_path)
  local = as_path("runs/x")
  assert not is_uri(local) and local == tmp_path / "runs" / "x"


def test_dataset_from_a_uri(tmp_path):
  rows = [{"question": f"q{i}", "response": f"r{i}"} for i in range(3)]
  path = tmp_path / "train.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  examples = list(read_examples(f"file://{path}"))
  assert [(e.question, e.response) for e in examples] == [("q0", "r0"), ("q1", "r1"),
                                                           ("q2", "r2")]
  with pytest.raises(DataError, match="suffixes"):
    list(read_examples(f"file://{tmp_path}"))
