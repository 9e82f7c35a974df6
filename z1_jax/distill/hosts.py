"""What process 0 tells the other processes of a multi-host `z1 distill`, through the
distributed runtime's key-value store (not a device collective: gloo's first collective gives
up after 30 s, and process 0 may take longer to check the output directory, read the journal
and build the decontamination index, or to finish the last sandbox checks and write the report).

`from_process_0(key, compute)`: process 0 runs `compute()` and publishes its JSON result (or its
error); the others wait for it, up to `timeout_s`, and get the result (or a `Z1Error` naming
process 0's error). One process: `compute()` is simply called.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from z1_jax.errors import Z1Error


def _client():
  from jax._src import distributed  # the runtime's client: the KV store JAX's own helpers use
  client = distributed.global_state.client
  if client is None:
    raise Z1Error("several JAX processes but no distributed client: start every process with "
                  "--coordinator/--num-processes/--process-id (or on a TPU slice)")
  return client


def from_process_0(key: str, compute: Callable[[], tuple[Any, Any]],
                   timeout_s: float) -> tuple[Any, Any]:
  """(shared, local): `compute()` returns both on process 0, where `shared` (JSON) is published
  to the others; they get (shared, None)."""
  import jax
  if jax.process_count() == 1:
    return compute()
  client = _client()
  if jax.process_index() == 0:
    try:
      shared, local = compute()
    except BaseException as e:
      client.key_value_set(key, json.dumps({"error": f"{type(e).__name__}: {e}"}))
      raise
    client.key_value_set(key, json.dumps({"value": shared}))
    return shared, local
  try:
    text = client.blocking_key_value_get(key, int(timeout_s * 1000))
  except Exception as e:  # noqa: BLE001 - a timeout or a lost coordinator: say what we waited for
    raise Z1Error(f"process {jax.process_index()}: no word from process 0 on {key!r} within "
                  f"{timeout_s:.0f} s (--host-timeout); its log says why ({type(e).__name__}: "
                  f"{str(e).splitlines()[0] if str(e) else ''})") from None
  message = json.loads(text)
  if "error" in message:
    raise Z1Error(f"process 0 stopped ({key}): {message['error']}")
  return message["value"], None
