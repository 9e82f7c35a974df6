"""Issue 7: every `z1` command refuses bad invocations up front (exit 2, one message naming the
flag, file or row, no traceback) and leaves the file system as it was; interrupted writes
leave the previous output intact and a rerun succeeds.

`BAD_INVOCATIONS` is the table: add rows for new commands. Placeholders in braces name paths
of the `world` fixture (a directory of inputs and previous outputs, hashed before and after
every row).
"""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from z1_jax.cli import main

RUNNER = Path(__file__).with_name("cli_pause_runner.py")

# (argv template, exit code, substring the message must contain)
BAD_INVOCATIONS = [
    # convert hf-to-orbax: existing outputs of every kind, file paths, dtypes, meshes, hub ids
    ("convert hf-to-orbax --hf {hfB} --out {ck}", 2, "pass --overwrite"),
    ("convert hf-to-orbax --hf {hfB} --out {hfA}", 2, "not a previous Orbax checkpoint"),
    ("convert hf-to-orbax --hf {hfB} --out {hfA} --overwrite", 2, "not a previous Orbax"),
    ("convert hf-to-orbax --hf {hfA} --out {file}", 2, "is an existing file"),
    ("convert hf-to-orbax --hf {hfA} --out {file}/ck", 2, "is a file, not a directory"),
    ("convert hf-to-orbax --hf {hfA}/model.safetensors --out {new}", 2,
     "pass the checkpoint directory"),
    ("convert hf-to-orbax --hf nope/model.safetensors --out {new}", 2, "not found"),
    ("convert hf-to-orbax --hf {ck} --out {new}", 2, "orbax-to-hf"),
    ("convert hf-to-orbax --hf {hfA} --out {hfA}/orbax", 2, "inside the input --hf"),
    ("convert hf-to-orbax --hf {hfA} --out {new} --dtype int8", 2, "--dtype"),
    ("convert hf-to-orbax --hf {hfA} --out {new} --dtype foo", 2, "--dtype"),
    ("convert hf-to-orbax --hf {hfA} --out {new} --mesh 3,1,1", 2, "--mesh 3,1,1"),
    ("convert hf-to-orbax --hf {hfA} --out {new} --mesh 1,2", 2, "--mesh"),
    ("convert hf-to-orbax --hf {hfA} --out {new} --mesh 0,4,2", 2, "--mesh"),
    ("convert hf-to-orbax --hf {hfA} --out {new} --mesh -1,-1,2", 2, "--mesh"),
    ("convert hf-to-orbax --hf {hfA} --out {new} --mesh data=2,experts=4", 2, "--mesh"),
    ("convert hf-to-orbax --hf no-such-org/no-such-model --out {new}", 2, "local"),
    # convert orbax-to-hf: --overwrite never replaces the input, other files, the cwd
    ("convert orbax-to-hf --ckpt {proj}/ck --out {proj} --overwrite", 2,
     "holds the input --ckpt"),
    ("convert orbax-to-hf --ckpt {ck} --out . --overwrite", 2, "current directory"),
    ("convert orbax-to-hf --ckpt {ck} --out {hfout}", 2, "pass --overwrite"),
    ("convert orbax-to-hf --ckpt {ck} --out {proj} --overwrite", 2, "not a previous HF"),
    ("convert orbax-to-hf --ckpt {ck} --out {file}", 2, "is an existing file"),
    ("convert orbax-to-hf --ckpt {ck} --out {ck}/hf", 2, "inside the input --ckpt"),
    ("convert orbax-to-hf --ckpt {ck} --out {new} --dtype int8", 2, "--dtype"),
    ("convert orbax-to-hf --ckpt {hfA} --out {new}", 2, "hf-to-orbax"),
    # a step directory is accepted (issue 8) but its own inside is still refused as --out
    ("convert orbax-to-hf --ckpt {ck}/0 --out {ck}/0/hf", 2, "inside the input --ckpt"),
    ("convert orbax-to-hf --ckpt {file} --out {new}", 2, "--ckpt"),
    ("convert orbax-to-hf --ckpt nope --out {new}", 2, "not found"),
    ("convert orbax-to-hf --ckpt {ck} --out {new} --max-shard-size 0", 2, "--max-shard-size"),
    ("convert orbax-to-hf --ckpt {ck} --out {new} --max-shard-size lots", 2,
     "--max-shard-size"),
    ("convert orbax-to-hf --ckpt {ck} --out {new} --tokenizer nope", 2, "--tokenizer"),
    ("convert orbax-to-hf --ckpt {ck} --out {hfout} --overwrite --tokenizer {hfout}", 2,
     "is the input --tokenizer"),
    # data: outputs, numbers, corrupt / empty / truncated inputs (file and row named)
    ("data pack --seq-len 64 --out {rows}", 2, "pass --overwrite"),
    ("data pack --seq-len 64 --out {world}", 2, "is a directory"),
    ("data pack --seq-len 64 --out {file}/rows.jsonl", 2, "is a file, not a directory"),
    ("data pack --dataset {bad_jsonl} --out {bad_jsonl} --overwrite", 2, "is the input"),
    ("data pack --dataset {datadir} --out {datadir}/rows.jsonl", 2, "inside the input"),
    ("data stats --seq-len 0", 2, "--seq-len"),
    ("data stats --seq-len -8", 2, "--seq-len"),
    ("data stats --seq-len 1k", 2, "--seq-len"),
    ("data stats --select-tokens 0", 2, "--select-tokens"),
    ("data stats --overlong cut", 2, "--overlong"),
    ("data stats --cache-dir {file}", 2, "--cache-dir"),
    ("data stats --dataset {bad_jsonl}", 2, "bad.jsonl: row 1: invalid JSON"),
    ("data stats --dataset {trunc_gz}", 2, "trunc.jsonl.gz: row 0: file truncated"),
    ("data stats --dataset {bad_parquet}", 2, "bad.parquet: not a readable parquet"),
    ("data stats --dataset {bad_arrow}", 2, "bad.arrow: not a readable arrow"),
    ("data stats --dataset {empty_jsonl}", 2, "the input is empty"),
    ("data stats --dataset {no_column}", 2, "row 0: missing column 'response'"),
    ("data stats --dataset {file}", 2, "unsupported file type"),
    ("data stats --dataset nope.jsonl", 2, "dataset not found"),
    ("data stats --dataset no-such-org/no-such-data", 2, "local"),
    ("data stats --tokenizer nope", 2, "cannot load a tokenizer from 'nope': no such directory"),
    ("data stats --tokenizer {hfA}/config.json", 2, "is a file"),
    # score: numbers, outputs (checked before scoring), inputs
    ("score --benchmark humaneval --samples {samples} --timeout 0", 2, "--timeout"),
    ("score --benchmark humaneval --samples {samples} --timeout -1", 2, "--timeout"),
    ("score --benchmark humaneval --samples {samples} --timeout nan", 2, "--timeout"),
    ("score --benchmark humaneval --samples {samples} --timeout inf", 2, "--timeout"),
    ("score --benchmark humaneval --samples {samples} --workers 0", 2, "--workers"),
    ("score --benchmark nope --samples {samples}", 2, "unknown benchmark 'nope'"),
    ("score --benchmark humaneval --samples {samples} --out {verdicts}", 2, "pass --overwrite"),
    ("score --benchmark humaneval --samples {samples} --out {samples} --overwrite", 2,
     "is the input --samples"),
    ("score --benchmark humaneval --samples {samples} --out {world}", 2, "is a directory"),
    ("score --benchmark humaneval --samples {samples} --out {file}/v.jsonl", 2, "is a file"),
    ("score --benchmark humaneval --samples {world}", 2, "is a directory"),
    ("score --benchmark humaneval --samples {empty_jsonl}", 2, "no samples"),
    ("score --benchmark humaneval --samples {bad_jsonl}", 2, "bad.jsonl: row 1"),
    ("score --benchmark humaneval --samples nope.jsonl", 2, "samples file not found"),
    ("score --benchmark aime2024 --samples {samples} --data {trunc_gz}", 2, "file truncated"),
    ("score --benchmark aime2024 --samples {samples} --data {bad_parquet}", 2, "bad.parquet"),
    ("score --benchmark math500 --samples {samples}", 2, "--data"),
    # bench: zero sizes
    ("bench forward --batch 0", 2, "--batch"),
    ("bench forward --seq-len 0", 2, "--seq-len"),
    ("bench forward --repeats 0", 2, "--repeats"),
    ("bench forward --preset nope", 2, "unknown preset 'nope'"),
    ("bench data --examples 0", 2, "--examples"),
    ("bench data --seq-len 0", 2, "--seq-len"),
    ("bench data --tokenize-examples 0", 2, "--tokenize-examples"),
    ("bench score --workers 0", 2, "--workers"),
    # demo: never writes into a directory of other files, or over a file
    ("demo --out {hfA}", 2, "not a previous demo output"),
    ("demo --out {file}", 2, "is an existing file"),
    ("demo --out {demo_prev}", 2, "not a previous demo output"),
    ("data pack --seq-len 8 --out {new}.jsonl", 2, "no example fits"),
    # global
    ("nope", 2, "invalid choice"),
]


