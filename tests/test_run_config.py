"""Run config (TOML + dotted overrides) and `z1 train`'s refusals of bad input: each a clear
error naming the culprit, before anything compiles, with the output directory untouched."""

import jax
import pytest

from train_helpers import TINY
from z1_jax.cli import main
from z1_jax.config import ConfigError, load_config
from z1_jax.model.sharding import make_mesh
from z1_jax.train.loop import train


def test_overrides_types_and_defaults(tmp_path):
  cfg = load_config(TINY, ["train.peak_lr=2e-5", "train.max_steps=7", "model.scan_layers=true",
                           "data.dataset=/some/where/data.jsonl", "train.min_lr_ratio=0"])
  assert cfg.train.peak_lr == 2e-5 and cfg.train.max_steps == 7 and cfg.model.scan_layers
  assert cfg.data.dataset == "/some/where/data.jsonl"  # not TOML: taken as a string
  assert isinstance(cfg.train.min_lr_ratio, float)  # an int is a valid float
  assert cfg.train.global_batch == 4 and cfg.data.seq_len == 128  # from tiny.toml
  with pytest.raises(AttributeError):
    cfg.train.peak_lr = 1.0  # frozen


@pytest.mark.parametrize("override, culprit", [
    ("train.peak_rate=1e-5", "train.peak_rate"),
    ("trainer.peak_lr=1e-5", "[trainer]"),
    ("train.global_batch=8.5", "train.global_batch"),
    ("train.global_batch=\"8\"", "train.global_batch"),
    ("model.scan_layers=1", "model.scan_layers"),
    ("model.param_dtype=float64", "model.param_dtype"),
    ("train.grad_accum=3", "train.grad_accum"),
    ("mesh.data=0", "mesh.data"),
    ("train.peak_lr=-1", "train.peak_lr"),
    ("peak_lr=1", "section.key=value"),
    # nonsense optimizer values and seeds (issue 15): refused naming the key
    ("train.adam_b1=2.0", "train.adam_b1 = 2.0: expected 0 <= value < 1"),
    ("train.adam_b2=-1", "train.adam_b2 = -1.0: expected 0 <= value < 1"),
    ("train.max_grad_norm=nan", "train.max_grad_norm = nan: expected a finite number"),
    ("train.adam_eps=nan", "train.adam_eps = nan: expected a finite number"),
    ("train.adam_eps=0", "train.adam_eps = 0.0: expected a value > 0"),
    ("train.weight_decay=nan", "train.weight_decay = nan: expected a finite number"),
    ("train.peak_lr=inf", "train.peak_lr = inf: expected a finite number"),
    ("train.seed=-5", "train.seed = -5: expected 0 <= seed < 2"),
    ("train.profile_steps=\"15:10\"", "train.profile_steps = '15:10'"),
    ("train.profile_steps=\"10\"", "train.profile_steps = '10'"),
])
def test_bad_keys_and_values_name_the_key(override, culprit):
  with pytest.raises(ConfigError, match=culprit.replace("[", r"\[").replace("]", r"\]")):
    load_config(TINY, [override])


def test_unknown_key_in_file_names_it(tmp_path):
  bad = tmp_path / "bad.toml"
  bad.write_text(TINY.read_text().replace("[train]\n", "[train]\nlearning_rate = 1e-4\n"))
  with pytest.raises(ConfigError, match=r"bad.toml: unknown key train.learning_rate"):
    load_config(bad)


FITS_8 = ["mesh.data=4", "mesh.tensor=2"]  # the tests' 8 CPU devices, batch 4 over 4 shards


def _snapshot(path):
  return sorted((str(p.relative_to(path)), p.stat().st_mtime_ns, p.stat().st_size)
                for p in path.rglob("*"))


