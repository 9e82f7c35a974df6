"""Multi-process start-up and the processes' shared notice board.

- `initialize`: the one place every command that uses devices calls (train, generate, sweep,
  convert, serve): `jax.distributed.initialize` on TPU pods (peers found from the environment)
  or with an explicit coordinator (CPU "pods": gloo collectives). `add_args` declares the flags
  that select it, the same on every command. JAX's preemption service stays off: it takes
  SIGTERM with a C handler that swallows every later SIGTERM and agrees on a step only from the
  step counters it was shown (`train/interrupt.py` does both itself, see there).
- `client()`, `unique_key`, `gather`: the distributed runtime's key-value store and barriers
  (JAX's coordination service, hosted by process 0), for waiting on and comparing across
  processes without a device collective (a gloo collective gives up after 30 s; a barrier here
  has the timeout its caller states).
"""

from __future__ import annotations

import os

from z1_jax.cli_args import non_negative_int, positive_int
from z1_jax.errors import Z1Error


def slice_hosts() -> int | None:
  """Hosts of the TPU slice this host belongs to, or None when not on a TPU VM / unknown:
  `TPU_WORKER_HOSTNAMES` or `TPU_ACCELERATOR_TYPE` (GKE and some images set them), else the
  `accelerator-type` attribute of the Cloud TPU VM's metadata (what `z1 launch` creates)."""
  from z1_jax.topology import accelerator, tpu_chips_on_host
  names = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  if names:
    return len([n for n in names.split(",") if n.strip()])
  if not tpu_chips_on_host():
    return None
  kind = os.environ.get("TPU_ACCELERATOR_TYPE", "")
  if not kind:
    try:
      from jax._src.clusters.cloud_tpu_cluster import get_metadata
      text, status = get_metadata("accelerator-type")
      kind = text.strip() if status == 200 else ""
    except Exception:  # noqa: BLE001 - no metadata server: not a Cloud TPU VM
      return None
  try:
    return accelerator(kind).hosts
  except Z1Error:
    return None


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
  """Call before any other JAX use. No-op for a single process on one host.

  On a TPU slice of several hosts (Cloud TPU VM or GKE) `jax.distributed.initialize()` finds
  the peers itself; the explicit flags are for everything else (CPU or GPU processes). A
  multi-host slice never runs single-process by accident: if the runtime then sees one
  process, this stops with a message."""
  import jax
  given = [coordinator is not None, num_processes is not None, process_id is not None]
  if any(given) and not all(given):
    raise Z1Error("--coordinator, --num-processes and --process-id go together")
  if coordinator is not None:
    if not 0 <= process_id < num_processes:
      raise Z1Error(f"--process-id {process_id}: expected 0..{num_processes - 1}")
    # CPU processes exchange collectives over gloo (no effect on TPU/GPU backends).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.config.update("jax_enable_preemption_service", False)
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)
    return
  hosts = slice_hosts()
  if hosts is not None and hosts > 1 or os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"):
    jax.config.update("jax_enable_preemption_service", False)
    jax.distributed.initialize()
    if hosts and jax.process_count() != hosts:
      raise Z1Error(f"this TPU slice has {hosts} TPU VMs (one JAX process each) but the JAX runtime sees "
                    f"{jax.process_count()} process(es): start the command on every worker "
                    "(`gcloud compute tpus tpu-vm ssh ... --worker=all`, as `z1 launch` does)")


def add_args(p) -> None:
  """`--coordinator/--num-processes/--process-id` on a command's parser."""
  p.add_argument("--coordinator", default=None,
                 help="multi-process: coordinator host:port (default: single process; TPU "
                      "pods find their peers without it)")
  p.add_argument("--num-processes", type=positive_int, default=None,
                 help="multi-process: number of processes (default: none)")
  p.add_argument("--process-id", type=non_negative_int, default=None,
                 help="multi-process: this process's index (default: none)")


# -- the key-value store and barriers ---------------------------------------------------------

def client():
  """The distributed runtime's client (key-value store, barriers), or None on one process."""
  import jax
  if jax.process_count() == 1:
    return None
  from jax._src import distributed as jax_distributed  # as Orbax reaches it: no public handle
  return jax_distributed.global_state.client


_uses: dict[str, int] = {}


def unique_key(name: str) -> str:
  """`z1/<name>/<n>` for the n-th use of `name` by this process. Every process makes the same
  calls in the same order, so the n-th use has the same key on all of them (a run trained twice
  in one process pair gets fresh keys)."""
  _uses[name] = _uses.get(name, 0) + 1
  return f"z1/{name}/{_uses[name]}"


def missing(error: Exception) -> bool:
  """Whether a key-value store error only says that the key is not there (yet)."""
  text = str(error)
  return "NOT_FOUND" in text or "DEADLINE_EXCEEDED" in text


def gather(name: str, value: str, timeout_s: float = 600.0) -> list[str]:
  """Every process's `value`, indexed by process: each posts its own, then waits at a barrier
  (at most `timeout_s`) for the others. Raises Z1Error naming the processes that did not post."""
  import jax
  c = client()
  if c is None:
    return [value]
  key, me, n = unique_key(name), jax.process_index(), jax.process_count()
  c.key_value_set(f"{key}/{me}", value)
  try:
    c.wait_at_barrier(f"{key}/all", int(timeout_s * 1000))
  except Exception as e:  # noqa: BLE001 - the store says why; name who is missing
    posted = {k.rsplit("/", 1)[1] for k, _ in c.key_value_dir_get(f"{key}/")}
    late = [p for p in range(n) if str(p) not in posted]
    raise Z1Error(f"{name}: process(es) {late} did not report within {timeout_s:g} s (this is "
                  f"process {me}): they are stuck or were started with other arguments "
                  f"({str(e).splitlines()[0][:200]})") from None
  values = dict((int(k.rsplit("/", 1)[1]), v) for k, v in c.key_value_dir_get(f"{key}/")
                if k.rsplit("/", 1)[1].isdigit())
  return [values[p] for p in range(n)]