def tree_digest(root: Path) -> dict[str, str]:
  """Relative path -> content hash (files) or "dir", for everything under `root`."""
  out = {}
  for p in sorted(root.rglob("*")):
    rel = str(p.relative_to(root))
    out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
  return out


def run_z1(argv: list[str], capsys) -> tuple[int, str, str]:
  """`z1 argv` in this process: (exit code, stdout, stderr); argparse's exits included."""
  try:
    code = main(argv)
  except SystemExit as e:
    code = e.code
  out, err = capsys.readouterr()
  return code, out, err


def _fmt(template: str, world: dict[str, Path]) -> list[str]:
  return [part.format(**world) for part in template.split()]


@pytest.fixture(scope="module")
def world(tmp_path_factory, hf_checkpoint):
  """Inputs and previous outputs that no bad invocation may change."""
  import datasets  # noqa: F401 - make sure its import does not count against a row
  import pyarrow as pa
  import pyarrow.parquet as pq
  root = tmp_path_factory.mktemp("world")
  w = {"world": root, "new": root / "new-output"}
  for name, key in (("tied-gqa2", "hfA"), ("untied-mha-eps", "hfB")):
    w[key] = root / key
    shutil.copytree(hf_checkpoint(name)[1], w[key])
  w["ck"], w["hfout"], w["proj"] = root / "ck", root / "hfout", root / "proj"
  assert main(["convert", "hf-to-orbax", "--hf", str(w["hfA"]), "--out", str(w["ck"])]) == 0
  from z1_jax.data.tokenizer import offline_tokenizer_dir
  assert main(["convert", "orbax-to-hf", "--ckpt", str(w["ck"]), "--out", str(w["hfout"]),
               "--tokenizer", str(offline_tokenizer_dir())]) == 0
  shutil.copytree(w["ck"], w["proj"] / "ck")
  (w["proj"] / "notes.txt").write_text("mine")
  w["file"] = root / "notes.txt"
  w["file"].write_text("not a checkpoint")
  good = '{"question": "Add 1 and 2.", "response": "3"}\n'
  w["datadir"] = root / "data"
  w["datadir"].mkdir()
  (w["datadir"] / "a.jsonl").write_text(good)
  w["bad_jsonl"] = root / "bad.jsonl"
  w["bad_jsonl"].write_text(good + '{"question": "x", "resp\n')
  w["empty_jsonl"] = root / "empty.jsonl"
  w["empty_jsonl"].write_text("")
  w["no_column"] = root / "nocol.jsonl"
  w["no_column"].write_text('{"question": "x"}\n')
  import gzip
  w["trunc_gz"] = root / "trunc.jsonl.gz"
  w["trunc_gz"].write_bytes(gzip.compress((good * 200).encode())[:60])
  table = pa.table({"question": ["q"] * 50, "response": ["r"] * 50})
  pq.write_table(table, root / "whole.parquet")
  w["bad_parquet"] = root / "bad.parquet"
  w["bad_parquet"].write_bytes((root / "whole.parquet").read_bytes()[:-40])
  (root / "whole.parquet").unlink()
  w["bad_arrow"] = root / "bad.arrow"
  w["bad_arrow"].write_bytes(b"ARROW1 but not really")
  from z1_jax.eval.benchmarks import load_benchmark
  problems = load_benchmark("humaneval")[:2]
  w["samples"] = root / "samples.jsonl"
  w["samples"].write_text("".join(json.dumps({"task_id": p.id, "completion":
                                              p.tests["canonical_solution"]}) + "\n"
                                  for p in problems))
  w["demo_prev"] = root / "demo"
  for name in ("data", "hf"):  # the demo's output names, but no marker: not a demo output
    (w["demo_prev"] / name).mkdir(parents=True)
  w["verdicts"] = root / "verdicts.jsonl"
  w["verdicts"].write_text('{"previous": true}\n')
  w["rows"] = root / "rows.jsonl"
  w["rows"].write_text('{"previous": true}\n')
  return w


