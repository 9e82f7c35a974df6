"""The trainer on a 2-process x 4-CPU-device "pod" (gloo, a coordinator on 127.0.0.1), with the
event injected at a known point of one process (`pod_worker.py`): a SIGTERM at start-up, during
compilation and during a save each stops every process after the same step, saved, and the
resumed pieces equal one uninterrupted run; a second signal stops every process at once; a
dead peer is an error naming it within seconds; process 0's tokenization is waited for on the
key-value store (slow with progress: waited; stalled or failed: an error naming process 0);
processes started with different configs are refused (issue 29)."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from train_helpers import TINY, arith_overrides, losses, write_arith

WORKER = str(Path(__file__).with_name("pod_worker.py"))
ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def arith(tmp_path_factory):
  return write_arith(tmp_path_factory.mktemp("data") / "arith.jsonl")


def _port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _pod(argv_of, timeout=400, **env_extra):
  """Starts 2 processes (argv_of(process_id, port)); returns [(returncode, stderr, seconds
  from the start until that process ended)]."""
  port = _port()
  env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
         **env_extra}
  start = time.monotonic()
  procs = [subprocess.Popen(argv_of(i, port), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True) for i in range(2)]
  ended = [None, None]
  try:
    while None in ended:
      if time.monotonic() - start > timeout:
        raise TimeoutError(f"the pod did not finish within {timeout} s")
      for i, p in enumerate(procs):
        if ended[i] is None and p.poll() is not None:
          ended[i] = time.monotonic() - start
      time.sleep(0.05)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  return [(p.returncode, p.stderr.read(), ended[i]) for i, p in enumerate(procs)]


def _worker(scenario, out, data):
  return lambda i, port: [sys.executable, WORKER, scenario, str(out), str(i), str(port),
                          str(data)]


def test_a_signal_at_start_up_in_compilation_and_in_a_save_stops_every_process(tmp_path, arith):
  results = _pod(_worker("preempt", tmp_path, arith))
  assert [rc for rc, _, _ in results] == [0, 0], results[0][1][-3000:] + results[1][1][-3000:]
  runs = [json.loads((tmp_path / f"summaries{i}.json").read_text()) for i in range(2)]
  assert runs[0] == runs[1]  # every process stopped after the same step
  first, start_up, compiling, saving, rest = runs[0]
  assert first["step"] == 2 and first["stopped_by"] is None
  # a resumed run stopped before its first step: that first step is run and saved
  assert start_up == {"step": 3, "resumed_from": 2, "last_checkpoint": 3, "stopped_by": "SIGTERM"}
  assert compiling == {"step": 4, "resumed_from": 3, "last_checkpoint": 4,
                       "stopped_by": "SIGTERM"}
  # during the save of step 6: the processes agree on the next step (or one more, when one of
  # them had already checked it), and save it
  assert saving["resumed_from"] == 4 and saving["stopped_by"] == "SIGTERM"
  assert saving["step"] in (7, 8) and saving["last_checkpoint"] == saving["step"]
  assert rest["resumed_from"] == saving["step"] and rest["step"] == 10
  assert "SIGTERM caught: stopping after the current step" in results[1][1]
  from z1_jax.config import load_config
  from z1_jax.model.sharding import make_mesh
  from z1_jax.train.loop import train
  over = arith_overrides(arith, **{"train.epochs": 3, "checkpoint.every_steps": 2,
                                   "train.max_steps": 10})
  train(load_config(TINY, over), tmp_path / "straight", make_mesh(2, 2, 2), False)
  np.testing.assert_allclose(losses(tmp_path / "run"), losses(tmp_path / "straight"), rtol=0,
                             atol=1e-5)


def test_a_second_signal_stops_every_process_at_once(tmp_path, arith):
  """Two SIGINTs on process 1 while it compiles: both processes exit 130 without waiting for
  an agreed step (before the fix they trained on and stopped at the next one)."""
  results = _pod(_worker("now", tmp_path, arith), timeout=200)
  assert [rc for rc, _, _ in results] == [130, 130], results[0][1][-3000:]
  assert "a second signal (SIGINT) on process 1; stopping now without saving" in results[1][1]
  assert ("process 1 stopped every process (a second signal (SIGINT) on process 1)"
          in results[0][1])
  assert not (tmp_path / "run" / "metrics.jsonl").exists() or losses(tmp_path / "run") == []


def test_a_dead_peer_is_an_error_naming_it(tmp_path, arith):
  """Process 1 is SIGKILLed in its save of step 4; process 0 (in a collective with it) stops
  with an error naming process 1 after train.peer_timeout_s = 3 s, not JAX's 100 s watchdog."""
  results = _pod(_worker("dead", tmp_path, arith), timeout=200)
  assert results[1][0] == -9
  rc, err, seconds = results[0]
  assert rc == 1, err[-3000:]
  assert "process 1 sent no heartbeat for 3 s (train.peer_timeout_s): it died or hangs" in err
  assert "the last checkpoint, step 2, is where a rerun resumes" in err
  assert seconds - results[1][2] < 20  # after process 1 died: the timeout, a poll, the exit


def test_process_0_tokenizes_for_the_pod_and_its_failure_is_named(tmp_path, arith):
  results = _pod(_worker("encode", tmp_path, arith), timeout=200)
  assert [rc for rc, _, _ in results] == [0, 0], results[1][1][-3000:]
  lead, other = (json.loads((tmp_path / f"encode{i}.json").read_text()) for i in range(2))
  # 8 s of work with a progress marker every second: waited for past the 5 s stall limit
  assert lead["progressing"]["from_cache"] is False and other["progressing"]["from_cache"]
  assert other["progressing"]["examples"] == lead["progressing"]["examples"] == 32
  assert other["progressing"]["seconds"] > 7.5
  # 8 s without a marker: the waiting process gives up after 5 s, naming process 0
  assert other["stalled"]["error"].startswith("process 0 has shown no progress tokenizing")
  assert other["stalled"]["seconds"] < 7.5 and "error" not in lead["stalled"]
  # process 0 fails: the other raises its error at once, naming process 0
  assert "response" in lead["failed"]["error"]
  assert other["failed"]["error"].startswith("process 0 failed while tokenizing")
  assert lead["failed"]["error"] in other["failed"]["error"]
  assert other["failed"]["seconds"] < 5


def test_processes_with_different_configs_are_refused(tmp_path, arith):
  """`train.peak_lr=0.3` on process 1 only: both exit 2 naming process 1 and the key, before
  anything is written (it used to train with process 0's value recorded)."""
  run = tmp_path / "run"

  def argv(i, port):
    extra = ["train.peak_lr=0.3"] if i == 1 else []
    return [sys.executable, "-m", "z1_jax", "train", "--config", str(TINY), "--out", str(run),
            *arith_overrides(arith, **{"train.max_steps": 2}), *extra, "--coordinator",
            f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)]

  results = _pod(argv, timeout=200, XLA_FLAGS="--xla_force_host_platform_device_count=4")
  for rc, err, _ in results:
    assert rc == 2, err[-2000:]
    assert "the processes do not run the same config" in err
    assert "process 1: train.peak_lr = 0.3 (process 0: 0.003)" in err
  assert not run.exists()
