"""`z1 train`: data -> model (HF, scratch, or the run's latest checkpoint) -> steps -> Orbax.

Order of work, so that bad input fails before anything is compiled or written: config and
output directory checks, mesh, batch divisibility, the model's config (HF `config.json` or the
checkpoint's), tokenization and packing. Only then is the output directory created and the step
compiled. An output directory holding a run (`z1_run.json`) resumes from its latest complete
checkpoint; the settings that shape the trajectory must match the run's (see `_MAY_CHANGE`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from pathlib import Path

import jax
from flax import nnx
from jax.sharding import Mesh
from tqdm.auto import tqdm

from z1_jax.config import ConfigError, RunConfig, model_config, runtime_overrides
from z1_jax.data.pack import ROW_FIELDS
from z1_jax.errors import Z1Error
from z1_jax.paths import as_path, is_uri
from z1_jax.train.checkpoints import Checkpointer
from z1_jax.train.metrics import MetricsLog, read_metrics, peak_flops, to_float, to_host, train_flops_per_token
from z1_jax.train.step import build_train_step, check_batch_fits, make_run_mesh

RUN_FILE = "z1_run.json"
# Settings that may differ when a run resumes; every other one must match the run's.
_MAY_CHANGE = {"train.max_steps", "train.eval_every", "train.eval_batches",
               "train.peak_flops_per_device", "checkpoint.every_steps", "checkpoint.keep",
               "checkpoint.async_save", "mesh.data", "mesh.fsdp", "mesh.tensor",
               "model.remat_policy", "data.cache_dir", "data.eval_dataset", "data.eval_split",
               "train.compilation_cache", "train.profile_steps", "train.resume_on_changed_data",
               "train.peer_timeout_s"}
# Fields of Qwen2Config that describe the architecture (a preset must agree with HF weights).
_ARCH = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
         "num_kv_heads", "dim_per_head", "tie_word_embeddings")


class TrainingDiverged(Z1Error):
  """Loss or gradient norm became NaN/inf; the run stopped, earlier checkpoints kept."""


def _flat(d: dict) -> dict[str, object]:
  return {f"{s}.{k}": v for s, body in d.items() for k, v in body.items()}


def _check_out_dir(out: Path, cfg: RunConfig) -> dict | None:
  """The run record of an earlier run of the same settings in `out` (resume), or None when
  `out` is new, empty, or holds a run that never saved a checkpoint (it failed before step 1
  was saved: started again with the new settings). Anything else is refused, before any work."""
  if out.exists() and not out.is_dir():
    raise Z1Error(f"--out {out}: exists and is not a directory")
  if not is_uri(out):
    for parent in out.parents:
      if parent.exists():
        if not parent.is_dir():
          raise Z1Error(f"--out {out}: {parent} is a file, not a directory")
        break
  if not out.is_dir() or not any(out.iterdir()):
    return None
  run_file = out / RUN_FILE
  if not run_file.is_file():
    raise Z1Error(f"--out {out}: directory exists, is not empty and holds no {RUN_FILE} (not "
                  "a z1 train run); give a new or empty directory")
  try:
    record = json.loads(run_file.read_text())
    before = _flat(record["config"])
  except (ValueError, KeyError) as e:
    raise Z1Error(f"{run_file}: unreadable run record ({e})") from None
  if (out / "metrics.jsonl").exists():
    read_metrics(out / "metrics.jsonl")  # an unreadable line stops the resume before any work
  ckpts = out / "checkpoints"
  if not (ckpts.is_dir() and any(p.name.isdigit() for p in ckpts.iterdir())):
    return None  # no step was ever saved: nothing to resume, nothing to keep consistent with
  now = _flat(cfg.to_dict())
  for key, value in now.items():
    if key not in _MAY_CHANGE and key in before and before[key] != value:
      raise ConfigError(f"{key} = {value!r} differs from the run in {out} ({before[key]!r}); "
                        f"resume with the same value or use a new --out directory")
  return record


def _write_run_file(out: Path, cfg: RunConfig, data: dict) -> None:
  tmp = out / f".{RUN_FILE}.tmp"
  tmp.write_text(json.dumps({"config": cfg.to_dict(), "source": cfg.source, "data": data},
                            indent=2))
  tmp.replace(out / RUN_FILE)


def load_packed(cfg: RunConfig, cache_dir, eval_split: bool = False, progress: bool = True):
  """Tokenized, packed rows of the train (or held-out) split; None when no held-out split.
  Tokenized once per pod into `data.cache_dir` (multi-process default: `<out>/cache`;
  `encode_shared`)."""
  from z1_jax.data.encode import EncodeConfig, encode_shared
  from z1_jax.data.pack import pack
  from z1_jax.data.sources import Columns, sample_dataset_path
  from z1_jax.data.tokenizer import load_tokenizer
  d = cfg.data
  if eval_split and not d.eval_dataset:
    return None
  dataset = d.eval_dataset if eval_split else (d.dataset or str(sample_dataset_path()))
  tokenizer = load_tokenizer(d.tokenizer or None)
  ecfg = EncodeConfig(dataset=dataset, tokenizer=d.tokenizer or None,
                      system_prompt=d.system_prompt, strip_think_tags=d.strip_think_tags,
                      columns=Columns(d.question_column, d.response_column),
                      on_bad_row=d.on_bad_row, split=d.eval_split if eval_split else d.split)
  encoded = encode_shared(ecfg, cache_dir=d.cache_dir or cache_dir, tokenizer=tokenizer,
                          progress=progress)
  return pack(encoded, d.seq_len, tokenizer.pad_token_id or 0, d.overlong)


def _model_config(cfg: RunConfig, ckpt: Checkpointer | None, latest: int | None):
  """(architecture + run numerics, HF checkpoint dir to load or None)."""
  if latest is not None:
    return ckpt.read_model_config(latest).replace(**runtime_overrides(cfg)), None
  if cfg.model.hf_checkpoint:
    from z1_jax.checkpoint.hf import read_hf_config, resolve_checkpoint_dir
    hf_dir = resolve_checkpoint_dir(cfg.model.hf_checkpoint)
    mcfg = read_hf_config(hf_dir, **runtime_overrides(cfg))
    if cfg.model.preset:
      preset = model_config(cfg)
      diff = [f for f in _ARCH if getattr(preset, f) != getattr(mcfg, f)]
      if diff:
        raise ConfigError(f"model.preset = {cfg.model.preset!r} disagrees with "
                          f"{hf_dir}/config.json on {', '.join(diff)}; set model.preset = \"\" "
                          "or the matching preset")
    return mcfg, hf_dir
  return model_config(cfg), None


def evaluate(ts, params, packed, cfg: RunConfig, mesh: Mesh) -> float:
  """Mean target-token loss over the held-out rows (in order, micro-batch rows at a time)."""
  from z1_jax.data.pipeline import GlobalBatches, PipelineConfig
  batches = GlobalBatches(packed, PipelineConfig(cfg.micro_batch(), epochs=1, shuffle=False),
                          mesh)
  n = len(batches) if not cfg.train.eval_batches else min(len(batches), cfg.train.eval_batches)
  total, count = 0.0, 0
  for _ in range(n):
    batch = next(batches)
    s, c = ts.eval(params, {k: batch[k] for k in ROW_FIELDS})
    total += to_float(s)
    count += int(to_host(c))
  return total / max(count, 1)


class AlreadyDone(Exception):
  """Internal: the run is at or past its target; nothing is changed."""


def _vocab_check(packed, eval_packed, model_cfg, cfg: RunConfig) -> None:
  """Token ids must index the model's embedding (else the loss is NaN): before compiling."""
  top = max(int(p.encoded.tokens.max(initial=0)) for p in (packed, eval_packed) if p is not None)
  if top >= model_cfg.vocab_size:
    tok = cfg.data.tokenizer or "the bundled Qwen2.5 tokenizer"
    model = cfg.model.hf_checkpoint or f"model.preset = {cfg.model.preset!r}"
    raise ConfigError(f"data.tokenizer ({tok}) produces token id {top}, outside the model's "
                      f"vocabulary of {model_cfg.vocab_size} ({model}); use the model's own "
                      "tokenizer or a model with a vocabulary that covers it")


