"""Inference on a pod, the way CI can run one: `z1 generate --prompts` and `z1 sweep` on 2
processes x 2 CPU devices (gloo) write the same files as one process on one device; and
checkpoints named by `file://` URIs (the code path of `gs://`) are read by generate, sweep and
`convert orbax-to-hf`."""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

SWEEP_FILES = ("samples.jsonl", "summary.json", "summary.md", "sweep.png")


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
  """(tiny HF dir with the real tokenizer, the same weights as an Orbax checkpoint, AIME rows)."""
  import z1_jax
  from z1_jax.checkpoint.hf import save_hf
  from z1_jax.checkpoint.orbax_io import save_params
  from z1_jax.data.tokenizer import load_tokenizer
  from z1_jax.eval.benchmarks import _package_file
  from z1_jax.model.config import get_preset
  from z1_jax.model.qwen2 import create_model
  root = tmp_path_factory.mktemp("pod-infer")
  save_hf(create_model(get_preset("tiny"), seed=3), root / "hf", dtype="float32",
          tokenizer=load_tokenizer())
  save_params(z1_jax.load_hf(root / "hf"), root / "ck")
  rows = json.loads(_package_file("mmath", "mmath", "en.json").read_text())
  (root / "aime.json").write_text(json.dumps([r for r in rows
                                              if r["data_source"] == "AIME2024"][:3]))
  return root


