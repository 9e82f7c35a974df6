"""`z1 launch`: a z1-jax training run on a Cloud TPU VM slice, driven by the `gcloud` CLI.

`launch tpu` does, in order:
  1. plans the config for the accelerator (`z1_jax.train.plan.plan_train`) and refuses a
     config that does not fit (`--skip-plan` overrides);
  2. reuses the TPU VM if it exists, else creates it: as a queued resource (the way Cloud TPU
     hands out v5e/v5p/v6e slices; default for those) or directly (`tpu-vm create`, default for
     v4), on demand, `--spot` or `--reserved`;
  3. ships the code at one pinned commit (`git archive`, plus the config file) to every worker,
     by `scp` or through a `gs://` staging URI;
  4. installs it with the `tpu` extra into a venv on every worker (uv provides Python >= 3.11,
     which the Ubuntu 22.04 TPU images lack);
  5. starts `z1 train --config FILE [key=value ...]` detached on all workers (same arguments
     everywhere; JAX finds its peers on a TPU VM slice by itself);
  6. streams worker 0's log (Ctrl-C stops the streaming, not the run).
Every remote step is one gcloud command; `--dry-run` prints them (and the local steps as
comments) instead of running anything. Without `gcloud` on PATH nothing runs.
"""

from __future__ import annotations

import dataclasses
import io
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from z1_jax.errors import Z1Error

# Everything on the workers lives under $HOME/z1-jax: one directory per shipped commit, one
# venv, the run's log and pid files.
REMOTE_ROOT = "$HOME/z1-jax"
REMOTE_VENV = f"{REMOTE_ROOT}/venv"
REMOTE_LOG = f"{REMOTE_ROOT}/train.log"
REMOTE_PID = f"{REMOTE_ROOT}/train.pid"
CONFIG_DIR = ".z1-launch"  # where the config file sits inside the shipped tree

# gcloud's spelling of a generation in --accelerator-type (v5e slices are "v5litepod-N"), the
# Cloud TPU software version (TPU VM image) per generation, and the generations Cloud TPU hands
# out through queued resources.
GCLOUD_FAMILY = {"v5e": "v5litepod"}
RUNTIME_VERSIONS = {"v4": "tpu-ubuntu2204-base", "v5e": "v2-alpha-tpuv5-lite",
                    "v5p": "v2-alpha-tpuv5", "v6e": "v2-alpha-tpuv6e"}
QUEUED_BY_DEFAULT = ("v5e", "v5p", "v6e")

_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_ZONE = re.compile(r"^([a-z]+-[a-z]+[0-9]+)-([a-f])$")
# Google Cloud's regions (cloud.google.com/compute/docs/regions-zones; us-central2 is the v4
# TPU region). A zone is REGION-a..f; which zones hold which TPU generation changes over time,
# so gcloud has the last word on that; a zone outside every region is refused here.
CLOUD_REGIONS = frozenset("""
    africa-south1 asia-east1 asia-east2 asia-northeast1 asia-northeast2 asia-northeast3
    asia-south1 asia-south2 asia-southeast1 asia-southeast2 australia-southeast1
    australia-southeast2 europe-central2 europe-north1 europe-north2 europe-southwest1
    europe-west1 europe-west2 europe-west3 europe-west4 europe-west6 europe-west8 europe-west9
    europe-west10 europe-west12 me-central1 me-central2 me-west1 northamerica-northeast1
    northamerica-northeast2 northamerica-south1 southamerica-east1 southamerica-west1
    us-central1 us-central2 us-east1 us-east4 us-east5 us-south1 us-west1 us-west2 us-west3
    us-west4""".split())
_OVERRIDE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*=")


class LaunchError(Z1Error):
  """A launch step that cannot go on: bad name/zone/accelerator, no gcloud, a failed command."""


# ----------------------------------------------------------------------------- validation


def check_name(name: str) -> str:
  if not _NAME.match(name):
    raise LaunchError(f"--name {name!r}: a TPU name is 1-63 lowercase letters, digits or "
                      "hyphens, starting with a letter and not ending with a hyphen")
  return name


