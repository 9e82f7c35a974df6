"""Multi-process start-up, the one place every command that uses devices calls (train, generate,
sweep, convert, serve): `jax.distributed.initialize` on TPU pods (peers found from the
environment) or with an explicit coordinator (CPU "pods": gloo collectives). `add_args` declares
the flags that select it, the same on every command."""

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
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)
    return
  hosts = slice_hosts()
  if hosts is not None and hosts > 1 or os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"):
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