@pytest.mark.parametrize("template,code,needle", BAD_INVOCATIONS,
                         ids=[t for t, _, _ in BAD_INVOCATIONS])
def test_bad_invocation(template, code, needle, world, capsys, monkeypatch):
  monkeypatch.chdir(world["world"])
  before = tree_digest(world["world"])
  got, out, err = run_z1(_fmt(template, world), capsys)
  assert got == code, (got, out, err)
  assert needle in err, err
  assert "Traceback" not in err + out
  lines = [line for line in err.splitlines() if line.strip() and "%|" not in line]  # no bars
  assert len(lines) <= 2 and sum("error" in line for line in lines) == 1, err  # one message
  assert tree_digest(world["world"]) == before


def test_debug_shows_the_traceback(world, monkeypatch, capsys):
  argv = ["data", "stats", "--dataset", str(world["bad_jsonl"])]
  with pytest.raises(Exception, match="row 1"):
    main(["--debug", *argv])
  monkeypatch.setenv("Z1_DEBUG", "1")
  with pytest.raises(Exception, match="row 1"):
    main(argv)


def test_convert_overwrite_replaces_a_previous_export(world, tmp_path, capsys):
  """The case of the issue: a second model into the same --out. Refused without --overwrite
  (the table), replaced with it; the README's `--mesh -1,4,2` form works."""
  from z1_jax.checkpoint.orbax_io import read_config
  ck = tmp_path / "ck"
  shutil.copytree(world["ck"], ck)
  assert read_config(ck)[0].hidden_size == 64
  code, out, err = run_z1(["convert", "hf-to-orbax", "--hf", str(world["hfB"]), "--out", str(ck),
                           "--overwrite", "--mesh", "-1,4,2"], capsys)
  assert code == 0, err
  assert read_config(ck)[0].hidden_size == 48  # model B now
  assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no temporaries left
  hf = tmp_path / "hf"
  shutil.copytree(world["hfout"], hf)
  code, _, err = run_z1(["convert", "orbax-to-hf", "--ckpt", str(ck), "--out", str(hf),
                         "--overwrite", "--mesh=data=2,fsdp=2,tensor=2", "--dtype", "float32"],
                        capsys)
  assert code == 0, err
  assert json.loads((hf / "config.json").read_text())["hidden_size"] == 48
  assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "hf"]


