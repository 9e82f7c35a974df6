"""Cloud TPU slice names, compile-only topology meshes, and the command line's platform choice."""

import collections
import math
import os
import pathlib
import re
import subprocess
import sys

import pytest

from z1_jax.errors import Z1Error
from z1_jax.topology import accelerator, resolve_mesh_shape, topology_mesh, tpu_chips_on_host

ROOT = str(pathlib.Path(__file__).resolve().parents[1])


@pytest.mark.parametrize("name, topology, chips, config, wrap", [
    ("v5p-8", "v5:2x2x1", 4, "megacore", False),
    ("v5p-64", "v5:2x4x4", 32, "megacore", False),
    ("v5p-128", "v5:4x4x4", 64, "megacore", True),
    ("v4-32", "v4:2x2x4", 16, "megacore", False),
    ("v5litepod-16", "v5e:4x4", 16, "default", False),
    ("v5e-16", "v5e:4x4", 16, "default", False),
    ("v6e-8", "v6e:2x4", 8, "default", False),
])
def test_cloud_tpu_names(name, topology, chips, config, wrap):
  acc = accelerator(name)
  assert (acc.topology, acc.chips, acc.chip_config) == (topology, chips, config)
  assert acc.wrap[0] is wrap
  assert acc.hbm_bytes > 15 * 2**30


# The public tables, written out here (not read back from z1_jax.topology): slice -> (chips,
# chips per TPU VM, VMs per slice). One JAX process runs per VM, so VMs are `z1 launch`'s workers
# and what `jax.process_count()` sees.
# - Levanter's TPU table (stanford-crfm/levanter src/levanter/infra/tpus.py, TPU_CONFIGS:
#   name, chip_count, host_count, vm_count, chips_per_vm), e.g. ("v5litepod-16", 16, 2, 4, 4):
#   2 physical hosts, 4 VMs of 4 chips; ("v5litepod-8", 8, 1, 1, 8); ("v6e-16", 16, 4, 4, 4).
# - xpk (AI-Hypercomputer/xpk src/xpk/core/system_characteristics.py): chips_per_vm = 1 for a
#   1-chip slice, else 4, for every slice built of ct5lp-hightpu-4t / ct6e-standard-4t /
#   ct5p-hightpu-4t / ct4p-hightpu-4t machines; vms_per_slice = chips / chips_per_vm.
# - MaxText (AI-Hypercomputer/maxtext MaxText/accelerator_to_spec_map.py):
#   chips_per_host_bounds (2, 2, 1) for v5e-16 .. v5e-256, v6e-256, every v4 and v5p slice.
# - The single-host v5e / v6e slices of 4 and 8 chips are one VM (ct5lp-hightpu-4t / -8t,
#   Cloud TPU's v5e and v6e pages; Levanter: v5litepod-4 and -8 have vm_count 1).
PUBLIC_SLICES = {
    "v4-8": (4, 4, 1), "v4-16": (8, 4, 2), "v4-32": (16, 4, 4), "v4-64": (32, 4, 8),
    "v4-128": (64, 4, 16), "v4-256": (128, 4, 32),
    "v5p-8": (4, 4, 1), "v5p-16": (8, 4, 2), "v5p-32": (16, 4, 4), "v5p-64": (32, 4, 8),
    "v5p-128": (64, 4, 16), "v5p-256": (128, 4, 32), "v5p-512": (256, 4, 64),
    "v5litepod-1": (1, 1, 1), "v5litepod-4": (4, 4, 1), "v5litepod-8": (8, 8, 1),
    "v5litepod-16": (16, 4, 4), "v5litepod-32": (32, 4, 8), "v5litepod-64": (64, 4, 16),
    "v5litepod-128": (128, 4, 32), "v5litepod-256": (256, 4, 64),
    "v6e-1": (1, 1, 1), "v6e-4": (4, 4, 1), "v6e-8": (8, 8, 1), "v6e-16": (16, 4, 4),
    "v6e-32": (32, 4, 8), "v6e-64": (64, 4, 16), "v6e-128": (128, 4, 32),
    "v6e-256": (256, 4, 64),
}


@pytest.mark.parametrize("name", sorted(PUBLIC_SLICES))
def test_slice_vms_follow_the_public_tables(name):
  chips, per_vm, vms = PUBLIC_SLICES[name]
  acc = accelerator(name)
  assert (acc.chips, math.prod(acc.chips_per_host), acc.hosts) == (chips, per_vm, vms)
  assert accelerator(name.replace("v5litepod", "v5e")) == acc


def test_every_slice_the_readme_names_is_in_the_public_table():
  text = (pathlib.Path(ROOT) / "README.md").read_text()
  named = {m.replace("v5e-", "v5litepod-") for m in
           re.findall(r"\b(?:v4|v5p|v5e|v5litepod|v6e)-\d+\b", text)}
  assert {"v5litepod-16", "v5p-64", "v6e-8"} <= named
  assert sorted(named - set(PUBLIC_SLICES)) == []


