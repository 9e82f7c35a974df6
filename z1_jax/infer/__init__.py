"""Inference: jitted prefill/decode steps over the KV cache (the budgeted sampler builds here)."""