def test_hub_lookup_is_announced_and_honours_offline(world, capsys, monkeypatch):
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  start = time.perf_counter()
  code, _, err = run_z1(["convert", "hf-to-orbax", "--hf", "no-such-org/no-such-model", "--out",
                         str(world["new"])], capsys)
  assert code == 2 and time.perf_counter() - start < 10
  assert "looking up checkpoint 'no-such-org/no-such-model' in the local hub cache only" in err
  assert "HF_HUB_OFFLINE is set" in err and "Pass a local checkpoint directory" in err


def test_dataset_formats_users_have_on_disk(tmp_path, capsys):
  """datasets' save_to_disk (Dataset and DatasetDict), a JSON array, gzipped JSONL."""
  import gzip

  import datasets
  rows = [{"question": f"Add {i} and 1.", "response": str(i + 1)} for i in range(5)]
  datasets.Dataset.from_list(rows).save_to_disk(tmp_path / "saved")
  datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:3]),
                        "test": datasets.Dataset.from_list(rows[:1])}).save_to_disk(
                            tmp_path / "saved_dict")
  (tmp_path / "array.json").write_text(json.dumps(rows, indent=2))
  (tmp_path / "rows.jsonl.gz").write_bytes(gzip.compress(
      "".join(json.dumps(r) + "\n" for r in rows).encode()))
  for name, n in (("saved", 5), ("saved_dict", 3), ("array.json", 5), ("rows.jsonl.gz", 5)):
    code, out, err = run_z1(["data", "stats", "--seq-len", "128", "--dataset",
                             str(tmp_path / name)], capsys)
    assert code == 0, err
    assert json.loads(out)["examples"] == n, name


def test_corrupt_tokenization_cache_is_reported_and_rewritten(tmp_path, capsys):
  argv = ["data", "stats", "--seq-len", "256", "--cache-dir", str(tmp_path / "cache")]
  code, first, err = run_z1(argv, capsys)
  assert code == 0, err
  (cache,) = (tmp_path / "cache").iterdir()
  cache.write_bytes(cache.read_bytes()[:100])  # damaged from outside (z1 writes atomically)
  code, out, err = run_z1(argv, capsys)
  assert code == 0 and "ignoring unreadable tokenization cache" in err
  assert json.loads(out)["tokens"] == json.loads(first)["tokens"]
  code, out, _ = run_z1(argv, capsys)
  assert code == 0 and json.loads(out)["tokenized_from_cache"]


