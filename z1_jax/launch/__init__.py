"""Launching z1-jax runs on cloud hardware (`z1 launch`). Today: Cloud TPU VMs via `gcloud`."""