def check_zone(zone: str) -> str:
  m = _ZONE.match(zone)
  if not m:
    raise LaunchError(f"--zone {zone!r}: expected a Cloud zone such as us-central2-b, "
                      "europe-west4-a or us-east5-a")
  if m.group(1) not in CLOUD_REGIONS:
    raise LaunchError(f"--zone {zone!r}: {m.group(1)!r} is not a Google Cloud region; Cloud TPU "
                      "zones include us-central2-b (v4), us-east5-a (v5p), us-west4-a (v5e), "
                      "us-east1-d and europe-west4-a (v6e)")
  return zone


DATA_KEYS = ("dataset", "eval_dataset")  # RunConfig.data fields naming an input


def check_datasets(config: str, overrides: list[str], root: Path, sha: str, note) -> None:
  """Refuses a dataset that is a file on this machine only: the workers get the shipped commit
  and the config, not local files. A path in the commit, a gs:// URI or a hub id is fine; an
  absolute path that does not exist here is assumed to be on the workers (said so)."""
  from z1_jax.config import load_config
  data = load_config(config, overrides).data
  for key in DATA_KEYS:
    value = getattr(data, key, "") or ""
    if not value or value.startswith("gs://"):
      continue
    local = Path(value).expanduser()
    if not local.is_absolute() and _git(root, "ls-tree", "--name-only", sha, "--",
                                        value.rstrip("/")).strip():
      continue  # shipped with the commit; the trainer runs in the shipped tree
    if local.exists():
      raise LaunchError(f"data.{key}={value}: a path on this machine, which the workers do not "
                        "have (only the commit and the config are shipped); copy it to a gs:// "
                        "bucket and pass that URI, or commit it to the repository")
    if value.startswith(("/", "~", "./", "../")):
      note(f"data.{key}={value}: not on this machine; it must exist on every worker")


def accelerator_type(name: str):
  """`v5e-16` -> (`v5litepod-16`, the `z1_jax.topology.Accelerator`): the type as gcloud spells
  it, and the slice (generation, chips, hosts) from the one accelerator table."""
  from z1_jax.topology import accelerator
  try:
    acc = accelerator(name)
  except Z1Error as e:
    raise LaunchError(f"--accelerator: {e}") from None
  gen = acc.generation.name
  return f"{GCLOUD_FAMILY.get(gen, gen)}-{acc.name.split('-')[1]}", acc


def check_out(out: str, hosts: int) -> str:
  """The run directory every worker passes to `z1 train --out`: a gs:// URI (shared by all
  workers, as Orbax multi-host checkpoints need) or, on a one-host slice, an absolute path."""
  if out.startswith("gs://"):
    if len(out) <= len("gs://") or out[5] == "/":
      raise LaunchError(f"--out {out!r}: expected gs://bucket/path")
    return out
  if hosts > 1:
    raise LaunchError(f"--out {out!r}: this slice has {hosts} workers, which must all write "
                      "the same checkpoint directory: give a gs://bucket/path")
  if not out.startswith("/"):
    raise LaunchError(f"--out {out!r}: expected a gs://bucket/path or an absolute path on the "
                      "worker (a relative one would depend on the shipped commit's directory)")
  return out


def check_overrides(overrides: list[str]) -> list[str]:
  for o in overrides:
    if not _OVERRIDE.match(o):
      raise LaunchError(f"override {o!r}: expected key=value with a dotted key, e.g. "
                        "train.global_batch=256")
  return overrides


# ----------------------------------------------------------------------------- running gcloud


