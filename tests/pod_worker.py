"""One process of a 2-process x 4-CPU-device "pod" (tests/test_pod.py): stopping, peers and the
shared tokenization, each with the event injected at a known point of process `PID`'s run.

usage: pod_worker.py SCENARIO OUT_DIR PID PORT DATA_JSONL

  preempt  train to step 2; then resumed runs to step 10, stopped by one SIGTERM at start-up
           (process 1, while reading data), during compilation (process 0) and during the save
           of step 6 (process 1); then the rest. Writes summaries{PID}.json.
  now      process 1 gets two SIGINTs while compiling: every process must exit 130 at once.
  dead     process 1 is SIGKILLed during its save of step 4: process 0 must exit 1 naming it.
  encode   process 0 tokenizes slowly with progress, then stalls, then fails; process 1 waits
           (giving up after 5 s without progress).
           Writes encode{PID}.json.
"""

import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
sys.path.insert(0, str(Path(__file__).parent))

scenario, out, pid, port, data = (sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4],
                                  Path(sys.argv[5]))

from z1_jax.distributed import initialize  # noqa: E402

initialize(f"127.0.0.1:{port}", 2, pid)

import jax  # noqa: E402

from train_helpers import TINY, arith_overrides  # noqa: E402
import z1_jax.train.loop as loop  # noqa: E402
from z1_jax.config import load_config  # noqa: E402
from z1_jax.model.sharding import make_mesh  # noqa: E402
from z1_jax.train.checkpoints import Checkpointer  # noqa: E402

assert jax.process_count() == 2


def cfg(**extra):
  base = {"train.epochs": 3, "checkpoint.every_steps": 2, "train.max_steps": 10}
  return load_config(TINY, arith_overrides(data, **{**base, **extra}))


def run(config, **kw):
  return loop.train(config, out / "run", make_mesh(2, 2, 2), progress=False, **kw)


def signal_self(sig, times=1):
  for _ in range(times):
    os.kill(os.getpid(), sig)


@contextlib.contextmanager
def patched(obj, name, replacement):
  original = getattr(obj, name)
  setattr(obj, name, replacement(original))
  try:
    yield
  finally:
    setattr(obj, name, original)


def at_start_up(original):  # load_packed: the tokenization and packing of the train split
  calls = []

  def hook(*a, **k):
    if not calls:  # the train split's (the held-out split's call follows)
      signal_self(signal.SIGTERM)
    calls.append(1)
    return original(*a, **k)
  return hook


def at_compile(sig, times):
  def replacement(original):  # entered right around the step's .compile()
    @contextlib.contextmanager
    def hook():
      signal_self(sig, times)
      with original():
        yield
    return hook
  return replacement


def in_save(step, sig):
  def replacement(original):
    def hook(self, at, *a, **k):
      if at == step:
        signal_self(sig)
      return original(self, at, *a, **k)
    return hook
  return replacement


if scenario == "preempt":
  summaries = [run(cfg(**{"train.max_steps": 2}))]
  with patched(loop, "load_packed", at_start_up) if pid == 1 else contextlib.nullcontext():
    summaries.append(run(cfg()))
  with (patched(loop, "_quiet_cache_warnings", at_compile(signal.SIGTERM, 1)) if pid == 0 else
        contextlib.nullcontext()):
    summaries.append(run(cfg()))
  with (patched(Checkpointer, "save", in_save(6, signal.SIGTERM)) if pid == 1 else
        contextlib.nullcontext()):
    summaries.append(run(cfg()))
  summaries.append(run(cfg()))
  (out / f"summaries{pid}.json").write_text(json.dumps(
      [{k: s.get(k) for k in ("step", "resumed_from", "last_checkpoint", "stopped_by")}
       for s in summaries]))

elif scenario == "now":
  with (patched(loop, "_quiet_cache_warnings", at_compile(signal.SIGINT, 2)) if pid == 1 else
        contextlib.nullcontext()):
    run(cfg())
  raise SystemExit("not stopped")

elif scenario == "dead":
  with (patched(Checkpointer, "save", in_save(4, signal.SIGKILL)) if pid == 1 else
        contextlib.nullcontext()):
    run(cfg(**{"train.peer_timeout_s": 3.0}))
  raise SystemExit("not stopped")

elif scenario == "encode":
  import z1_jax.data.encode as encode
  from z1_jax.data.encode import EncodeConfig, encode_shared
  from z1_jax.data.sources import DataError
  from train_helpers import tokenizer_dir
  encode.SHARED_STALL_TIMEOUT_S = 5.0
  results = {}

  def slow(progress_every):
    def replacement(original):
      def hook(cfg, cache_dir=None, tokenizer=None, progress=True, on_progress=None):
        for i in range(8):  # 8 s, with or without a progress marker every second
          if progress_every and on_progress is not None:
            on_progress(f"warming up {i}")
          time.sleep(1.0)
        return original(cfg, cache_dir, tokenizer, progress, on_progress)
      return hook
    return replacement

  small = str(tokenizer_dir(data))

  for name, every in (("progressing", True), ("stalled", False)):
    start = time.monotonic()
    try:
      with patched(encode, "encode_dataset", slow(every)) if pid == 0 else (
          contextlib.nullcontext()):
        got = encode_shared(EncodeConfig(dataset=str(data), tokenizer=small, system_prompt=""),
                            out / f"cache-{name}", progress=False)
      results[name] = {"from_cache": got.from_cache, "examples": len(got)}
    except DataError as e:
      results[name] = {"error": str(e)}
    results[name]["seconds"] = time.monotonic() - start
  bad = out / "bad.jsonl"
  if pid == 0:
    bad.write_text('{"question": "q"}\n')  # no response column
  start = time.monotonic()
  try:
    encode_shared(EncodeConfig(dataset=str(bad), tokenizer=small, system_prompt=""),
                  out / "cache-bad", progress=False)
    results["failed"] = {"error": None}
  except DataError as e:
    results["failed"] = {"error": str(e)}
  results["failed"]["seconds"] = time.monotonic() - start
  (out / f"encode{pid}.json").write_text(json.dumps(results))
