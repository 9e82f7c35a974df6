"""Checkpoints: HF safetensors in and out (`hf`), Orbax training state (`orbax_io`)."""

from z1_jax.checkpoint.hf import CheckpointError, load_hf, save_hf