class Gcloud:
  """Runs (or, dry, prints) gcloud commands. Every command is echoed as a shell line."""

  def __init__(self, project: str | None, dry_run: bool, out=None):
    self.project, self.dry_run = project, dry_run
    self.out = out or sys.stdout
    self.exe = None
    if not dry_run:
      self.exe = shutil.which("gcloud")
      if self.exe is None:
        raise LaunchError("gcloud not found on PATH: install the Google Cloud CLI "
                          "(https://cloud.google.com/sdk/docs/install) and run `gcloud auth "
                          "login`, or pass --dry-run to print the commands instead")

  def argv(self, *args: str) -> list[str]:
    return ["gcloud", *args, *([f"--project={self.project}"] if self.project else [])]

  def note(self, text: str) -> None:
    print(f"# {text}", file=self.out, flush=True)

  def __call__(self, *args: str, check: bool = True, capture: bool = False):
    """Runs one command. Returns (returncode, stdout) or None when dry."""
    argv = self.argv(*args)
    print(shlex.join(argv) if self.dry_run else f"+ {shlex.join(argv)}", file=self.out,
          flush=True)
    if self.dry_run:
      return None
    proc = subprocess.run([self.exe, *argv[1:]], text=True,
                          stdout=subprocess.PIPE if capture else None)
    if check and proc.returncode != 0:
      raise LaunchError(f"gcloud failed (exit {proc.returncode}): {shlex.join(argv)}")
    return proc.returncode, (proc.stdout or "").strip()


@dataclasses.dataclass(frozen=True)
class Tpu:
  name: str
  zone: str

  def zone_flag(self) -> str:
    return f"--zone={self.zone}"

  def ssh(self, g: Gcloud, worker: str, script: str, check: bool = True):
    return g("compute", "tpus", "tpu-vm", "ssh", self.name, self.zone_flag(), f"--worker={worker}",
             f"--command={script}", check=check)

  def describe(self, g: Gcloud, queued: bool):
    if queued:
      return g("compute", "tpus", "queued-resources", "describe", self.name, self.zone_flag(),
               "--format=value(state.state)", check=False, capture=True)
    return g("compute", "tpus", "tpu-vm", "describe", self.name, self.zone_flag(),
             "--format=value(state)", check=False, capture=True)


# ----------------------------------------------------------------------------- plan gate


def plan_gate(config: str, overrides: list[str], accelerator: str, skip: bool, note) -> None:
  """Refuses a config whose training state does not fit the accelerator's memory."""
  if skip:
    note("memory plan skipped (--skip-plan)")
    return
  try:
    from z1_jax.config import load_config
    from z1_jax.train.plan import plan_train
  except ImportError as e:
    raise LaunchError(f"the memory plan (z1_jax.train.plan) is not available in this install "
                      f"({e}); pass --skip-plan to launch without it") from None
  cfg = load_config(config, overrides)
  plan = plan_train(cfg, accelerator)
  for line in f"memory plan for {accelerator}: {plan.summary()}".splitlines():
    note(line)
  if not plan.fits:
    raise LaunchError(f"--config {config} does not fit {accelerator} (see the plan above): "
                      "change the mesh, batch, remat or accelerator, or pass --skip-plan")


# ----------------------------------------------------------------------------- code bundle


def repo_root() -> Path:
  return Path(__file__).resolve().parents[2]


def _git(root: Path, *args: str) -> str:
  proc = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)
  if proc.returncode != 0:
    raise LaunchError(f"git {' '.join(args)} failed in {root}: {proc.stderr.strip()}")
  return proc.stdout.strip()


def pinned_commit(root: Path, rev: str, allow_dirty: bool) -> str:
  if shutil.which("git") is None or not (root / ".git").exists():
    raise LaunchError(f"{root} is not a git checkout: z1 launch ships the code at a pinned "
                      "commit, so run it from a clone of z1-jax")
  sha = _git(root, "rev-parse", "--verify", f"{rev}^{{commit}}")
  if not allow_dirty and _git(root, "status", "--porcelain", "--untracked-files=no"):
    raise LaunchError(f"{root} has uncommitted changes, which would not be shipped (the "
                      f"workers get commit {sha[:12]}): commit them, or pass --allow-dirty")
  return sha


def build_bundle(root: Path, sha: str, config: Path, dest: Path) -> Path:
  """A .tar.gz of the tree at `sha` plus the config at CONFIG_DIR/<name>."""
  tree = subprocess.run(["git", "-C", str(root), "archive", "--format=tar", sha],
                        capture_output=True, check=True).stdout
  with tarfile.open(dest, "w:gz") as out, tarfile.open(fileobj=io.BytesIO(tree)) as src:
    for member in src.getmembers():
      out.addfile(member, src.extractfile(member) if member.isfile() else None)
    out.add(config, arcname=f"{CONFIG_DIR}/{config.name}")
  return dest