def _start(argv: list[str], processes: int, **popen) -> list[subprocess.Popen]:
  """Starts `z1 ARGV` as one process on one device, or as `processes` x 2 CPU devices."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  if processes == 1:
    env.pop("XLA_FLAGS", None)
    runs = [[]]
  else:
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    with socket.socket() as s:
      s.bind(("127.0.0.1", 0))
      port = s.getsockname()[1]
    runs = [["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(processes),
             "--process-id", str(i)] for i in range(processes)]
  return [subprocess.Popen([sys.executable, "-m", "z1_jax", *argv, *extra], env=env,
                           text=True, **popen) for extra in runs]


def _z1(argv: list[str], processes: int, timeout: int = 400) -> list[str]:
  """Runs `z1 ARGV` (see `_start`) to the end; returns each process's output."""
  procs = _start(argv, processes, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  outs = []
  for p in procs:
    out, _ = p.communicate(timeout=timeout)
    assert p.returncode == 0, out[-3000:]
    outs.append(out)
  return outs


def _requests(path: Path) -> Path:
  rows = [{"id": "plain", "prompt": "def add(a, b):", "max_new_tokens": 9},
          {"id": "budget", "prompt": "Compute 17 + 25.", "thinking_budget": 20,
           "answer_tokens": 4},
          {"id": "sampled", "prompt_ids": [3, 4, 5], "thinking_budget": 16, "answer_tokens": 3,
           "temperature": 0.8, "top_k": 20, "seed": 7}]
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return path


@pytest.mark.slow
def test_generate_on_two_processes_equals_one_process(model_dirs, tmp_path):
  req = _requests(tmp_path / "req.jsonl")
  base = ["generate", "--hf", str(model_dirs / "hf"), "--prompts", str(req), "--batch-size",
          "2", "--no-progress"]  # 3 requests through 2 slots: rows enter and leave
  _z1([*base, "--out", str(tmp_path / "one.jsonl")], 1)
  # the batch across the processes (heads across them: the sweep test's mesh 1,1,4)
  _z1([*base, "--mesh", "2,1,2", "--out", str(tmp_path / "pod.jsonl")], 2)
  assert (tmp_path / "pod.jsonl").read_text() == (tmp_path / "one.jsonl").read_text()
  rows = [json.loads(x) for x in (tmp_path / "one.jsonl").read_text().splitlines()]
  assert [r["id"] for r in rows] == ["plain", "budget", "sampled"]
  assert rows[0]["answer_tokens"] == 0 and len(rows[0]["tokens"]) <= 9


@pytest.mark.slow
def test_sweep_on_two_processes_equals_one_process_from_a_file_uri(model_dirs, tmp_path):
  base = ["sweep", "--benchmark", "humaneval,aime2024", "--limit", "3", "--data",
          f"aime2024={model_dirs / 'aime.json'}", "--budgets", "16,24", "--answer-tokens", "6",
          "--batch-size", "4", "--workers", "2", "--no-progress"]
  # an Orbax checkpoint named by a URI, read by one process and by a pod (heads across it)
  ck = ["--ckpt", f"file://{model_dirs / 'ck'}", "--tokenizer", str(model_dirs / "hf")]
  _z1([*base, *ck, "--out", str(tmp_path / "one")], 1)
  first, second = _z1([*base, *ck, "--mesh", "1,1,4", "--out", str(tmp_path / "pod")], 2)
  assert '"accuracy"' in first and '"accuracy"' not in second  # process 0 reports, alone
  for name in SWEEP_FILES:
    assert (tmp_path / "pod" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name
  summary = json.loads((tmp_path / "pod" / "summary.json").read_text())
  assert set(summary["benchmarks"]) == {"humaneval", "aime2024"}
  assert summary["model"] == f"ckpt:{model_dirs / 'ck'}"
  assert summary["config"]["dtype"] == "float32"


def test_convert_reads_and_writes_file_uris_and_refuses_other_uri_outputs(model_dirs, tmp_path,
                                                                         capsys):
  import numpy as np
  from safetensors.numpy import load_file

  from z1_jax.cli import main
  assert main(["convert", "orbax-to-hf", "--ckpt", f"file://{model_dirs / 'ck'}", "--out",
               f"file://{tmp_path / 'hf'}", "--dtype", "float32"]) == 0
  got, want = (load_file(d / "model.safetensors") for d in (tmp_path / "hf", model_dirs / "hf"))
  assert got.keys() == want.keys()
  for k in want:
    np.testing.assert_array_equal(got[k], want[k])
  assert main(["convert", "hf-to-orbax", "--hf", str(model_dirs / "hf"), "--out",
               f"file://{tmp_path / 'ck'}"]) == 0
  assert (tmp_path / "ck").is_dir() and not (tmp_path / "file:").exists()
  capsys.readouterr()
  assert main(["convert", "hf-to-orbax", "--hf", str(model_dirs / "hf"), "--out",
               "gs://bucket/ck"]) == 2
  assert "--out gs://bucket/ck: this output is written on local disk" in capsys.readouterr().err


@pytest.mark.slow
def test_serve_on_two_processes_answers_as_one_process_generates(model_dirs, tmp_path):
  """Process 0 serves HTTP and broadcasts each turn's requests; both run the engine. One prompt
  is 10,000 token ids, 78 KB of JSON on the wire: past the 64 KiB of a turn's first broadcast
  (it killed the engine thread), the rest goes in a second one. A request with n=2 samples, a
  stop string and log-probabilities (its stop strings and stop ids cross the broadcast as
  lists) equals one process's engine."""
  import dataclasses
  import random

  import httpx
  import openai

  import z1_jax
  from z1_jax.data.tokenizer import load_tokenizer
  from z1_jax.infer.engine import Engine, Request
  ids = load_tokenizer().encode("print(1 + 1)", add_special_tokens=False)
  engine = Engine(z1_jax.load_hf(model_dirs / "hf"), slots=2, max_seq_len=64,
                  tokenizer=load_tokenizer(model_dirs / "hf"))
  samples = [Request(i, ids, max_new_tokens=12, temperature=1.0, seed=7, row_id=i, logprobs=2)
             for i in range(2)]
  text = engine.run(samples)[0].text
  stop = text[4:6]
  want = engine.run([dataclasses.replace(r, id=f"s{r.row_id}", stop=(stop,)) for r in samples])
  assert want[0].stop_reason == stop and want[0].text != want[1].text
  del engine
  rng = random.Random(0)
  long_ids = [rng.randrange(100_000, 151_000) for _ in range(10_000)]
  assert len(json.dumps(long_ids)) > 1.2 * (1 << 16)
  req = tmp_path / "req.jsonl"
  req.write_text(json.dumps({"id": "short", "prompt_ids": ids, "thinking_budget": 18,
                             "answer_tokens": 6}) + "\n" +
                 json.dumps({"id": "long", "prompt_ids": long_ids, "max_new_tokens": 4}) + "\n")
  _z1(["generate", "--hf", str(model_dirs / "hf"), "--prompts", str(req), "--out",
       str(tmp_path / "one.jsonl"), "--batch-size", "2", "--no-progress"], 1)
  short, long = [json.loads(x) for x in (tmp_path / "one.jsonl").read_text().splitlines()]
  procs = _start(["serve", "--hf", str(model_dirs / "hf"), "--port", "0", "--batch-size", "2",
                  "--max-seq-len", "10016", "--mesh", "2,1,2"], 2, stdout=subprocess.DEVNULL,
                 stderr=subprocess.PIPE)
  try:
    from z1_jax.serve.command import ready_url
    url = ready_url(procs[0].stderr, [])
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=300)
    r = client.completions.create(model="hf", prompt=long_ids, max_tokens=4, temperature=0)
    assert r.usage.prompt_tokens == 10_000 and r.usage.completion_tokens == len(long["tokens"])
    assert r.choices[0].text == long["text"]
    r = client.completions.create(model="hf", prompt=ids, max_tokens=24, temperature=0,
                                  extra_body={"thinking_token_budget": 18})
    assert r.model_extra["z1"]["thinking_tokens"] == short["thinking_tokens"]
    assert r.usage.completion_tokens == len(short["tokens"])
    trigger = "\n\nI overthought it, the final answer should be:\n\n"
    assert r.choices[0].model_extra["reasoning_content"] + trigger + r.choices[0].text == short[
        "text"]
    r = client.completions.create(model="hf", prompt=ids, n=2, max_tokens=12, temperature=1.0,
                                  seed=7, stop=[stop], logprobs=2)
    for choice, gen in zip(r.choices, want, strict=True):
      assert (choice.text, choice.finish_reason) == (gen.text, gen.finish_reason)
      assert choice.logprobs.token_logprobs == pytest.approx(gen.logprobs, abs=1e-4)
      assert len(choice.logprobs.tokens) == len(gen.tokens)
    assert httpx.get(url + "/health", timeout=30).json()["status"] == "ok"
  finally:
    for p in procs:
      p.send_signal(signal.SIGTERM)
    codes = [p.wait(timeout=120) for p in procs]
  assert codes == [0, 0]  # SIGTERM: process 0 stops serving and tells process 1 to stop


_LOCAL_ENGINE = """
import json, sys
from z1_jax import distributed
distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
import jax, z1_jax
from z1_jax.infer.engine import Engine, Request
from z1_jax.model.sharding import LogicalRules, SERVING_RULES, make_mesh
rank = jax.process_index()
rules = LogicalRules(make_mesh(2, 1, 1, devices=jax.local_devices()), SERVING_RULES)
model = z1_jax.load_hf(sys.argv[3], rules=rules)
engine = Engine(model, slots=2, max_seq_len=64, eos_ids=[])
reqs = [Request(i, [3 + rank, 4, 5 + i], max_new_tokens=6 + 5 * rank * i) for i in range(3)]
print(json.dumps([g.tokens for g in engine.run(reqs)]))
"""


@pytest.mark.slow
def test_each_host_may_run_its_own_engine_on_its_own_devices(model_dirs):
  """An engine on one process's devices reads its rows locally, with no collective: two
  hosts decoding different work do not meet in gloo (before: a size-mismatch abort)."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  procs = [subprocess.Popen([sys.executable, "-c", _LOCAL_ENGINE, f"127.0.0.1:{port}", str(i),
                             str(model_dirs / "hf")], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for i in range(2)]
  outs = [p.communicate(timeout=300)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outs
  lengths = [[len(t) for t in json.loads(out.strip().splitlines()[-1])] for out in outs]
  assert lengths == [[6, 6, 6], [6, 11, 16]]