@pytest.mark.parametrize("name", ["v5e-16", "v6e-16", "v5e-32"])
def test_compile_only_topology_has_one_process_per_vm(name):
  """libtpu's compile-only devices of a multi-host v5e / v6e slice belong to one process per
  4-chip VM, as on the real slice; a v5litepod-8 is one process of 8 chips."""
  from z1_jax.topology import topology_devices
  chips, per_vm, vms = PUBLIC_SLICES[name.replace("v5e-", "v5litepod-")]
  by_process = collections.Counter(d.process_index for d in topology_devices(name))
  assert by_process == {i: per_vm for i in range(vms)}
  assert collections.Counter(d.process_index for d in topology_devices("v5litepod-8")) == {0: 8}


def test_distributed_start_on_a_multi_host_slice(monkeypatch):
  """A Cloud TPU VM of a 4-VM slice calls jax.distributed.initialize() (JAX finds its peers);
  if the runtime then sees one process, the command stops instead of training alone."""
  import jax
  import z1_jax.distributed as dist
  calls = []
  monkeypatch.setenv("TPU_ACCELERATOR_TYPE", "v5litepod-16")
  monkeypatch.delenv("TPU_WORKER_HOSTNAMES", raising=False)
  monkeypatch.setattr("z1_jax.topology.tpu_chips_on_host", lambda: True)
  monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: calls.append((a, k)))
  assert dist.slice_hosts() == 4
  with pytest.raises(Z1Error, match=r"has 4 TPU VMs \(one JAX process each\) but the JAX runtime sees 1 process"):
    dist.initialize()
  assert calls == [((), {})]
  monkeypatch.setenv("TPU_ACCELERATOR_TYPE", "v5litepod-8")  # one host: no distributed start
  calls.clear()
  dist.initialize()
  assert calls == [] and dist.slice_hosts() == 1


@pytest.mark.parametrize("bad", ["v5p-63", "v7-8", "tpu", "v5p-4", ""])
def test_unknown_accelerator_lists_valid_names(bad):
  with pytest.raises(Z1Error, match=r"unknown accelerator.*v5p-\{8,16") as e:
    accelerator(bad)
  assert repr(bad) in str(e.value) and "v6e-{" in str(e.value)


def test_mesh_shapes_resolve_or_fail_clearly():
  assert resolve_mesh_shape(None, 8) == {"data": 1, "fsdp": 8, "tensor": 1}
  assert resolve_mesh_shape({"data": 2, "tensor": -1}, 8) == {"data": 2, "fsdp": 1, "tensor": 4}
  assert resolve_mesh_shape((1, -1, 2), 8) == {"data": 1, "fsdp": 4, "tensor": 2}
  with pytest.raises(Z1Error, match="do not divide by 3"):
    resolve_mesh_shape({"data": 3, "fsdp": -1}, 8)
  with pytest.raises(Z1Error, match=r"'model'"):
    resolve_mesh_shape({"model": 8}, 8)
  with pytest.raises(Z1Error, match="has 4 devices; the target has 8"):
    resolve_mesh_shape({"fsdp": 4}, 8)


def test_topology_mesh_has_compile_only_tpu_devices():
  mesh = topology_mesh("v5litepod-16", {"fsdp": 8, "tensor": 2})
  assert dict(mesh.shape) == {"data": 1, "fsdp": 8, "tensor": 2}
  assert mesh.devices.flat[0].device_kind == "TPU v5 lite"
  assert len({d.id for d in mesh.devices.flat}) == 16


def _run(code: str, env_extra: dict) -> subprocess.CompletedProcess:
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
  env.update(env_extra)
  return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                        timeout=120)


@pytest.mark.skipif(tpu_chips_on_host(), reason="this host has TPU chips")
def test_cli_without_tpu_chips_runs_on_cpu_and_says_so():
  """With libtpu installed and JAX_PLATFORMS unset, `z1` picks the CPU on a host without chips
  (one stderr line), and compiling for a TPU slice prints none of libtpu's start-up noise."""
  code = ("from z1_jax.topology import select_platform, topology_mesh\n"
          "print(select_platform())\n"
          "import jax; print(jax.devices()[0].platform)\n"
          "print(topology_mesh('v5p-8').devices.flat[0].device_kind)\n")
  res = _run(code, {"PYTHONPATH": ROOT})
  assert res.returncode == 0, res.stderr
  assert res.stdout.split() == ["cpu", "cpu", "TPU", "v5"]
  assert res.stderr.strip() == ("z1: libtpu is installed but this host has no TPU chips: "
                                "running on cpu (set JAX_PLATFORMS to choose)")
  explicit = _run(code, {"PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"})
  assert explicit.stdout.split()[0] == "None" and explicit.stderr == ""