# ----------------------------------------------------------------------------- remote scripts


def install_script(sha: str, bundle: str, fetch: str | None, python: str) -> str:
  """Unpacks the bundle into REMOTE_ROOT/<sha> and installs it (with the tpu extra)."""
  tree = f"{REMOTE_ROOT}/{sha[:12]}"
  lines = [
      "set -euo pipefail",
      f"mkdir -p {REMOTE_ROOT}",
      *([fetch] if fetch else []),
      f'rm -rf "{tree}.tmp" && mkdir -p "{tree}.tmp"',
      f'tar -xzf "$HOME/{bundle}" -C "{tree}.tmp"',
      f'rm -rf "{tree}" && mv "{tree}.tmp" "{tree}"',
      'command -v uv >/dev/null || [ -x "$HOME/.local/bin/uv" ] || '
      "(curl -LsSf https://astral.sh/uv/install.sh | sh)",
      'export PATH="$HOME/.local/bin:$PATH"',
      f'[ -x "{REMOTE_VENV}/bin/python" ] || uv venv --python {python} "{REMOTE_VENV}"',
      f'uv pip install --python "{REMOTE_VENV}/bin/python" "{tree}[tpu]"',
      f'echo "$(hostname): installed z1-jax {sha[:12]}"',
  ]
  return "; ".join(lines)  # one line: every printed gcloud command is one line


def run_script(sha: str, config_name: str, out: str, overrides: list[str]) -> str:
  """Starts `z1 train` detached (survives the ssh session), refusing to start a second one."""
  train = shlex.join([f"{CONFIG_DIR}/{config_name}", "--out", out, *overrides])
  lines = [
      "set -euo pipefail",
      f'cd "{REMOTE_ROOT}/{sha[:12]}"',
      f'if [ -f "{REMOTE_PID}" ] && kill -0 "$(cat "{REMOTE_PID}")" 2>/dev/null; then '
      'echo "$(hostname): z1 train is already running; z1 launch stop first" >&2; exit 1; fi',
      f'if [ -f "{REMOTE_LOG}" ]; then mv "{REMOTE_LOG}" "{REMOTE_LOG}.$(date +%s)"; fi',
      # setsid: the trainer leads its own process group, which `stop` signals as a whole. A
      # background job inherits SIGINT as ignored; `z1` installs its own handler at start
      # (z1_jax.signals), so the stop script's SIGINT reaches it anyway.
      f'nohup setsid "{REMOTE_VENV}/bin/z1" train --config {train} > "{REMOTE_LOG}" 2>&1 '
      f'< /dev/null & echo $! > "{REMOTE_PID}"',
      f'echo "$(hostname): started z1 train (pid $(cat "{REMOTE_PID}"))"',
  ]
  return "; ".join(lines)  # one line: every printed gcloud command is one line


def _running(then: str, otherwise: str) -> str:
  return (f'if [ -f "{REMOTE_PID}" ] && kill -0 "$(cat "{REMOTE_PID}")" 2>/dev/null; '
          f"then {then}; else {otherwise}; fi")


STATUS_SCRIPT = (_running('echo "$(hostname): z1 train running (pid $(cat "' + REMOTE_PID + '"))"',
                          'echo "$(hostname): z1 train not running"')
                 + f'; tail -n 2 "{REMOTE_LOG}" 2>/dev/null || true')
# How long `stop` waits for the trainer to exit after SIGINT (it finishes the step and saves).
STOP_WAIT_S = 900
_ALIVE = ('{ kill -0 "$pid" 2>/dev/null && '
          '[ "$(ps -o stat= -p "$pid" 2>/dev/null | cut -c1)" != Z ]; }')  # a zombie has exited
