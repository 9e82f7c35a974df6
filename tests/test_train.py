"""Trainer: loss falls on the sample data, accumulation == one batch, sharded == unsharded,
bf16 compute moves fp32 weights at lr 1e-5, exact resume, SIGKILL during a save, HF fine-tune ->
export -> transformers, and a 2-process CPU "pod" == 1 process == 1 device."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from train_helpers import TINY, arith_overrides, losses, train_small_tokenizer, write_arith
from z1_jax.config import load_config
from z1_jax.model.qwen2 import create_model
from z1_jax.model.sharding import MESH_AXES, make_mesh
from z1_jax.train.loop import train
from z1_jax.train.step import build_train_step

WORKER = str(Path(__file__).with_name("train_worker.py"))


def one_device():
  return make_mesh(1, 1, 1, devices=jax.devices()[:1])


@pytest.fixture(scope="module")
def arith(tmp_path_factory):
  return write_arith(tmp_path_factory.mktemp("data") / "arith.jsonl")


def test_loss_falls_on_sample_data(tmp_path):
  from z1_jax.data.format import render_prompt, render_target
  from z1_jax.data.sources import read_examples, sample_dataset_path
  texts = [render_prompt(e.question) + render_target(e.response)
           for e in read_examples(str(sample_dataset_path()))]
  tok = train_small_tokenizer(texts, tmp_path / "tokenizer")
  cfg = load_config(TINY, ["train.max_steps=9", "train.epochs=3", "checkpoint.every_steps=100",
                           f"data.tokenizer={json.dumps(str(tok))}", 'model.preset="z1-demo"'])
  summary = train(cfg, tmp_path / "run", mesh=make_mesh(4, 1, 1, devices=jax.devices()[:4]),
                  progress=False)
  curve = losses(tmp_path / "run")
  assert summary["step"] == 9 and len(curve) == 9
  assert curve[-1] < curve[0] - 0.7  # from ~6.0 (uniform over 384 tokens)
  assert np.mean(curve[-3:]) < np.mean(curve[3:6]) < np.mean(curve[:3])  # steadily
  lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  rows = [r for r in lines if "step" in r]
  assert {"step", "loss", "grad_norm", "lr", "tokens_per_s", "mfu", "step_time_s",
          "data_wait_s"} <= set(rows[0])
  assert all(r["tokens_per_s"] > 0 and 0 < r["mfu"] < 1 and r["data_wait_s"] >= 0 for r in rows)
  # the last line: this attempt's goodput, its badput by cause adding up to the wall time
  report = lines[-1]
  assert report["event"] == "goodput" and report == summary["goodput"]
  assert report["steps"] == "1..9" and 0 < report["goodput"] < 1
  assert report["productive_s"] == pytest.approx(sum(r["step_time_s"] for r in rows), abs=0.01)
  assert report["badput_s"]["compilation"] > 0 and report["badput_s"]["restarts"] == 0
  accounted = report["productive_s"] + sum(v for k, v in report["badput_s"].items()
                                           if k != "restarts")
  # the causes are disjoint spans of the wall time (a step's time excludes the waits for later
  # batches that fall inside it), so they add up to it, up to the 3-decimal rounding of each
  assert accounted == pytest.approx(report["wall_s"], abs=0.005)
  assert list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))


# --- one step, many layouts -------------------------------------------------------------------

def _batch(cfg, seed=0):
  rng = np.random.RandomState(seed)
  g, length = cfg.train.global_batch, cfg.data.seq_len
  seg = np.ones((g, length), np.int32)
  seg[:, length // 2:] = 2  # two examples per row
  seg[:, -3:] = 0  # padding
  pos = np.concatenate([np.arange(length // 2), np.arange(length - length // 2)])[None]
  mask = (seg > 0).astype(np.int32)
  mask[:, :5] = 0  # prompt
  return {"inputs": rng.randint(0, VOCAB, (g, length)).astype(np.int32),
          "targets": rng.randint(0, VOCAB, (g, length)).astype(np.int32),
          "segment_ids": seg, "positions": np.broadcast_to(pos, (g, length)).astype(np.int32),
          "loss_mask": mask}


def _run_steps(cfg, mesh, steps=2):
  ts = build_train_step(cfg, mesh)
  model = create_model(ts.model_cfg, ts.rules, seed=1)
  state = ts.init_state(nnx.to_pure_dict(nnx.state(model, nnx.Param)), 0)
  out = []
  for i in range(steps):
    batch = {k: jax.device_put(v, ts.batch_sharding) for k, v in _batch(cfg, i).items()}
    state, m = ts.step(state, batch)
    out.append(float(m["loss"]))
  return out, jax.device_get(state["params"])


def _close(a, b):
  """Losses to 2e-5; weights to 1e-4, a tenth of one lr-1e-3 step (Adam divides by sqrt(v), so
  a gradient near zero turns a rounding difference into a visible one in a few elements)."""
  np.testing.assert_allclose(a[0], b[0], rtol=2e-5, atol=2e-5)
  for x, y in zip(jax.tree.leaves(a[1]), jax.tree.leaves(b[1])):
    np.testing.assert_allclose(x, y, rtol=0, atol=1e-4)


VOCAB = 384  # the z1-demo preset's: one step's work is the layers, not a 152k LM head
STEP_CFG = ["data.seq_len=32", "train.global_batch=8", "train.peak_lr=1e-3",
            "train.warmup_steps=0", 'model.preset="z1-demo"']


def test_accumulation_and_sharding_match_one_device_one_batch():
  base = _run_steps(load_config(TINY, STEP_CFG), one_device())
  accum = _run_steps(load_config(TINY, STEP_CFG + ["train.grad_accum=4"]), one_device())
  _close(base, accum)
  for shape, grad_accum in (((2, 2, 2), 2), ((1, 2, 4), 1)):
    sharded = _run_steps(load_config(TINY, STEP_CFG + [f"train.grad_accum={grad_accum}"]),
                         make_mesh(*shape))
    _close(base, sharded)


def test_bf16_compute_moves_fp32_master_weights_at_lr_1e5():
  over = STEP_CFG + ["train.peak_lr=1e-5", "train.schedule=\"constant\"", "model.dtype=bfloat16"]
  cfg = load_config(TINY, over)
  ts = build_train_step(cfg, one_device())
  model = create_model(ts.model_cfg, ts.rules, seed=1)
  before = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  before = jax.tree.map(np.asarray, before)
  state = ts.init_state(jax.tree.map(jnp.asarray, before), 0)
  batch = {k: jnp.asarray(v) for k, v in _batch(cfg).items()}
  state, _ = ts.step(state, batch)
  after = jax.device_get(state["params"])
  q0, q1 = before["layers"][0]["attn"]["q_proj"], after["layers"][0]["attn"]["q_proj"]
  assert q1.dtype == np.float32
  moved = np.abs(q1 - q0)
  assert (moved > 0).mean() > 0.99 and 0.3e-5 < moved.mean() < 1.5e-5  # Adam: ~lr per element
  # The bug the fp32 masters fix: the same update added to bf16 weights of magnitude >= 0.01
  # (bf16 spacing there >= 6e-5) rounds away.
  big = np.abs(q0) >= 0.01
  w16 = q0.astype(jnp.bfloat16)
  assert (moved[big] > 0).all() and big.mean() > 0.4
  assert ((w16.astype(np.float32) + (q1 - q0)).astype(jnp.bfloat16) != w16)[big].mean() < 0.01


# --- the loop: resume, SIGKILL, HF round trip ---------------------------------------------------

def test_exact_resume(tmp_path, arith):
  mesh = make_mesh(2, 2, 2)
  with_eval = arith_overrides(arith, **{"data.eval_dataset": json.dumps(str(arith)),
                                        "train.eval_every": 2})
  full = train(load_config(TINY, with_eval), tmp_path / "full", mesh, False)
  assert full["step"] == 4
  rows = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows if "eval_loss" in r] == [2, 4]  # held-out loss every 2 steps
  assert rows[3]["eval_loss"] < rows[1]["eval_loss"] < 12
  first = train(load_config(TINY, arith_overrides(arith, **{"train.max_steps": 2})),
                tmp_path / "split", mesh, False)
  assert first["last_checkpoint"] == 2
  rest = train(load_config(TINY, arith_overrides(arith)), tmp_path / "split", mesh, False)
  assert rest["resumed_from"] == 2 and rest["step"] == 4
  np.testing.assert_allclose(losses(tmp_path / "split"), losses(tmp_path / "full"), rtol=0,
                             atol=1e-6)
  lines = [json.loads(x) for x in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
  assert [r.get("step", r.get("event")) for r in lines] == [1, 2, "goodput", 3, 4, "goodput"]
  from z1_jax.checkpoint.orbax_io import load_params
  unrolled, scanned = load_params(tmp_path / "split"), load_params(tmp_path / "split",
                                                                   scan_layers=True)
  assert scanned.cfg.scan_layers and scanned.layers.attn.q_proj.ndim == 4  # stacked on restore
  tokens = np.arange(1, 20, dtype=np.int32)[None]
  np.testing.assert_allclose(np.asarray(scanned(tokens)), np.asarray(unrolled(tokens)), atol=1e-5)


def test_sigkill_during_save_keeps_latest_readable(tmp_path, arith):
  run = tmp_path / "run"
  over = arith_overrides(arith, **{"checkpoint.every_steps": 1, "train.epochs": 3})
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  proc = subprocess.Popen([sys.executable, "-m", "z1_jax", "train", "--config", str(TINY),
                           "--out", str(run), *over], env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  killed_in_save = False
  deadline = time.time() + 180
  while proc.poll() is None and time.time() < deadline:
    ckpts = run / "checkpoints"
    if ckpts.is_dir() and any("tmp" in p.name for p in ckpts.iterdir()) and any(
        p.name.isdigit() for p in ckpts.iterdir()):
      proc.send_signal(signal.SIGKILL)
      killed_in_save = True
      break
    time.sleep(0.002)
  proc.wait()
  assert killed_in_save, "the run ended before a save with an earlier step could be caught"
  from z1_jax.checkpoint.orbax_io import load_params, read_config
  _, latest = read_config(run)
  load_params(run)  # the latest complete step reads
  summary = train(load_config(TINY, over), run, one_device(), False)
  assert summary["resumed_from"] == latest and summary["step"] == 12
  assert not [p for p in (run / "checkpoints").iterdir() if "tmp" in p.name]


def test_finetune_from_hf_export_reload_in_transformers(tmp_path, arith):
  import torch
  import transformers
  from z1_jax.checkpoint.orbax_io import load_params
  torch.manual_seed(0)
  hf_cfg = transformers.Qwen2Config(vocab_size=384, hidden_size=32, intermediate_size=64,
                                    num_hidden_layers=2, num_attention_heads=4,
                                    num_key_value_heads=2, tie_word_embeddings=False,
                                    max_position_embeddings=128)
  transformers.Qwen2ForCausalLM(hf_cfg).save_pretrained(tmp_path / "hf")
  over = arith_overrides(arith, **{"model.preset": '""', "train.max_steps": 2,
                                   "model.hf_checkpoint": json.dumps(str(tmp_path / "hf")),
                                   "model.scan_layers": "true"})
  train(load_config(TINY, over), tmp_path / "run", make_mesh(2, 2, 2), False)
  model = load_params(tmp_path / "run", scan_layers=False)  # trained scanned, restored unrolled
  from z1_jax.cli import main
  assert main(["convert", "orbax-to-hf", "--ckpt", str(tmp_path / "run" / "checkpoints" / "2"),
               "--out", str(tmp_path / "export"), "--dtype", "float32"]) == 0  # a step dir
  hf = transformers.Qwen2ForCausalLM.from_pretrained(tmp_path / "export").eval()
  tokens = np.random.RandomState(0).randint(0, 384, (4, 24)).astype(np.int32)
  with torch.no_grad():
    ref = hf(torch.as_tensor(tokens, dtype=torch.long)).logits.numpy()
  np.testing.assert_allclose(np.asarray(model(tokens)), ref, rtol=1e-4, atol=1e-4)
  # a new mesh; batch 2 must divide data x fsdp (strict sharding)
  other = load_params(tmp_path / "run" / "checkpoints" / "2", mesh=make_mesh(1, 2, 4))
  np.testing.assert_allclose(np.asarray(other(tokens)), ref, rtol=1e-4, atol=1e-4)  # new mesh
  orig = transformers.Qwen2ForCausalLM.from_pretrained(tmp_path / "hf").eval()
  with torch.no_grad():
    assert not np.allclose(orig(torch.as_tensor(tokens, dtype=torch.long)).logits.numpy(), ref,
                           atol=1e-4)  # the fine-tune changed the weights


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, arith, capsys):
  from z1_jax.checkpoint.orbax_io import read_config
  from z1_jax.cli import main
  run = tmp_path / "run"
  over = arith_overrides(arith, **{"train.peak_lr": 1e30, "checkpoint.every_steps": 1,
                                   "train.warmup_steps": 0, "mesh.data": 1})
  env_devices = ["mesh.fsdp=8"]  # the tests' 8 CPU devices
  assert main(["train", "--config", str(TINY), "--out", str(run), *over, *env_devices]) == 2
  err = capsys.readouterr().err
  assert "not finite" in err and "Last good checkpoint: step" in err and "Traceback" not in err
  rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
  rows = [r for r in rows if "step" in r]
  bad_step = len(rows) + 1
  assert all(np.isfinite(r["loss"]) for r in rows) and f"step {bad_step}:" in err
  _, latest = read_config(run)
  assert latest == bad_step - 1 >= 1  # the last good step, readable


@pytest.mark.slow
def test_two_processes_equal_one_process(tmp_path, arith):
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  procs = [subprocess.Popen([sys.executable, WORKER, str(tmp_path / "pod"), str(i), str(port),
                             str(arith)]) for i in range(2)]
  for p in procs:
    assert p.wait(timeout=400) == 0
  over = arith_overrides(arith, **{"train.max_steps": 3})
  single = train(load_config(TINY, over), tmp_path / "one", make_mesh(2, 2, 2), False)
  assert single["step"] == 3
  ref = losses(tmp_path / "one")  # (one process equals one device: the accumulation test)
  for name in ("data_across", "tensor_across"):
    np.testing.assert_allclose(losses(tmp_path / "pod" / name), ref, rtol=0, atol=1e-5)
  rows = json.loads((tmp_path / "pod" / "rows.json").read_text())
  # batch axis across processes: disjoint rows; tensor axis across: both feed every row
  assert set(rows["data_across"][0]).isdisjoint(rows["data_across"][1])
  assert rows["tensor_across"][0] == rows["tensor_across"][1] == list(range(8))
  # tokenized once: process 0 wrote the shared cache, process 1 read the same tokens from it
  enc = [json.loads((tmp_path / "pod" / f"encoded{i}.json").read_text()) for i in range(2)]
  assert [e["from_cache"] for e in enc] == [False, True]
  assert enc[0]["tokens"] == enc[1]["tokens"]
  assert MESH_AXES == ("data", "fsdp", "tensor")