@pytest.mark.parametrize("extra, culprit", [
    (["train.warmup=3"], "train.warmup"),
    (["train.epochs=two"], "train.epochs"),
    (["train.global_batch=6", "mesh.tensor=1", "mesh.fsdp=2"], "not divisible by the mesh"),
    (["mesh.data=16", "mesh.tensor=1"], "[mesh] data=16"),
    (["model.preset=\"\"", "model.hf_checkpoint=/no/such/ckpt"], "/no/such/ckpt"),
])
def test_z1_train_refuses_bad_input(tmp_path, capsys, extra, culprit):
  out = tmp_path / "run"
  out.mkdir()
  (out / "keep.txt").write_text("mine")
  before = _snapshot(tmp_path)
  code = main(["train", "--config", str(TINY), "--out", str(tmp_path / "new"), *FITS_8, *extra])
  err = capsys.readouterr().err
  assert code == 2 and culprit in err and "Traceback" not in err, err
  assert _snapshot(tmp_path) == before and not (tmp_path / "new").exists()


def test_z1_train_refuses_foreign_out_dir_and_bad_flags(tmp_path, capsys):
  out = tmp_path / "run"
  out.mkdir()
  (out / "keep.txt").write_text("mine")
  before = _snapshot(tmp_path)
  assert main(["train", "--config", str(TINY), "--out", str(out)]) == 2
  assert "not a z1 train run" in capsys.readouterr().err
  assert main(["train", "--config", str(tmp_path / "missing.toml"), "--out", str(out)]) == 2
  assert "missing.toml" in capsys.readouterr().err
  with pytest.raises(SystemExit) as e:
    main(["train", "--config", str(TINY), "--out", str(out), "--num-processes", "0"])
  assert e.value.code == 2 and "--num-processes" in capsys.readouterr().err
  assert main(["train", "--config", str(TINY), "--out", str(out), "--coordinator", "h:1"]) == 2
  assert "go together" in capsys.readouterr().err
  assert _snapshot(tmp_path) == before


def test_resume_refuses_changed_settings_and_corrupt_checkpoint(tmp_path, capsys):
  run = tmp_path / "run"
  over = ["train.max_steps=1", "checkpoint.every_steps=1"]
  cfg = load_config(TINY, over)
  train(cfg, run, make_mesh(1, 1, 1, devices=jax.devices()[:1]), progress=False)
  before = _snapshot(tmp_path)
  assert main(["train", "--config", str(TINY), "--out", str(run), *over, *FITS_8,
               "train.peak_lr=1e-2"]) == 2
  assert "train.peak_lr" in capsys.readouterr().err
  params = run / "checkpoints" / "1" / "params"
  for f in params.rglob("*"):
    if f.is_file() and f.stat().st_size > 1000:
      f.write_bytes(b"\0" * 100)  # corrupt the array data
  before = _snapshot(tmp_path)
  assert main(["train", "--config", str(TINY), "--out", str(run), *over, *FITS_8,
               "train.max_steps=2"]) == 2
  err = capsys.readouterr().err
  assert "checkpoints/1" in err and "Traceback" not in err, err
  assert _snapshot(tmp_path) == before


def test_v5e_recipe_is_the_7b_recipe_with_one_row_per_chip():
  from pathlib import Path
  configs = Path(TINY).parent
  base = load_config(configs / "z1-qwen2.5-coder-7b.toml").to_dict()
  v5e = load_config(configs / "z1-qwen2.5-coder-7b-v5e-16.toml").to_dict()
  assert v5e["train"].pop("grad_accum") == 8 and base["train"].pop("grad_accum") == 4
  assert v5e == base


def test_the_run_config_imports_nothing_from_the_trainer():
  """`z1_jax.train` reads `z1_jax.config`; the config reads nothing back (issue 25: there was
  an import circle through `train.observe`). Checked in a fresh interpreter, validating a
  config that uses every check (the profile window included)."""
  import os
  import subprocess
  import sys
  from pathlib import Path
  root = str(Path(__file__).resolve().parents[1])
  code = ("import sys; from z1_jax.config import load_config; "
          "load_config(None, ['train.profile_steps=\"1:2\"', 'model.remat_policy=\"full\"']); "
          "print(sorted(m for m in sys.modules if m.startswith('z1_jax.train')))")
  res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": root})
  assert res.returncode == 0, res.stderr
  assert res.stdout.strip() == "[]"