def test_score_output_and_overwrite(world, tmp_path, capsys):
  out = tmp_path / "v.jsonl"
  argv = ["score", "--benchmark", "humaneval", "--samples", str(world["samples"]), "--out",
          str(out), "--workers", "2", "--timeout", "0.5"]
  code, _, err = run_z1(argv, capsys)
  assert code == 0, err
  assert [json.loads(line)["passed"] for line in out.read_text().splitlines()] == [True, True]
  assert run_z1(argv, capsys)[0] == 2
  assert run_z1(argv + ["--overwrite"], capsys)[0] == 0


# --- interruption: SIGINT and SIGKILL at the moment a finished output replaces the previous ---

def _interrupt_cases(world, tmp):
  """name -> (previous output, argv that replaces it, check that the output is the new one)."""
  samples = world["samples"]
  return {
      "hf-to-orbax-in-orbax": (world["ck"], ["convert", "hf-to-orbax", "--hf", str(world["hfB"]),
                                             "--out", "{out}", "--overwrite"],
                               lambda p: (p / "0").is_dir() and "48" in _orbax_hidden(p)),
      "hf-to-orbax": (world["ck"], ["convert", "hf-to-orbax", "--hf", str(world["hfB"]),
                                    "--out", "{out}", "--overwrite"],
                      lambda p: (p / "0").is_dir() and "48" in _orbax_hidden(p)),
      "orbax-to-hf": (world["hfout"], ["convert", "orbax-to-hf", "--ckpt", str(world["ck"]),
                                       "--out", "{out}", "--overwrite", "--dtype", "float32"],
                      lambda p: json.loads((p / "config.json").read_text())["torch_dtype" if
                                "torch_dtype" in (p / "config.json").read_text() else
                                "dtype"] == "float32"),
      "data-pack": (world["rows"], ["data", "pack", "--seq-len", "512", "--out", "{out}",
                                    "--overwrite"],
                    lambda p: "examples" in p.read_text()),
      "score": (world["verdicts"], ["score", "--benchmark", "humaneval", "--samples",
                                    str(samples), "--out", "{out}", "--overwrite",
                                    "--workers", "1"],
                lambda p: '"passed": true' in p.read_text()),
  }


def _orbax_hidden(path: Path) -> str:
  from z1_jax.checkpoint.orbax_io import read_config
  return str(read_config(path)[0].hidden_size)


def _popen_with_sigint_ignored(*args, **kwargs):
  """Starts a child with the disposition a background job or `nohup` child inherits: SIGINT
  ignored. Every interruption test starts its `z1` so, so the result does not depend on how
  pytest was started, and it proves that `z1` installs its own handler (z1_jax.signals)."""
  previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # inherited across exec
  try:
    return subprocess.Popen(*args, **kwargs)
  finally:
    signal.signal(signal.SIGINT, previous)


