"""Looking things up on the Hugging Face hub: say what before trying, honour HF_HUB_OFFLINE.

Every place that turns a name into a hub download (checkpoints, tokenizers, datasets,
benchmarks) prints `hub_message` to stderr first, so a slow or failing network is never a
silent wait, and its error suggests the local-path alternative.
"""

from __future__ import annotations

import os


def hub_offline() -> bool:
  """HF_HUB_OFFLINE=1 (as huggingface_hub reads it): only the local hub cache is used."""
  return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_message(kind: str, name: str) -> str:
  where = ("in the local hub cache only (HF_HUB_OFFLINE is set)" if hub_offline() else
           "on the Hugging Face hub (set HF_HUB_OFFLINE=1 to use only the local cache)")
  return f"z1: {name!r} is not a local path; looking up {kind} {name!r} {where}"


def check_reachable(kind: str, name: str, timeout_s: float = 5.0) -> None:
  """Announces the lookup on stderr; unless offline, fails within `timeout_s` when the hub's
  host cannot be reached (huggingface_hub would otherwise retry for tens of seconds)."""
  import socket
  import sys
  from urllib.parse import urlparse

  from z1_jax.errors import Z1Error
  print(hub_message(kind, name), file=sys.stderr, flush=True)
  if hub_offline() or any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy",
                                                      "ALL_PROXY", "all_proxy")):
    return  # a proxy decides reachability; offline mode never connects
  url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
  try:
    socket.create_connection((url.hostname, url.port or 443), timeout=timeout_s).close()
  except OSError as e:
    raise Z1Error(f"{name!r} is not a local path, and the Hugging Face hub ({url.hostname}) "
                  f"cannot be reached: {e}. Pass a local path instead, or set HF_HUB_OFFLINE=1 "
                  f"to use only the local hub cache") from None
