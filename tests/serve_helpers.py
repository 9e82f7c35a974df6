"""A live `z1 serve` subprocess on a tiny random fp32 checkpoint with the Qwen tokenizer, for the
test modules that talk to a real server (the openai client, lm-eval)."""

import contextlib
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).parents[1]


@contextlib.contextmanager
def tiny_server(path: Path, *flags: str):
  """Saves the `tiny` preset to `path` and serves it with `flags`; yields {"url", "proc",
  "path", "log"} once it is ready; kills it on exit (no server outlives its module)."""
  import z1_jax
  from z1_jax.data.tokenizer import load_tokenizer
  z1_jax.save_hf(z1_jax.create_model(z1_jax.get_preset("tiny")), path, dtype="float32",
                 tokenizer=load_tokenizer())
  env = {**os.environ, "PYTHONPATH": str(ROOT), "XLA_FLAGS": ""}
  proc = subprocess.Popen(
      [sys.executable, "-m", "z1_jax.cli", "serve", "--hf", str(path), "--port", "0", *flags],
      stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
  try:
    lines, url = [], None
    deadline = time.time() + 120
    while url is None and time.time() < deadline:
      line = proc.stderr.readline()
      if not line:
        break
      lines.append(line)
      m = re.search(r"ready on (http://127\.0\.0\.1:\d+)", line)
      url = m.group(1) if m else None
    assert url, "server did not become ready:\n" + "".join(lines)
    threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True).start()
    yield {"url": url, "proc": proc, "path": path, "log": lines}
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
