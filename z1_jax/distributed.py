"""Multi-process start-up, the one place every command that uses devices calls (train, generate,
sweep, convert, serve): `jax.distributed.initialize` on TPU pods (peers found from the
environment) or with an explicit coordinator (CPU "pods": gloo collectives). `add_args` declares
the flags that select it, the same on every command."""

from __future__ import annotations

import os

from z1_jax.cli_args import non_negative_int, positive_int
from z1_jax.errors import Z1Error


def _on_tpu_pod() -> bool:
  hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  return "," in hosts or bool(os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"))


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
  """Call before any other JAX use. No-op for a single process on one host."""
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
  elif _on_tpu_pod():
    jax.distributed.initialize()


def add_args(p) -> None:
  """`--coordinator/--num-processes/--process-id` on a command's parser."""
  p.add_argument("--coordinator", default=None,
                 help="multi-process: coordinator host:port (default: single process; TPU "
                      "pods find their peers without it)")
  p.add_argument("--num-processes", type=positive_int, default=None,
                 help="multi-process: number of processes (default: none)")
  p.add_argument("--process-id", type=non_negative_int, default=None,
                 help="multi-process: this process's index (default: none)")