def _run_paused(argv, pause_at, marker, sig, cwd):
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[1]),
                                                     os.environ.get("PYTHONPATH", "")]))
  proc = _popen_with_sigint_ignored(
      [sys.executable, str(RUNNER), pause_at, str(marker), "--", *argv], cwd=cwd, env=env,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.monotonic() + 180
  while not marker.exists():
    if proc.poll() is not None or time.monotonic() > deadline:
      proc.kill()
      out, err = proc.communicate()
      raise AssertionError(f"never reached {pause_at}: rc={proc.returncode}\n{out}\n{err}")
    time.sleep(0.05)
  proc.send_signal(sig)
  out, err = proc.communicate(timeout=60)
  return proc.returncode, out, err


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
@pytest.mark.parametrize("case", ["hf-to-orbax", "hf-to-orbax-in-orbax", "orbax-to-hf",
                                  "data-pack", "score"])
def test_interrupted_write_keeps_previous_output(case, sig, world, tmp_path, capsys):
  previous, argv, is_new = _interrupt_cases(world, tmp_path)[case]
  work = tmp_path / "work"
  work.mkdir()
  out = work / previous.name
  (shutil.copytree if previous.is_dir() else shutil.copy2)(previous, out)
  (work / "neighbour.txt").write_text("keep me")
  before = tree_digest(work)
  argv = [a.replace("{out}", str(out)) for a in argv]
  pause_at = ("orbax.checkpoint:CheckpointManager.wait_until_finished" if "in-orbax" in case
              else "z1_jax.outputs:commit")  # Orbax still writing, or all written
  rc, _, err = _run_paused(argv, pause_at, tmp_path / "paused", sig, work)
  if sig == signal.SIGINT:
    assert rc == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert tree_digest(work) == before  # previous output intact, no temporaries
  else:
    assert rc == -signal.SIGKILL
    after = tree_digest(work)
    # The previous output and the neighbour are intact; only our partial may remain.
    assert {k: v for k, v in after.items() if ".z1-partial-" not in k} == before
  code, _, err = run_z1(argv, capsys)  # the rerun succeeds and clears any partial
  assert code == 0, err
  assert is_new(out)
  assert sorted(p.name for p in work.iterdir()) == sorted([out.name, "neighbour.txt"])


@pytest.mark.slow
def test_ctrl_c_while_scoring_stops_promptly(world, tmp_path):
  out = tmp_path / "v.jsonl"
  out.write_text('{"previous": true}\n')
  argv = ["score", "--benchmark", "humaneval", "--samples", str(world["samples"]), "--out",
          str(out), "--overwrite", "--workers", "1"]
  start = time.monotonic()
  rc, _, err = _run_paused(argv, "z1_jax.eval.score:Scorer._run_code", tmp_path / "paused",
                           signal.SIGINT, tmp_path)
  assert rc == 130 and "Traceback" not in err, err
  assert time.monotonic() - start < 100  # not the 120 s the paused sample would take
  assert out.read_text() == '{"previous": true}\n'
  assert sorted(p.name for p in tmp_path.iterdir()) == ["paused", "v.jsonl"]


@pytest.mark.parametrize("argv", [["data", "pack", "--seq-len", "64", "--out", "{ro}/rows.jsonl"],
                                  ["data", "stats", "--cache-dir", "{ro}/cache"],
                                  ["score", "--benchmark", "humaneval", "--samples", "{samples}",
                                   "--out", "{ro}/v.jsonl"]])
def test_read_only_output_location(argv, world, tmp_path, capsys, monkeypatch):
  """A read-only output location is refused before any work. The tests run as root, which
  writes through permission bits, so `os.access` reports the directory as read-only."""
  ro = tmp_path / "ro"
  ro.mkdir()
  real_access = os.access
  monkeypatch.setattr(os, "access", lambda path, mode: False if Path(path).resolve().is_relative_to(
      ro) else real_access(path, mode))
  code, _, err = run_z1([a.format(ro=ro, samples=world["samples"]) for a in argv], capsys)
  assert code == 2 and "Traceback" not in err, err
  assert "permission denied" in err or "not writable" in err, err
  assert list(ro.iterdir()) == []


def test_output_checks_refuse_unwritable_locations(tmp_path, monkeypatch):
  """The same refusals as above, where the tests run as root: `os.access` says no."""
  from z1_jax import outputs
  from z1_jax.errors import Z1Error
  monkeypatch.setattr(outputs.os, "access", lambda path, mode: False)
  with pytest.raises(Z1Error, match="--out .*permission denied"):
    outputs.check_output_file(tmp_path / "rows.jsonl", "--out")
  with pytest.raises(Z1Error, match="--cache-dir .*not writable"):
    outputs.check_dir(tmp_path, "--cache-dir")


# --- signals: z1's own SIGINT/SIGTERM handling, whatever the disposition it inherits ----------

@pytest.mark.parametrize("sig, code, word", [(signal.SIGINT, 130, "interrupted"),
                                             (signal.SIGTERM, 143, "terminated")],
                         ids=["SIGINT", "SIGTERM"])
def test_signal_stops_z1_even_when_sigint_is_inherited_ignored(sig, code, word, world, tmp_path):
  out = tmp_path / "v.jsonl"
  argv = ["score", "--benchmark", "humaneval", "--samples", str(world["samples"]), "--out",
          str(out), "--workers", "1"]
  rc, _, err = _run_paused(argv, "z1_jax.outputs:commit", tmp_path / "paused", sig, tmp_path)
  assert rc == code, err
  assert word in err and "Traceback" not in err
  assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["paused"]


# --- exit codes: 2 only for user errors, 1 for a bug ---------------------------------------

@pytest.mark.parametrize("exc", [ValueError("bug"), KeyError("bug")], ids=["ValueError",
                                                                     "KeyError"])
def test_a_bare_value_or_key_error_is_unexpected(exc, monkeypatch, capsys):
  import z1_jax.data.command as data_command

  def boom(args):
    raise exc
  monkeypatch.setattr(data_command, "run_data", boom)
  rc = main(["data", "stats"])
  err = capsys.readouterr().err
  assert rc == 1 and f"unexpected {type(exc).__name__}" in err and "--debug" in err, err


def test_unknown_preset_is_a_user_error(capsys):
  from z1_jax.errors import Z1Error, Z1KeyError
  from z1_jax.model.config import get_preset
  with pytest.raises(Z1KeyError) as e:
    get_preset("qwen9-nope")
  assert isinstance(e.value, Z1Error) and isinstance(e.value, KeyError)
  assert str(e.value).startswith("unknown preset 'qwen9-nope'")


# --- z1 launch stop: the start and stop scripts, run locally in a scratch HOME ---------------

_STAND_IN = """import os, signal, sys, time
from pathlib import Path
home = Path(os.environ["HOME"])
ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
(home / "inherited").write_text("SIG_IGN" if ignored else "other")
from z1_jax import signals
signals.install()  # what z1_jax.cli.main does first
try:
  while True:
    time.sleep(0.05)
except KeyboardInterrupt:
  time.sleep(1.0)  # the trainer saves the current step before it exits
  (home / "exited").write_text("130")
  sys.exit(130)
"""


def test_launch_stop_really_stops_the_trainer(tmp_path):
  """The start script runs the trainer as a `nohup ... &` job of a non-interactive shell, which
  inherits SIGINT ignored; the stop script must still stop it, and say "stopped" only after
  the process exited. The trainer is a stand-in that does what `z1` does at start (a real
  `z1 train` would take minutes to compile here); the scripts are the ones `--dry-run` prints."""
  from z1_jax.launch import tpu
  home = tmp_path / "home"
  sha = "0123456789abcdef"
  (home / "z1-jax" / sha[:12]).mkdir(parents=True)
  venv_bin = home / "z1-jax" / "venv" / "bin"
  venv_bin.mkdir(parents=True)
  (venv_bin / "stand_in.py").write_text(_STAND_IN)
  z1 = venv_bin / "z1"
  z1.write_text(f"#!/bin/sh\nexec {sys.executable} {venv_bin / 'stand_in.py'} \"$@\"\n")
  z1.chmod(0o755)
  env = dict(os.environ, HOME=str(home),
             PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[1]),
                                         os.environ.get("PYTHONPATH", "")]))
  sh = lambda script: subprocess.run(["bash", "-c", script], env=env, capture_output=True,  # noqa: E731
                                     text=True, timeout=120)
  start = sh(tpu.run_script(sha, "c.toml", "/tmp/out", []))
  assert start.returncode == 0 and "started z1 train" in start.stdout, start.stderr
  deadline = time.monotonic() + 60
  while not (home / "inherited").exists() and time.monotonic() < deadline:
    time.sleep(0.05)
  assert (home / "inherited").read_text() == "SIG_IGN"  # the trap the issue describes
  again = sh(tpu.run_script(sha, "c.toml", "/tmp/out", []))
  assert again.returncode == 1 and "already running" in again.stderr
  stop = sh(tpu.STOP_SCRIPT)
  assert stop.returncode == 0, stop.stderr
  assert "sent SIGINT" in stop.stdout and "z1 train stopped" in stop.stdout
  assert (home / "exited").read_text() == "130"  # it had exited when "stopped" was printed
  assert not (home / "z1-jax" / "train.pid").exists()
  assert "not running" in sh(tpu.STOP_SCRIPT).stdout
  assert "not running" in sh(tpu.STATUS_SCRIPT).stdout