# SIGINT to the trainer's process group (the trainer handles it like Ctrl-C: every worker stops
# after the same step and saves it), then wait until it has exited: "stopped" is printed only
# then; still running after STOP_WAIT_S is exit 1. A second signal to any worker stops every
# worker at once without saving (train/interrupt.py; tests/test_pod.py runs it on 2 processes),
# which is what running stop again, or kill -TERM on one worker, does.
STOP_SCRIPT = _running(
    f'pid="$(cat "{REMOTE_PID}")"; kill -INT -- "-$pid" 2>/dev/null || kill -INT "$pid"; '
    'echo "$(hostname): sent SIGINT to z1 train (pid $pid); waiting for it to exit"; '
    f'i=0; while {_ALIVE} && [ "$i" -lt {STOP_WAIT_S} ]; do sleep 1; i=$((i+1)); done; '
    f'if {_ALIVE}; then echo "$(hostname): z1 train (pid $pid) is still running after '
    f'{STOP_WAIT_S}s; run z1 launch stop again (or kill -TERM $pid): a second signal stops '
    'every worker at once, without saving this step" >&2; exit 1; fi; '
    f'rm -f "{REMOTE_PID}"; echo "$(hostname): z1 train stopped"',
    'echo "$(hostname): z1 train not running"')


def logs_script(lines: int, follow: bool) -> str:
  return f'tail -n {lines}{" -F" if follow else ""} "{REMOTE_LOG}"'


# ----------------------------------------------------------------------------- commands


def _wait_active(g: Gcloud, tpu: Tpu, timeout_min: float, poll_s: float = 30.0) -> None:
  if g.dry_run:
    tpu.describe(g, queued=True)
    g.note("repeated every 30 s until it prints ACTIVE")
    return
  deadline = time.monotonic() + timeout_min * 60
  while True:
    _, state = tpu.describe(g, queued=True)
    if state == "ACTIVE":
      return
    if state in ("FAILED", "SUSPENDED"):
      raise LaunchError(f"queued resource {tpu.name} is {state}: see `gcloud compute tpus "
                        f"queued-resources describe {tpu.name} {tpu.zone_flag()}`")
    if time.monotonic() > deadline:
      raise LaunchError(f"queued resource {tpu.name} still {state or 'absent'} after "
                        f"{timeout_min:g} min; it stays queued (z1 launch status / delete)")
    print(f"# {tpu.name}: {state or 'not visible yet'}; waiting", file=g.out, flush=True)
    time.sleep(poll_s)


def ensure_tpu(g: Gcloud, tpu: Tpu, accelerator: str, generation: str, args) -> None:
  """Reuses the TPU VM if it exists (and is usable), else creates it."""
  queued = args.queued if args.queued is not None else generation in QUEUED_BY_DEFAULT
  runtime = args.runtime_version or RUNTIME_VERSIONS[generation]
  found = tpu.describe(g, queued)
  if found is None:
    g.note(f"dry run: assuming {tpu.name} does not exist yet")
  elif found[0] == 0 and found[1]:
    state = found[1]
    if state in ("READY", "ACTIVE"):
      print(f"# reusing {tpu.name} ({state})", file=g.out, flush=True)
      return
    if queued and state in ("WAITING_FOR_RESOURCES", "PROVISIONING", "ACCEPTED", "CREATING"):
      _wait_active(g, tpu, args.queue_timeout)
      return
    raise LaunchError(f"{tpu.name} exists in state {state}: z1 launch delete it, or pick "
                      "another --name")
  tier = ["--spot"] if args.spot else ["--reserved"] if args.reserved else []
  if queued:
    g("compute", "tpus", "queued-resources", "create", tpu.name, f"--node-id={tpu.name}",
      tpu.zone_flag(), f"--accelerator-type={accelerator}", f"--runtime-version={runtime}",
      *tier)
    _wait_active(g, tpu, args.queue_timeout)
  else:
    g("compute", "tpus", "tpu-vm", "create", tpu.name, tpu.zone_flag(),
      f"--accelerator-type={accelerator}", f"--version={runtime}", *tier)


