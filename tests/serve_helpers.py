"""A live `z1 serve` subprocess on a tiny random fp32 checkpoint with the Qwen tokenizer, for the
test modules that talk to a real server (the openai client, lm-eval)."""

import contextlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


@contextlib.contextmanager
def tiny_server(path: Path, *flags: str):
  """Saves the `tiny` preset to `path` and serves it with `flags`; yields {"url", "proc",
  "path", "log"} once it is ready; kills it on exit (no server outlives its module)."""
  import z1_jax
  from z1_jax.data.tokenizer import load_tokenizer
  from z1_jax.serve.command import ready_url
  z1_jax.save_hf(z1_jax.create_model(z1_jax.get_preset("tiny")), path, dtype="float32",
                 tokenizer=load_tokenizer())
  env = {**os.environ, "PYTHONPATH": str(ROOT), "XLA_FLAGS": ""}
  proc = subprocess.Popen(
      [sys.executable, "-m", "z1_jax.cli", "serve", "--hf", str(path), "--port", "0", *flags],
      stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
  try:
    lines = []
    url = ready_url(proc.stderr, lines)
    yield {"url": url, "proc": proc, "path": path, "log": lines}
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
