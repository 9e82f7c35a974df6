"""Cloud TPU slice names, compile-only topology meshes, and the command line's platform choice."""

import os
import pathlib
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


# Cloud TPU's v5e and v6e configuration tables: 8 chips per host from 8 chips up; the 1- and
# 4-chip slices are one (smaller) VM. v4 / v5p hosts carry 4 chips.
@pytest.mark.parametrize("name, hosts", [
    ("v5litepod-1", 1), ("v5litepod-4", 1), ("v5litepod-8", 1), ("v5e-16", 2), ("v5e-32", 4),
    ("v5e-64", 8), ("v5e-128", 16), ("v5e-256", 32), ("v6e-1", 1), ("v6e-4", 1), ("v6e-8", 1),
    ("v6e-16", 2), ("v6e-32", 4), ("v6e-64", 8), ("v6e-128", 16), ("v6e-256", 32),
    ("v5p-8", 1), ("v5p-16", 2), ("v5p-64", 8), ("v4-8", 1), ("v4-32", 4),
])
def test_slice_host_counts_follow_cloud_tpu(name, hosts):
  assert accelerator(name).hosts == hosts


def test_compile_only_topology_has_the_slice_host_count():
  """libtpu agrees: the compile-only devices of v5e-16 belong to 2 processes of 8 chips."""
  from z1_jax.topology import topology_devices
  devices = topology_devices("v5e-16")
  assert sorted({d.process_index for d in devices}) == [0, 1]
  assert len(topology_devices("v5litepod-8")) == 8 and {
      d.process_index for d in topology_devices("v5litepod-8")} == {0}


def test_distributed_start_on_a_multi_host_slice(monkeypatch):
  """A Cloud TPU VM of a 2-host slice calls jax.distributed.initialize() (JAX finds its peers);
  if the runtime then sees one process, the command stops instead of training alone."""
  import jax
  import z1_jax.distributed as dist
  calls = []
  monkeypatch.setenv("TPU_ACCELERATOR_TYPE", "v5litepod-16")
  monkeypatch.delenv("TPU_WORKER_HOSTNAMES", raising=False)
  monkeypatch.setattr("z1_jax.topology.tpu_chips_on_host", lambda: True)
  monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: calls.append((a, k)))
  assert dist.slice_hosts() == 2
  with pytest.raises(Z1Error, match="has 2 hosts but the JAX runtime sees 1 process"):
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