def launch_tpu(args, out=None) -> int:
  tpu = Tpu(check_name(args.name), check_zone(args.zone))
  accelerator, acc = accelerator_type(args.accelerator)
  overrides = check_overrides(list(args.overrides))
  config = Path(args.config)
  if not config.is_file():
    raise LaunchError(f"--config {config}: file not found")
  check_out(args.out, acc.hosts)
  if args.code_uri is not None and not args.code_uri.startswith("gs://"):
    raise LaunchError(f"--code-uri {args.code_uri!r}: expected a gs://bucket/prefix URI")
  g = Gcloud(args.project, args.dry_run, out)
  root = repo_root()
  sha = pinned_commit(root, args.commit, args.allow_dirty)
  workers = f"{acc.hosts} worker{'s' if acc.hosts > 1 else ''}"  # one TPU VM, one process each
  g.note(f"z1 launch tpu: {accelerator} ({acc.chips} chips, {workers}) as "
         f"{tpu.name} in {tpu.zone}, code at {sha[:12]}")
  check_datasets(str(config), overrides, root, sha, g.note)
  plan_gate(str(config), overrides, acc.name, args.skip_plan, g.note)
  ensure_tpu(g, tpu, accelerator, acc.generation.name, args)

  bundle = f"z1-jax-{sha[:12]}.tar.gz"
  with tempfile.TemporaryDirectory(prefix="z1-launch-") as tmp:
    local = Path(tmp) / bundle
    if g.dry_run:
      g.note(f"build {local}: git archive {sha[:12]} plus {config} as {CONFIG_DIR}/{config.name}")
    else:
      build_bundle(root, sha, config, local)
    fetch = None
    if args.code_uri:
      remote = f"{args.code_uri.rstrip('/')}/{bundle}"
      g("storage", "cp", str(local), remote)
      fetch = f'gcloud storage cp {shlex.quote(remote)} "$HOME/{bundle}"'
    else:
      g("compute", "tpus", "tpu-vm", "scp", str(local), f"{tpu.name}:{bundle}", tpu.zone_flag(),
        "--worker=all")
  tpu.ssh(g, "all", install_script(sha, bundle, fetch, args.remote_python))
  tpu.ssh(g, "all", run_script(sha, config.name, args.out, overrides))
  if args.follow:
    g.note("streaming worker 0's log; Ctrl-C stops the streaming, not the run")
    tpu.ssh(g, "0", logs_script(200, follow=True), check=False)
  return 0


def _queued_for(g: Gcloud, tpu: Tpu, queued: bool | None) -> bool:
  """Whether `tpu` was created as a queued resource (asked, or looked up)."""
  if queued is not None:
    return queued
  found = tpu.describe(g, queued=True)
  if found is None:
    g.note("dry run: assuming no queued resource (pass --queued if it was created as one)")
    return False
  return found[0] == 0 and bool(found[1])


def manage(args, out=None) -> int:
  tpu = Tpu(check_name(args.name), check_zone(args.zone))
  g = Gcloud(args.project, args.dry_run, out)
  if args.action == "status":
    queued = _queued_for(g, tpu, args.queued)
    if queued:
      g("compute", "tpus", "queued-resources", "describe", tpu.name, tpu.zone_flag())
    g("compute", "tpus", "tpu-vm", "describe", tpu.name, tpu.zone_flag(),
      "--format=table(name.basename(),acceleratorType,state,health)")
    tpu.ssh(g, "all", STATUS_SCRIPT)
  elif args.action == "logs":
    tpu.ssh(g, str(args.worker), logs_script(args.lines, args.follow), check=False)
  elif args.action == "stop":
    tpu.ssh(g, "all", STOP_SCRIPT)
  elif args.action == "delete":
    if _queued_for(g, tpu, args.queued):
      g("compute", "tpus", "queued-resources", "delete", tpu.name, tpu.zone_flag(), "--force",
        "--quiet")
    else:
      g("compute", "tpus", "tpu-vm", "delete", tpu.name, tpu.zone_flag(), "--quiet")
  else:
    raise LaunchError(f"unknown action {args.action!r}")
  return 0


def run(args, out=None) -> int:
  """Entry point of `z1 launch ...` (argparse namespace from z1_jax.cli)."""
  return launch_tpu(args, out) if args.action == "tpu" else manage(args, out)
