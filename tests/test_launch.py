"""`z1 launch`: the gcloud commands per accelerator type (dry run), the real sequence against a
fake `gcloud` that records its calls, nothing run without gcloud, and bad input refused."""

import os
import shlex
import stat
import tarfile

import pytest

from z1_jax.cli import main

CONFIG = "configs/z1-qwen2.5-coder-7b.toml"
OUT = "gs://bucket/runs/z1-7b"
BASE = ["launch", "tpu", "--name", "z1-run", "--config", CONFIG, "--out", OUT, "--allow-dirty",
        "--skip-plan"]


def _dry(capsys, *extra):
  assert main([*BASE, "--dry-run", *extra]) == 0
  out = capsys.readouterr().out
  return [line for line in out.splitlines() if line.startswith("gcloud ")], out


def _script(argv):
  return next(a for a in argv if a.startswith("--command="))


@pytest.mark.parametrize("accelerator,zone,tier,create,header", [
    ("v4-32", "us-central2-b", [],
     "gcloud compute tpus tpu-vm create z1-run --zone=us-central2-b --accelerator-type=v4-32 "
     "--version=tpu-ubuntu2204-base", "v4-32 (16 chips, 4 workers)"),
    ("v5e-16", "us-east1-d", ["--spot"],
     "gcloud compute tpus queued-resources create z1-run --node-id=z1-run --zone=us-east1-d "
     "--accelerator-type=v5litepod-16 --runtime-version=v2-alpha-tpuv5-lite --spot",
     "v5litepod-16 (16 chips, 4 workers)"),  # 4-chip VMs (xpk chips_per_vm = 4)
    ("v5p-64", "us-east5-a", ["--reserved", "--project", "my-proj"],
     "gcloud compute tpus queued-resources create z1-run --node-id=z1-run --zone=us-east5-a "
     "--accelerator-type=v5p-64 --runtime-version=v2-alpha-tpuv5 --reserved --project=my-proj",
     "v5p-64 (32 chips, 8 workers)"),
    ("v6e-8", "europe-west4-a", ["--no-queued"],
     "gcloud compute tpus tpu-vm create z1-run --zone=europe-west4-a --accelerator-type=v6e-8 "
     "--version=v2-alpha-tpuv6e", "v6e-8 (8 chips, 1 worker)"),  # one 8-chip VM
])
def test_dry_run_commands_per_accelerator(capsys, accelerator, zone, tier, create, header):
  cmds, out = _dry(capsys, "--accelerator", accelerator, "--zone", zone, *tier,
                   "train.global_batch=256")
  assert create in cmds
  assert f"# z1 launch tpu: {header} as z1-run" in out
  verbs = [" ".join(shlex.split(c)[3:5]) for c in cmds]
  # describe (reuse check), create, [wait], ship, install, run, stream worker 0's log
  assert verbs[0].endswith("describe") and verbs[-4:] == ["tpu-vm scp", "tpu-vm ssh",
                                                          "tpu-vm ssh", "tpu-vm ssh"]
  scp, install, start, logs = (shlex.split(c) for c in cmds[-4:])
  assert "--worker=all" in scp and scp[6].startswith("z1-run:z1-jax-")
  assert scp[5].endswith(".tar.gz")
  assert "--worker=all" in install and '[tpu]"' in _script(install)
  assert "uv venv --python 3.11" in _script(install)
  assert "--worker=all" in start
  assert ("train --config .z1-launch/z1-qwen2.5-coder-7b.toml --out gs://bucket/runs/z1-7b "
          "train.global_batch=256 >" in _script(start))
  assert "--worker=0" in logs and "tail -n 200 -F" in _script(logs)
  assert "memory plan skipped" in out


