"""The `z1` command line: checkpoint conversion end to end, and its errors."""

import subprocess
import sys

import numpy as np
from safetensors.numpy import load_file

from z1_jax.cli import main


def test_convert_hf_orbax_hf(hf_checkpoint, tmp_path, capsys):
  _, path = hf_checkpoint("untied-gqa4-theta")
  assert main(["convert", "hf-to-orbax", "--hf", str(path), "--out", str(tmp_path / "ck"),
               "--mesh", "2,2,2"]) == 0
  assert main(["convert", "orbax-to-hf", "--ckpt", str(tmp_path / "ck"), "--out",
               str(tmp_path / "hf"), "--dtype", "float32", "--mesh", "1,1,8"]) == 0
  a, b = load_file(path / "model.safetensors"), load_file(tmp_path / "hf" / "model.safetensors")
  assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)
  assert '"wrote"' in capsys.readouterr().out


def test_convert_errors_exit_2(tmp_path, capsys):
  assert main(["convert", "hf-to-orbax", "--hf", str(tmp_path / "none"), "--out",
               str(tmp_path / "ck")]) == 2
  assert "checkpoint directory not found" in capsys.readouterr().err
  assert main(["convert", "orbax-to-hf", "--ckpt", str(tmp_path / "none"), "--out",
               str(tmp_path / "hf")]) == 2
  err = capsys.readouterr().err
  assert "Orbax checkpoint" in err and "not found" in err and "none" in err


def test_module_entry_point_help():
  out = subprocess.run([sys.executable, "-m", "z1_jax", "--help"], capture_output=True,
                       text=True, check=True).stdout
  for command in ("demo", "convert", "bench"):
    assert command in out


def test_data_stats_and_pack(tmp_path, capsys):
  import json
  assert main(["data", "stats", "--seq-len", "256", "--overlong", "drop"]) == 0
  stats = json.loads(capsys.readouterr().out)
  assert stats["examples"] == 12 and stats["kept"] + stats["dropped"] == 12
  assert 0 < stats["packing_efficiency"] <= 1
  out = tmp_path / "rows.jsonl"
  assert main(["data", "pack", "--seq-len", "1024", "--out", str(out)]) == 0
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  assert len(rows) == json.loads(capsys.readouterr().out)["rows"]
  assert sum(len(r["examples"]) for r in rows) == 12
  assert main(["data", "stats", "--dataset", str(tmp_path / "none.jsonl")]) == 2
  assert "dataset not found" in capsys.readouterr().err


def test_bench_commands_print_figure_and_reference(capsys):
  import json
  assert main(["bench", "data", "--examples", "2000", "--tokenize-examples", "20",
               "--json"]) == 0
  rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  impls = [r["impl"] for r in rows]
  assert "z1-jax best-fit" in impls and "next-fit (reference)" in impls
  assert rows[0]["packing_efficiency"] > 0.97
  assert main(["bench", "forward", "--preset", "tiny", "--seq-len", "16", "--repeats", "1",
               "--json"]) == 0
  rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert [r["impl"] for r in rows] == ["z1-jax", "hf-torch", "ratio z1-jax/hf-torch", "machine"]
  assert all(r["prefill_tokens_per_s"] > 0 and r["decode_step_ms"] > 0 for r in rows[:2])
  assert rows[-1]["cpus"] >= 1 and rows[-1]["cpu_isa"]
  assert main(["bench", "decode", "--preset", "tiny", "--batch", "4", "--mix", "4,32",
               "--requests", "8", "--prompt-len", "8", "--repeats", "1", "--json"]) == 0
  row = json.loads(capsys.readouterr().out.splitlines()[0])
  assert row["impl"] == "z1-jax engine" and row["requests"] == 8
  assert 0 < row["static_batch_useful_fraction"] <= 1 and row["mixed_over_all_longest"] > 0
  assert main(["bench", "decode", "--mix", "32,4"]) == 2
  assert "--mix 32,4: expected two lengths LO,HI with 0 < LO < HI" in capsys.readouterr().err