def check_same_config(cfg: RunConfig, out, record: dict | None = None) -> None:
  """Every process runs the same resolved config into the same `--out` and found the same run
  there (`record`, from `_check_out_dir`), else a ConfigError on each naming the processes and
  what differs from process 0 (a no-op on one process). Also the point before which no process
  writes: a process still checking `--out` cannot mistake another's first files for a foreign
  directory."""
  from z1_jax.distributed import gather
  found = "nothing" if record is None else f"the run of {json.dumps(record['config'])[:80]}..."
  mine = {"config": cfg.to_dict(), "out": str(out), "record": record, "found": found}
  everyone = [json.loads(v) for v in gather("config", json.dumps(mine, sort_keys=True))]
  lead = _flat(everyone[0]["config"]) | {"--out": everyone[0]["out"]}
  differ = []
  for process, theirs in enumerate(everyone[1:], start=1):
    flat = _flat(theirs["config"]) | {"--out": theirs["out"]}
    keys = [k for k in sorted(set(lead) | set(flat)) if lead.get(k) != flat.get(k)]
    if keys:
      differ.append(f"process {process}: " + ", ".join(
          f"{k} = {flat.get(k)!r} (process 0: {lead.get(k)!r})" for k in keys[:5]))
    elif theirs["record"] != everyone[0]["record"]:
      differ.append(f"process {process} finds {theirs['found']} in --out {out} (process 0: "
                    f"{everyone[0]['found']}): --out must be one directory every process "
                    "shares (gs:// on a pod)")
  if differ:
    raise ConfigError(f"the processes do not run the same config (this is process "
                      f"{jax.process_index()}): {'; '.join(differ)}. Start every process with "
                      "the same --config, overrides and --out")