def test_dry_run_gcs_staging_and_manage_commands(capsys):
  cmds, _ = _dry(capsys, "--accelerator", "v4-8", "--zone", "us-central2-b", "--code-uri",
                 "gs://bucket/code/", "--no-follow")
  assert any(c.startswith("gcloud storage cp ") and "gs://bucket/code/z1-jax-" in c for c in cmds)
  assert not any("tpu-vm scp" in c for c in cmds)
  assert "gcloud storage cp gs://bucket/code/z1-jax-" in _script(shlex.split(cmds[-2]))
  common = ["--name", "z1-run", "--zone", "us-east5-a", "--dry-run"]
  expected = {
      "status": "gcloud compute tpus queued-resources describe z1-run --zone=us-east5-a",
      "logs": "gcloud compute tpus tpu-vm ssh z1-run --zone=us-east5-a --worker=3",
      "stop": "gcloud compute tpus tpu-vm ssh z1-run --zone=us-east5-a --worker=all",
      "delete": "gcloud compute tpus queued-resources delete z1-run --zone=us-east5-a --force "
                "--quiet",
  }
  for action, line in expected.items():
    extra = {"logs": ["--worker", "3"], "status": ["--queued"], "delete": ["--queued"]}
    assert main(["launch", action, *common, *extra.get(action, [])]) == 0
    assert line in capsys.readouterr().out
  assert main(["launch", "delete", *common]) == 0
  assert ("gcloud compute tpus tpu-vm delete z1-run --zone=us-east5-a --quiet"
          in capsys.readouterr().out)


def test_nothing_runs_without_gcloud(tmp_path, monkeypatch, capsys):
  monkeypatch.setenv("PATH", str(tmp_path))  # no gcloud (and no git) anywhere on PATH
  for argv in ([*BASE, "--accelerator", "v5p-64", "--zone", "us-east5-a"],
               ["launch", "status", "--name", "z1-run", "--zone", "us-east5-a"],
               ["launch", "delete", "--name", "z1-run", "--zone", "us-east5-a"]):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "gcloud not found on PATH" in err and "--dry-run" in err and "Traceback" not in err


FAKE_GCLOUD = """#!/bin/bash
echo "$*" >> "$FAKE/calls"
case "$*" in
  *" describe "*) if [ -f "$FAKE/state" ]; then cat "$FAKE/state"; else exit 1; fi ;;
  *" create "*) echo "$FAKE_CREATED" > "$FAKE/state" ;;
  *"tpu-vm scp "*) cp "$5" "$FAKE/bundle.tar.gz" ;;
esac
"""


@pytest.fixture
def fake_gcloud(tmp_path, monkeypatch):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  exe = bin_dir / "gcloud"
  exe.write_text(FAKE_GCLOUD)
  exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
  monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
  monkeypatch.setenv("FAKE", str(tmp_path))
  return tmp_path


def _calls(fake):
  return [line.split()[:5] for line in (fake / "calls").read_text().splitlines()]


def test_launch_runs_the_sequence_and_ships_the_pinned_tree(fake_gcloud, monkeypatch, capsys):
  monkeypatch.setenv("FAKE_CREATED", "ACTIVE")
  assert main([*BASE, "--accelerator", "v5p-16", "--zone", "us-east5-a", "--no-follow"]) == 0
  calls = [" ".join(c[2:4]) for c in _calls(fake_gcloud)]
  assert calls == ["queued-resources describe", "queued-resources create",
                   "queued-resources describe", "tpu-vm scp",
                   "tpu-vm ssh", "tpu-vm ssh"]
  with tarfile.open(fake_gcloud / "bundle.tar.gz") as tar:
    names = set(tar.getnames())
  assert {"pyproject.toml", "z1_jax/cli.py", ".z1-launch/z1-qwen2.5-coder-7b.toml"} <= names
  assert "+ gcloud compute tpus tpu-vm ssh" in capsys.readouterr().out
  # A second launch reuses the ACTIVE resource: no create.
  (fake_gcloud / "calls").unlink()
  assert main([*BASE, "--accelerator", "v5p-16", "--zone", "us-east5-a", "--no-follow"]) == 0
  assert [" ".join(c[2:4]) for c in _calls(fake_gcloud)] == [
      "queued-resources describe", "tpu-vm scp", "tpu-vm ssh", "tpu-vm ssh"]


def test_launch_refuses_a_tpu_in_a_bad_state(fake_gcloud, capsys):
  (fake_gcloud / "state").write_text("PREEMPTED\n")
  assert main([*BASE, "--accelerator", "v4-32", "--zone", "us-central2-b", "--no-follow"]) == 2
  assert "exists in state PREEMPTED" in capsys.readouterr().err
  assert [" ".join(c[2:4]) for c in _calls(fake_gcloud)] == ["tpu-vm describe"]