def test_missing_bubblewrap_is_exit_2_with_the_fix(world, tmp_path, monkeypatch, capsys):
  import z1_jax.eval.sandbox as sandbox
  monkeypatch.setattr(sandbox, "bwrap_works", lambda *a, **k: False)
  out = tmp_path / "v.jsonl"
  before = tree_digest(tmp_path)
  rc = main(["score", "--benchmark", "humaneval", "--samples", str(world["samples"]), "--out",
             str(out), "--workers", "1"])
  err = capsys.readouterr().err
  assert rc == 2, err
  assert "bubblewrap" in err and "apt-get install bubblewrap" in err and "unexpected" not in err
  assert tree_digest(tmp_path) == before


# --- scoring traps ---------------------------------------------------------------------------

def _add_problem(benchmark="humaneval", pid="t/0"):
  from z1_jax.eval.benchmarks import Problem
  prompt = 'def add(a, b):\n    """a + b"""\n'
  return Problem(id=pid, benchmark=benchmark, kind="code", question=prompt,
                 tests={"style": "humaneval", "prompt": prompt, "entry_point": "add",
                        "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n"})


def test_solution_is_the_block_defining_the_entry_point_not_the_usage_example():
  from z1_jax.eval.code import program_for, solution_block
  p = _add_problem()
  solution = "def add(a, b):\n    return a + b\n"
  completion = f"```python\n{solution}```\nUsage:\n```python\nprint(add(1, 2))\n```\n"
  assert solution_block(p, completion) == solution
  assert program_for(p, completion).endswith(solution)
  # nothing defines the entry point: the last block, as before
  assert solution_block(p, "```python\nx = 1\n```\n```python\ny = 2\n```") == "y = 2\n"
  lcb = dataclasses_replace(p, tests={"style": "functional", "func_name": "f"})
  cls = "class Solution:\n    def f(self):\n        return 1\n"
  assert solution_block(lcb, f"```python\n{cls}```\n```python\nprint(Solution().f())\n```") == cls