def train(cfg: RunConfig, out_dir: str | os.PathLike, mesh: Mesh | None = None,
          progress: bool = True) -> dict:
  """Runs (or resumes) training into `out_dir`; returns a summary.

  `summary["stopped_by"]` is "SIGINT" or "SIGTERM" when a signal (on any process) stopped the
  run (the step it reached is saved), None when it ran to its target. A run already at or past
  its target changes nothing and says so (`summary["already_done"]`). Signals and peers are
  watched for the whole call (`train/interrupt.py`)."""
  from z1_jax.train.interrupt import StopSignals
  from z1_jax import compile_cache
  with StopSignals(cfg.train.peer_timeout_s) as signals, compile_cache.kept():
    return _train(cfg, out_dir, mesh, progress, signals)


def _train(cfg: RunConfig, out_dir, mesh: Mesh | None, progress: bool, signals) -> dict:
  from z1_jax.data.pipeline import GlobalBatches, PipelineConfig
  from z1_jax.train.data_identity import check_resume, check_same_on_every_host, fingerprint
  from z1_jax.train.goodput import Goodput
  from z1_jax import compile_cache
  from z1_jax.train.observe import ProfileWindow
  from z1_jax.config import parse_profile_steps
  good = Goodput()
  out = as_path(out_dir)  # a local directory, or gs:// shared by every host of a pod
  record = _check_out_dir(out, cfg)  # refuses a foreign or changed run before anything compiles
  check_same_config(cfg, out, record)  # every process has checked --out before any writes
  mesh = mesh if mesh is not None else make_run_mesh(cfg)
  check_batch_fits(cfg, mesh)
  main = jax.process_index() == 0
  t = cfg.train
  ckpt_root = out / "checkpoints"
  ckpt = Checkpointer(ckpt_root, cfg.checkpoint, create=False) if (
      record is not None and ckpt_root.is_dir()) else None
  latest = ckpt.latest_step() if ckpt is not None else None
  signals.begin(latest or 0)  # a stop asked from here on comes after this attempt's first step
  signals.last_saved = latest
  if latest is not None and t.max_steps and latest >= t.max_steps:
    ckpt.close()
    return _already_done(out, latest, t.max_steps, "train.max_steps")
  model_cfg, hf_dir = _model_config(cfg, ckpt, latest)

  t_data = time.perf_counter()
  # a pod shares one tokenization through the run directory; one host needs no default cache
  shared = out / "cache" if jax.process_count() > 1 else None
  packed = load_packed(cfg, shared, progress=main and progress)
  eval_packed = load_packed(cfg, shared, eval_split=True, progress=main and progress)
  data_id = fingerprint(packed)
  check_same_on_every_host(data_id)
  if record is not None:
    check_resume(record.get("data"), data_id, out / RUN_FILE, t.resume_on_changed_data)
  good.add("data", time.perf_counter() - t_data)
  _vocab_check(packed, eval_packed, model_cfg, cfg)
  steps_per_epoch = len(packed) // t.global_batch
  if steps_per_epoch == 0:
    raise ConfigError(f"train.global_batch = {t.global_batch}: the data packs into only "
                      f"{len(packed)} rows of data.seq_len = {cfg.data.seq_len}")
  if eval_packed is not None and len(eval_packed) < cfg.micro_batch():
    raise ConfigError(f"data.eval_dataset: {len(eval_packed)} packed rows, fewer than one "
                      f"micro-batch of {cfg.micro_batch()}")
  total = t.epochs * steps_per_epoch
  target = min(t.max_steps, total) if t.max_steps else total
  if latest is not None and latest >= target:
    ckpt.close()
    return _already_done(out, latest, target, "its length")
  cache_dir = compile_cache.set_up(t.compilation_cache, out)

  ts = build_train_step(cfg, mesh, model_cfg, total)
  batches = GlobalBatches(packed, PipelineConfig(t.global_batch, t.seed, t.epochs), mesh)
  if latest is not None:
    t_restore = time.perf_counter()
    state, data_state = ckpt.restore(latest, ts.abstract_state)
    batches.set_state(data_state)
    good.add("checkpointing", time.perf_counter() - t_restore)
    step = latest
  else:
    if hf_dir is not None:
      from z1_jax.checkpoint.hf import load_hf
      model = load_hf(hf_dir, mesh=mesh, rules=ts.rules, **runtime_overrides(cfg))
    else:
      from z1_jax.model.qwen2 import create_model
      model = create_model(model_cfg, ts.rules, seed=t.seed)
    state = ts.init_state(nnx.to_pure_dict(nnx.state(model, nnx.Param)), t.seed)
    del model
    step = 0

  # All checks passed: from here on the output directory is written.
  if main:
    out.mkdir(parents=True, exist_ok=True)
    _write_run_file(out, cfg, data_id)
  if ckpt is not None:
    ckpt.close()
  ckpt = Checkpointer(ckpt_root, cfg.checkpoint)
  log = MetricsLog(out, step, main)
  tokens_per_step = t.global_batch * cfg.data.seq_len
  flops_per_step = train_flops_per_token(model_cfg, cfg.data.seq_len) * tokens_per_step
  peak = peak_flops(mesh.devices.flat, t.peak_flops_per_device)
  profile = ProfileWindow(parse_profile_steps(t.profile_steps), out / "tb")
  first_step = step
  last_saved, last, stopped_by = latest, {}, None
  bar = tqdm(total=target, initial=step, unit="step", desc="train",
             disable=not (main and progress))
  good.add("startup", time.perf_counter() - good.start - sum(good.seconds.values()))
  good.add("restarts", log.dropped_step_seconds)
  t_compile = time.perf_counter()
  with _quiet_cache_warnings():
    step_fn = ts.step.lower(*ts.abstract()).compile()
  good.add("compilation", time.perf_counter() - t_compile)

  def finish(p: dict, write: bool = True) -> dict:
    """Reads step p's metrics (waits for that step only), checks them, logs them."""
    nonlocal done_at
    metrics = jax.tree.map(to_host, p.pop("metrics"))
    now = time.perf_counter()
    # the step's time: since it was dispatched or the previous step was read, whichever is later,
    # less the waits for later batches in that span (counted as data badput, not twice)
    since, data_then = max(done_at, (p["dispatched"], p["data_mark"]))
    dt = now - since - (good.seconds["data"] - data_then)
    done_at = (now, good.seconds["data"])
    good.productive += dt
    loss, grad_norm = to_float(metrics["loss"]), to_float(metrics["grad_norm"])
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
      where = (f"step {last_saved} in {ckpt_root}" if last_saved is not None else
               "none (no checkpoint was written)")
      raise TrainingDiverged(f"step {p['step']}: loss = {loss}, grad_norm = {grad_norm} is not "
                             f"finite; stopped without saving. Last good checkpoint: {where}")
    row = {"step": p["step"], "loss": loss, "grad_norm": grad_norm,
           "lr": to_float(metrics["lr"]), "target_tokens": int(metrics["target_tokens"]),
           "step_time_s": dt, "data_wait_s": p["data_wait_s"],
           "tokens_per_s": tokens_per_step / dt, "mfu": flops_per_step / dt / peak}
    if write:
      log.write(row)
    bar.update(1)
    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{row['lr']:.2e}")
    return row

  def save(at: int) -> None:
    t0 = time.perf_counter()
    ckpt.save(at, state, batches.get_state(), model_cfg)
    good.add("checkpointing", time.perf_counter() - t0)
    signals.last_saved = at

  pending = None
  done_at = (0.0, 0.0)  # (when the last step was read, the data badput by then)
  try:
    while step < target:
      t0 = time.perf_counter()
      try:
        batch = next(batches)
      except StopIteration:
        break
      wait = time.perf_counter() - t0
      good.add("data", wait)
      profile.before(step + 1)
      dispatched = time.perf_counter()
      state, metrics = step_fn(state, {k: batch[k] for k in ROW_FIELDS})
      step += 1
      if pending is not None:  # the previous step's metrics, read after this one is queued
        last = finish(pending)
        profile.after(pending["step"])
      pending = {"step": step, "metrics": metrics, "dispatched": dispatched,
                 "data_mark": good.seconds["data"], "data_wait_s": wait}
      stopped_by = signals.stop_reason(step)
      is_eval = eval_packed is not None and ((t.eval_every and step % t.eval_every == 0) or
                                             step == target)
      if step % cfg.checkpoint.every_steps == 0 or step == target or is_eval or stopped_by:
        last = finish(pending, write=not is_eval)  # checked finite before it is saved
        profile.after(step)
        pending = None
        if step % cfg.checkpoint.every_steps == 0 or step == target or stopped_by:
          save(step)
          last_saved = step
        if is_eval:
          t_eval = time.perf_counter()
          last["eval_loss"] = evaluate(ts, state["params"], eval_packed, cfg, mesh)
          good.add("eval", time.perf_counter() - t_eval)
          log.write(last)
        done_at = (time.perf_counter(), good.seconds["data"])
      if stopped_by:
        break
    if pending is not None:
      last = finish(pending)
      profile.after(pending["step"], force=True)
      pending = None
    if step != last_saved and step > 0:
      save(step)
      last_saved = step
  finally:
    profile.after(step, force=True)
    bar.close()
    t_close = time.perf_counter()
    ckpt.close()
    good.add("checkpointing", time.perf_counter() - t_close)
    report = good.report(step - first_step, first_step)
    log.write_event(report)
    log.close()
  return {"out": str(out), "step": step, "target_steps": target, "resumed_from": latest,
          "last_checkpoint": last_saved, "loss": last.get("loss"),
          "eval_loss": last.get("eval_loss"), "params": model_cfg.num_params(),
          "devices": int(mesh.devices.size), "mesh": dict(mesh.shape),
          "stopped_by": stopped_by, "goodput": report, "compilation_cache": cache_dir}


def _already_done(out: Path, latest: int, target: int, what: str) -> dict:
  message = (f"the run in {out} is already at step {latest}, at or past {what} ({target}): "
             "nothing to do, nothing changed (raise train.max_steps or train.epochs to go on)")
  return {"out": str(out), "step": latest, "target_steps": target, "resumed_from": latest,
          "last_checkpoint": latest, "already_done": message, "stopped_by": None}


@contextlib.contextmanager
def _quiet_cache_warnings():
  import warnings
  with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*persistent compilation cache.*")
    yield