@pytest.mark.parametrize("flag,value,message", [
    ("--name", "Z1_Run", "--name 'Z1_Run'"),
    ("--name", "run-", "--name 'run-'"),
    ("--zone", "uscentral2", "--zone 'uscentral2'"),
    ("--zone", "mars-east1-a", "'mars-east1' is not a Google Cloud region"),
    ("--zone", "us-central1-z", "--zone 'us-central1-z'"),
    ("--zone", "us-central2-b; rm -rf /", "--zone"),
    ("--accelerator", "v3-8", "--accelerator: unknown accelerator 'v3-8'"),
    ("--accelerator", "v5p-63", "--accelerator: unknown accelerator 'v5p-63'"),
    ("--config", "missing.toml", "--config missing.toml: file not found"),
    ("--code-uri", "/tmp/x", "--code-uri '/tmp/x'"),
    ("--out", "/data/run", "this slice has 8 workers"),
    ("--out", "gs://", "--out 'gs://'"),
])
def test_bad_input_exits_2_naming_the_flag(capsys, flag, value, message):
  args = {"--name": "z1-run", "--zone": "us-east5-a", "--accelerator": "v5p-64",
          "--config": CONFIG, "--out": OUT}
  args[flag] = value
  argv = ["launch", "tpu", "--allow-dirty", "--skip-plan", "--dry-run",
          *[x for kv in args.items() for x in kv]]
  assert main(argv) == 2
  captured = capsys.readouterr()
  assert message in captured.err and "Traceback" not in captured.err
  assert "gcloud compute" not in captured.out  # refused before any command


def test_bad_override_and_usage_errors(capsys):
  assert main([*BASE, "--accelerator", "v5p-64", "--zone", "us-east5-a", "--dry-run",
               "global_batch"]) == 2
  assert "override 'global_batch'" in capsys.readouterr().err
  with pytest.raises(SystemExit) as e:
    main(["launch", "logs", "--name", "z1-run", "--zone", "us-east5-a", "--worker", "-1"])
  assert e.value.code == 2 and "--worker" in capsys.readouterr().err
  with pytest.raises(SystemExit) as e:
    main([*BASE, "--accelerator", "v5p-64", "--zone", "us-east5-a", "--spot", "--reserved"])
  assert e.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_single_host_slice_takes_an_absolute_local_out(capsys):
  argv = [x if x != OUT else "/home/me/run" for x in BASE]
  assert main([*argv, "--accelerator", "v4-8", "--zone", "us-central2-b", "--dry-run"]) == 0
  assert "--out /home/me/run" in capsys.readouterr().out
  argv = [x if x != OUT else "runs/z1" for x in BASE]
  assert main([*argv, "--accelerator", "v4-8", "--zone", "us-central2-b", "--dry-run"]) == 2
  assert "absolute path" in capsys.readouterr().err


class _Plan:
  def __init__(self, fits):
    self.fits = fits

  def summary(self):
    return f"fits={self.fits} (stand-in plan)"


@pytest.mark.parametrize("fits", [True, False])
def test_plan_gate_refuses_a_config_that_does_not_fit(monkeypatch, capsys, fits):
  """The gate calls plan_train(cfg, accelerator) before any gcloud command (a stand-in plan
  here: the real one compiles the 7B step for the slice and is tested with the TPU plan)."""
  import sys
  import types
  seen = {}

  def plan_train(cfg, accelerator):
    seen["args"] = (cfg.model.preset, accelerator)
    return _Plan(fits)

  monkeypatch.setitem(sys.modules, "z1_jax.train.plan",
                      types.SimpleNamespace(plan_train=plan_train))
  argv = [x for x in BASE if x != "--skip-plan"]
  code = main([*argv, "--accelerator", "v5e-16", "--zone", "us-east1-d", "--dry-run"])
  captured = capsys.readouterr()
  assert seen["args"] == ("qwen2.5-coder-7b-instruct", "v5e-16")
  if fits:
    assert code == 0 and "memory plan for v5e-16: fits=True" in captured.out
  else:
    assert code == 2 and "does not fit v5e-16" in captured.err and "--skip-plan" in captured.err
    assert "gcloud compute" not in captured.out  # refused before creating anything