def dataclasses_replace(obj, **kw):
  import dataclasses
  return dataclasses.replace(obj, **kw)


def test_humaneval_answer_with_a_usage_block_passes():
  from z1_jax.eval.score import Scorer
  scorer = Scorer([_add_problem()], workers=1)
  try:
    verdict = scorer.score_one(_add_problem(), "```python\ndef add(a, b):\n    return a + b\n```"
                               "\n```python\nprint(add(1, 2))\n```")
  finally:
    scorer.close()
  assert verdict["passed"] is True, verdict


@pytest.mark.parametrize("text, letter", [("the answer is a consequence of symmetry", None),
                                          ("answer: b", None), ("Answer: B", "B"),
                                          ("so the answer is (C).", "C"), ("**Answer:** D", "D"),
                                          ("\\boxed{a}", "A")])
def test_multiple_choice_letter_only_capitals_in_an_answer_position(text, letter):
  from z1_jax.eval.extract import mc_letter
  assert mc_letter(text) == letter


def test_scorer_keys_problems_by_benchmark_and_id():
  """Two benchmarks whose ids are both row numbers: each answer is graded against its own."""
  from z1_jax.eval.benchmarks import Problem
  from z1_jax.errors import Z1Error
  from z1_jax.eval.score import Scorer
  a = Problem(id="0", benchmark="mine-a", kind="math", question="1+1", answer="2")
  b = Problem(id="0", benchmark="mine-b", kind="math", question="2+2", answer="4")
  scorer = Scorer([a, b], workers=1, math_timeout_s=10)
  try:
    assert scorer.score_one(a, "\\boxed{2}")["passed"] is True
    assert scorer.score_one(b, "\\boxed{2}")["passed"] is False  # not a's cached verdict
    assert scorer.score_one(b, "\\boxed{4}")["passed"] is True
    with pytest.raises(Z1Error, match="several benchmarks"):
      scorer.submit("0", "\\boxed{2}")
  finally:
    scorer.close()


def test_one_source_for_id_fields():
  from z1_jax.eval import benchmarks, score
  assert score.ID_FIELDS is benchmarks.ID_FIELDS
  assert set(benchmarks.ID_FIELD.values()) <= set(score.ID_FIELDS)


# --- z1 launch: zones and local datasets -----------------------------------------------------

LAUNCH = ["launch", "tpu", "--name", "z1-run", "--accelerator", "v5p-64", "--out", "gs://b/run",
          "--allow-dirty", "--skip-plan", "--dry-run"]


def test_launch_refuses_an_unknown_region(tmp_path, capsys):
  config = tmp_path / "c.toml"
  config.write_text("")
  assert main([*LAUNCH, "--zone", "mars-east1-a", "--config", str(config)]) == 2
  captured = capsys.readouterr()
  assert "--zone 'mars-east1-a'" in captured.err and "gcloud compute" not in captured.out


def test_launch_refuses_a_local_dataset_the_workers_do_not_have(tmp_path, capsys):
  config = tmp_path / "c.toml"
  config.write_text("")
  data = tmp_path / "mine.jsonl"
  data.write_text('{"prompt": "a", "response": "b"}\n')
  base = [*LAUNCH, "--zone", "us-east5-a", "--config", str(config)]
  before = tree_digest(tmp_path)
  assert main([*base, f"data.dataset={data}"]) == 2
  captured = capsys.readouterr()
  assert f"data.dataset={data}" in captured.err and "gs://" in captured.err
  assert "gcloud compute" not in captured.out and tree_digest(tmp_path) == before
  # a path that is not here is assumed to be on the workers, and said so
  assert main([*base, "data.dataset=/mnt/disks/data/train.jsonl"]) == 0
  assert "must exist on every worker" in capsys.readouterr().out
  assert main([*base, "data.dataset=gs://b/train.jsonl"]) == 0
  assert "must exist on every worker" not in capsys.readouterr().out
