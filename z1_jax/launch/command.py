"""`z1 launch tpu|status|logs|stop|delete`: options (the work is in `tpu.py`)."""

from __future__ import annotations

import argparse

from z1_jax.cli_args import non_negative_int, positive_float, positive_int


def run(args) -> int:
  from z1_jax.launch.tpu import run as run_launch
  return run_launch(args)


def add_parser(sub) -> None:
  launch = sub.add_parser("launch", help="train on a Cloud TPU VM slice through gcloud")
  launch_sub = launch.add_subparsers(dest="action", required=True)
  l_tpu = launch_sub.add_parser(
      "tpu", help="plan, create or reuse the TPU VM, ship the code at a pinned commit, install "
      "it (tpu extra) and run `z1 train` on all workers; stream worker 0's log")
  l_tpu.add_argument("--accelerator", required=True,
                     help="Cloud TPU type: v4-32, v5e-16 (= v5litepod-16), v5p-64, v6e-8, ... (required)")
  l_tpu.add_argument("--config", required=True, help="training config file (TOML) to ship (required)")
  l_tpu.add_argument("--out", required=True,
                     help="run directory for `z1 train --out` on the workers: gs://bucket/path "
                          "(required on multi-host slices) or an absolute path")
  l_tpu.add_argument("overrides", nargs="*", metavar="key=value",
                     help="config overrides passed to `z1 train` on every worker")
  tier = l_tpu.add_mutually_exclusive_group()
  tier.add_argument("--spot", action="store_true", help="Spot capacity (preemptible)")
  tier.add_argument("--reserved", action="store_true", help="use the project's reservation")
  l_tpu.add_argument("--runtime-version", default=None,
                     help="TPU VM software version (default: per generation, e.g. "
                          "v2-alpha-tpuv5 for v5p)")
  l_tpu.add_argument("--commit", default="HEAD", help="git revision to ship (default HEAD)")
  l_tpu.add_argument("--allow-dirty", action="store_true",
                     help="launch although the checkout has uncommitted changes (not shipped)")
  l_tpu.add_argument("--code-uri", default=None,
                     help="gs://bucket/prefix to stage the code through (default: scp)")
  l_tpu.add_argument("--remote-python", default="3.11",
                     help="Python version of the workers' venv (default 3.11, via uv)")
  l_tpu.add_argument("--skip-plan", action="store_true",
                     help="launch even if the memory plan says the config does not fit")
  l_tpu.add_argument("--queue-timeout", type=positive_float, default=120.0,
                     help="minutes to wait for a queued resource to become ACTIVE (default 120)")
  l_tpu.add_argument("--no-follow", dest="follow", action="store_false",
                     help="do not stream worker 0's log after starting")
  l_status = launch_sub.add_parser(
      "status", help="TPU state and whether z1 train runs on each worker")
  l_logs = launch_sub.add_parser("logs", help="print (and follow) one worker's training log")
  l_logs.add_argument("--worker", type=non_negative_int, default=0,
                      help="worker index (default 0)")
  l_logs.add_argument("--lines", type=positive_int, default=200,
                      help="lines of history (default 200)")
  l_logs.add_argument("--no-follow", dest="follow", action="store_false", help="print and exit")
  l_stop = launch_sub.add_parser(
      "stop", help="send SIGINT to z1 train on every worker (keeps the VM)")
  l_delete = launch_sub.add_parser("delete", help="delete the TPU VM (or its queued resource)")
  for c in (l_tpu, l_status, l_logs, l_stop, l_delete):
    c.add_argument("--name", required=True, help="TPU VM (and queued resource) name (required)")
    c.add_argument("--zone", required=True, help="Cloud zone, e.g. us-east5-a (required)")
    c.add_argument("--project", default=None, help="GCP project (default: gcloud's own)")
    c.add_argument("--dry-run", action="store_true",
                   help="print every gcloud command instead of running it")
    c.set_defaults(fn=run)
  for c in (l_tpu, l_status, l_delete):
    c.add_argument("--queued", action=argparse.BooleanOptionalAction, default=None,
                   help="a queued resource (default: launch uses one for v5e/v5p/v6e; "
                        "status/delete look it up)")
