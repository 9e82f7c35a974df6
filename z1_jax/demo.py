"""`z1 demo`: the whole checkpoint path on a CPU with built-in defaults, no downloads.

Today it builds a tiny random Qwen2 (real Qwen2.5 vocabulary and tokenizer), exports it as a HF
checkpoint, converts HF -> Orbax -> HF on a different mesh, checks the tensors come back
bit-identical and the logits equal, and greedily decodes from the Z1 prompt. The later demo
issue extends it to train -> infer -> eval.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from z1_jax.checkpoint.hf import load_hf, save_hf
from z1_jax.checkpoint.orbax_io import load_params, save_params
from z1_jax.data.format import render_prompt
from z1_jax.data.tokenizer import load_tokenizer
from z1_jax.infer.decode import greedy_generate
from z1_jax.model.config import get_preset
from z1_jax.model.qwen2 import create_model
from z1_jax.model.sharding import make_mesh
from z1_jax.outputs import check_output_dir


def _step(name: str, start: float) -> None:
  print(f"[demo] {name} ({time.perf_counter() - start:.1f}s)", flush=True)


# What the demo writes under `--out`: a directory holding only these is a previous demo output.
DEMO_OUTPUTS = ("hf_a", "hf_b", "orbax")


def run_demo(out: str | None = None, overwrite: bool = False) -> int:
  from safetensors.numpy import load_file  # fp32 tensors: the numpy reader suffices

  if out is not None:
    out = check_output_dir(out, "--out", overwrite, what="demo output",
                           is_previous=lambda p: {e.name for e in p.iterdir()} <= set(DEMO_OUTPUTS))
    for name in DEMO_OUTPUTS:  # replaced whole: Orbax would keep an old step 0
      shutil.rmtree(out / name, ignore_errors=True)
  start = time.perf_counter()
  with tempfile.TemporaryDirectory() as tmp:
    root = Path(out or tmp)
    root.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer()
    model = create_model(get_preset("tiny"), seed=0)
    _step(f"created tiny Qwen2 ({model.cfg.num_params():,} params) on {jax.default_backend()}",
          start)
    hf_a = save_hf(model, root / "hf_a", dtype="float32", tokenizer=tokenizer, overwrite=True)
    _step(f"exported HF checkpoint -> {hf_a}", start)
    mesh = make_mesh(-1, 1, 1)
    save_params(load_hf(hf_a, mesh=mesh), root / "orbax")
    _step(f"HF -> Orbax on mesh {dict(mesh.shape)} -> {root / 'orbax'}", start)
    restored = load_params(root / "orbax")
    hf_b = save_hf(restored, root / "hf_b", dtype="float32", tokenizer=tokenizer, overwrite=True)
    _step(f"Orbax -> HF on one device -> {hf_b}", start)

    a, b = load_file(hf_a / "model.safetensors"), load_file(hf_b / "model.safetensors")
    identical = a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    ids = tokenizer(render_prompt("Write hello world in Python."))["input_ids"]
    tokens = jnp.asarray([ids], jnp.int32)
    logit_diff = float(jnp.abs(model(tokens) - restored(tokens)).max())
    generated = greedy_generate(restored, [ids], 8)[0]
    summary = {"tensors_bit_identical": identical, "max_logit_diff": logit_diff,
               "greedy_tokens": generated, "greedy_text": tokenizer.decode(generated)}
    print(json.dumps(summary, indent=2))
    _step("done", start)
    return 0 if identical and logit_diff == 0.0 else 1
