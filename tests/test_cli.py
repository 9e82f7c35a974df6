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
  assert "Orbax checkpoint directory not found" in capsys.readouterr().err


def test_module_entry_point_help():
  out = subprocess.run([sys.executable, "-m", "z1_jax", "--help"], capture_output=True,
                       text=True, check=True).stdout
  for command in ("demo", "convert", "bench"):
    assert command in out
