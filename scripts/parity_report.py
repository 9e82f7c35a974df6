"""Prints max |logit| differences of z1-jax against HF transformers (PyTorch, fp32) on the
tiny random configs the tests use, and bf16 vs fp32. Needs the `test` extra (torch).

usage: .venv/bin/python scripts/parity_report.py
"""

import os
import sys
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import z1_jax  # noqa: E402
from conftest import TINY_HF_CONFIGS, make_hf_model  # noqa: E402

for name in sorted(TINY_HF_CONFIGS):
  hf = make_hf_model(name)
  tokens = np.random.RandomState(0).randint(0, hf.config.vocab_size, (2, 64)).astype(np.int32)
  with torch.no_grad():
    ref = hf(torch.as_tensor(tokens, dtype=torch.long)).logits.numpy()
  with tempfile.TemporaryDirectory() as d:
    hf.save_pretrained(d)
    row = {}
    for label, kw in (("unrolled", {}), ("scan", {"scan_layers": True}),
                      ("mesh 2x2x2", {"mesh": z1_jax.make_mesh(2, 2, 2)})):
      out = np.asarray(z1_jax.load_hf(d, **kw)(jnp.asarray(tokens)))
      row[label] = float(np.abs(out - ref).max())
    bf16 = np.asarray(z1_jax.load_hf(d, dtype="bfloat16")(jnp.asarray(tokens)))
    row["bf16 rel"] = float(np.abs(bf16 - ref).max() / np.abs(ref).max())
  print(name.ljust(20), "  ".join(f"{k}={v:.2e}" for k, v in row.items()))
