"""`z1 demo`: Z1's claim on a CPU in minutes: two tiny models trained the same way on different
data, then compared on held-out programs at every thinking budget.

1. task       chain programs (`demo.task`), answers by running them. The same training programs
              in two recipes (`data/z1/train.jsonl`, `data/long/train.jsonl`): `z1` answers easy
              programs at once and traces hard ones, `long` writes a long trajectory for every
              program; held-out programs with every statement count equally (`data/eval.jsonl`)
2. tokenizer  a small BPE trained on both recipes with the Qwen chat tokens (`tokenizer/`)
3. checks     everything that needs no trained model: budgets against the trigger's length in
              this tokenizer, the longest training row against `data.seq_len`
4. train      `z1_jax.train.loop.train` on `configs/demo.toml` for each model, same size, same
              steps, same programs (`train/z1`, `train/long`)
5. sweep      both models decode the held-out questions once for every thinking budget with the
              answer trigger (`z1_jax.sweep`, Shifted Thinking Window), scored by exact match
              against the executed result (`samples.jsonl`, one row per model, budget, program)
6. report     `summary.json` (the `z1 sweep` schema per model, plus the claim), `summary.md`
              and the headline, `sweep.png`, `thinking_by_steps.png` (`demo.report`)
7. export     the z1 model as HF safetensors (`hf/`), reloaded in transformers, which must
              reproduce one greedy answer token for token
Everything is written into a temporary directory beside `--out` and renamed at the end: an
interrupted demo leaves no partial output. The output holds `MARKER`, which is how
`--overwrite` recognises a previous demo output (never by the names of its entries).
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from pathlib import Path

from z1_jax.data.format import ANSWER_TRIGGER, render_prompt, render_target
from z1_jax.demo import task as chain
from z1_jax.demo.report import MODELS
from z1_jax.errors import Z1Error

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo.toml"
BENCHMARK = "chain"
MARKER = "z1_demo_output.json"  # written first into every demo output
MARKER_CONTENT = {"written_by": "z1 demo", "format": 2}
SWEEP_CHUNK = 80  # held-out programs decoded together (a progress bar step)


@dataclasses.dataclass(frozen=True)
class DemoSettings:
  train_examples: int = 8000
  eval_examples: int = 240  # a multiple of the statement counts: 40 programs for each of 1..6
  budgets: tuple[int, ...] = (16, 20, 24, 28, 32, 40, 48, 56, 64, 80)  # trigger included
  answer_tokens: int = 8  # "answer: 7<|im_end|>" is 5 tokens
  vocab_size: int = 384  # tokenizer; the z1-demo preset's vocabulary has this size
  task: chain.ChainTask = chain.ChainTask()
  seed: int = 0


class _Clock:
  def __init__(self):
    self.start = time.perf_counter()
    self.cpu = time.process_time()

  def __call__(self, text: str) -> None:
    print(f"[demo {time.perf_counter() - self.start:6.1f}s] {text}", flush=True)


def _write_jsonl(rows, path: Path) -> Path:
  from z1_jax.data.sources import write_jsonl
  return write_jsonl(rows, path)


def check_settings(s: DemoSettings) -> None:
  """The settings' own checks (before any work)."""
  if not all(b > 0 for b in s.budgets):
    raise Z1Error(f"--budgets {list(s.budgets)}: thinking budgets must be > 0")
  counts = s.task.max_steps - s.task.min_steps + 1
  if s.eval_examples % counts:
    raise Z1Error(f"--eval-examples {s.eval_examples}: must be a multiple of {counts} (the "
                  f"statement counts {s.task.min_steps}..{s.task.max_steps}, each held out "
                  "equally)")
  per_step = s.eval_examples // counts
  fewest = chain.distinct_programs(s.task, s.task.min_steps)
  if per_step > fewest // 2:
    raise Z1Error(f"--eval-examples {s.eval_examples}: {per_step} programs per statement count, "
                  f"but only {fewest} programs have {s.task.min_steps} statement(s); hold out at "
                  f"most half of them ({fewest // 2 * counts} in all)")


def make_data(root: Path, s: DemoSettings, system_prompt: str, log):
  """Task rows, tokenizer, token counts; returns ({model: train rows}, eval rows, tokenizer)."""
  from z1_jax.data.tokenizer import load_tokenizer
  from z1_jax.demo.tokenizer import save_tokenizer, train_tokenizer
  counts = s.task.max_steps - s.task.min_steps + 1
  eval_rows = chain.held_out(s.eval_examples // counts, s.task, seed=s.seed + 1)
  held = {r["question"] for r in eval_rows}
  train_rows = {m: chain.generate(s.train_examples, s.task, seed=s.seed, exclude=held, recipe=m)
                for m in MODELS}
  for m, rows in train_rows.items():
    kinds = {k: sum(r["kind"] == k for r in rows) for k in chain.KINDS}
    log(f"task ({m}): {len(rows)} training rows {kinds}")
  log(f"held out: {len(eval_rows)} programs, {s.eval_examples // counts} for each statement "
      f"count {s.task.min_steps}..{s.task.max_steps}")
  texts = [render_prompt(r["question"], system_prompt) + render_target(r["response"])
           for rows in train_rows.values() for r in rows]
  tok_dir = save_tokenizer(train_tokenizer(texts, s.vocab_size), root / "tokenizer")
  tokenizer = load_tokenizer(str(tok_dir))
  log(f"tokenizer: {len(tokenizer)} tokens trained on the task -> {tok_dir}")
  for m in MODELS:
    train_rows[m] = chain.count_tokens(train_rows[m], tokenizer)
    _write_jsonl(train_rows[m], root / "data" / m / "train.jsonl")
  _write_jsonl(eval_rows, root / "data" / "eval.jsonl")
  return train_rows, eval_rows, tokenizer


def check_before_training(tokenizer, train_rows: dict, eval_rows: list, s: DemoSettings,
                          cfg, system_prompt: str) -> None:
  """What can fail without a trained model fails here, before minutes of training: every budget
  must exceed the trigger's length in this tokenizer, every training row must fit
  `data.seq_len` (`overlong = "drop"` would silently drop the long model's longest rows), and
  prompt + budget + answer must fit the model's positions."""
  from z1_jax.infer.budget import Budget, encode
  from z1_jax.model.config import get_preset
  trigger = encode(tokenizer, ANSWER_TRIGGER)
  for b in s.budgets:
    if b <= len(trigger):
      raise Z1Error(f"--budgets {','.join(map(str, s.budgets))}: budget {b} must exceed the "
                    f"answer trigger's length in the demo tokenizer ({len(trigger)} tokens)")
    Budget(b, s.answer_tokens, trigger)
  for m, rows in train_rows.items():
    longest = max(rows, key=lambda r: len(r["response"]))
    n = len(tokenizer(render_prompt(longest["question"], system_prompt)
                      + render_target(longest["response"]), add_special_tokens=False)["input_ids"])
    if n > cfg.data.seq_len:
      raise Z1Error(f"data.seq_len={cfg.data.seq_len}: the longest {m} training row is {n} "
                    "tokens; raise data.seq_len")
  prompt = max(len(tokenizer(render_prompt(r["question"], system_prompt),
                             add_special_tokens=False)["input_ids"]) for r in eval_rows)
  positions = get_preset(cfg.model.preset).max_position_embeddings
  if prompt + max(s.budgets) + s.answer_tokens > positions:
    raise Z1Error(f"--budgets: prompt ({prompt}) + budget {max(s.budgets)} + answer "
                  f"({s.answer_tokens}) exceeds the model's {positions} positions")


def sweep_rows(model, tokenizer, eval_rows, s: DemoSettings, system_prompt: str, name: str):
  """Decodes every held-out question once for all budgets; one scored row per (budget, row)."""
  from tqdm.auto import tqdm

  from z1_jax import sweep
  prompts = [tokenizer(render_prompt(r["question"], system_prompt),
                       add_special_tokens=False)["input_ids"] for r in eval_rows]
  results: dict[int, list] = {b: [] for b in s.budgets}
  with tqdm(total=len(prompts), desc=f"sweep {name}", unit="program") as bar:
    for lo in range(0, len(prompts), SWEEP_CHUNK):  # chunks, so that the bar moves
      part = prompts[lo:lo + SWEEP_CHUNK]
      for b, gens in sweep(model, part, list(s.budgets), s.answer_tokens,
                           trigger=ANSWER_TRIGGER, tokenizer=tokenizer).items():
        results[b] += gens
      bar.update(len(part))
  rows = []
  for budget, gens in sorted(results.items()):
    for i, (r, g) in enumerate(zip(eval_rows, gens)):
      extracted = chain.extract_answer(g.text or "")
      rows.append({"model": name, "benchmark": BENCHMARK, "budget": budget, "id": i,
                   "question": r["question"], "answer": r["answer"], "steps": r["steps"],
                   "completion": g.text, "tokens": list(g.tokens),
                   "thinking_tokens": g.thinking_tokens, "hit_budget": g.hit_budget,
                   "extracted": extracted, "passed": extracted == r["answer"]})
  return prompts, results, rows


def hf_reproduces(hf_dir: Path, prompt: list[int], generation, budget: int, trigger_ids,
                  placement: str = "replace") -> bool:
  """Greedy decoding in transformers (PyTorch) gives the same tokens as our sampler for one
  row: the window, then (for a row that hit the budget) the trigger and the answer."""
  import torch
  from transformers import AutoModelForCausalLM
  model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
  ours = list(generation.tokens)

  def greedy(ids: list[int], n: int) -> list[int]:
    with torch.no_grad():
      out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False,
                           eos_token_id=model.config.eos_token_id, pad_token_id=0)
    return out[0, len(ids):].tolist()

  if not generation.hit_budget:
    return greedy(prompt, len(ours)) == ours
  window = budget - len(trigger_ids) if placement == "replace" else budget
  first = greedy(prompt, window)
  trunk = prompt + first + list(trigger_ids)
  answer = greedy(trunk, len(ours) - len(first) - len(trigger_ids))
  return first + list(trigger_ids) + answer == ours


def is_previous_output(path: Path) -> bool:
  """A previous demo output holds the marker the demo wrote, with its content: a directory whose
  entries merely have the demo's names (`data/`, `train/`) is someone else's."""
  marker = path / MARKER
  if not marker.is_file() or marker.is_symlink():
    return False
  try:
    return json.loads(marker.read_text()).get("written_by") == MARKER_CONTENT["written_by"]
  except (OSError, ValueError, AttributeError):
    return False


def run_demo(out: str | None = None, overrides: list[str] = (), config: str | None = None,
             settings: DemoSettings = DemoSettings(), overwrite: bool = False) -> int:
  """Runs the demo into `out` (default: a new directory under the system temp directory);
  returns 0 when every stage ran and transformers reproduced the greedy answer."""
  import tempfile
  from z1_jax.config import load_config
  from z1_jax.outputs import atomic_path, check_output_dir
  cfg_path = Path(config) if config else DEFAULT_CONFIG
  if not cfg_path.is_file():
    raise Z1Error(f"--config {cfg_path}: file not found")
  load_config(cfg_path, list(overrides))  # bad keys and values fail before any work
  check_settings(settings)
  if out is None:
    out = Path(tempfile.gettempdir()) / f"z1-demo-{uuid.uuid4().hex[:8]}"
  final = check_output_dir(out, "--out", overwrite, what="demo output",
                           is_previous=is_previous_output, inputs=[("--config", cfg_path)])
  with atomic_path(final) as root:
    root.mkdir(parents=True)
    (root / MARKER).write_text(json.dumps(MARKER_CONTENT) + "\n")
    summary = _run(root, cfg_path, list(overrides), settings)
  print(f"[demo] outputs in {final}", flush=True)
  return 0 if summary["hf_reproduces_greedy_answer"] else 1


def _run(root: Path, cfg_path: Path, overrides: list[str], s: DemoSettings) -> dict:
  import jax
  from z1_jax.checkpoint.hf import save_hf
  from z1_jax.checkpoint.orbax_io import load_params
  from z1_jax.config import load_config
  from z1_jax.demo import report
  from z1_jax.infer.budget import encode
  from z1_jax.train.loop import train

  log = _Clock()
  probe = load_config(cfg_path, overrides)
  system_prompt = probe.data.system_prompt
  train_rows, eval_rows, tokenizer = make_data(root, s, system_prompt, log)
  check_before_training(tokenizer, train_rows, eval_rows, s, probe, system_prompt)
  rows, results, trained, cfgs = [], {}, {}, {}
  for m in MODELS:
    cfg = load_config(cfg_path, [f"data.dataset={root / 'data' / m / 'train.jsonl'}",
                                 f"data.tokenizer={root / 'tokenizer'}",
                                 f"data.cache_dir={root / 'cache' / m}", *overrides])
    log(f"training {m}: a tiny Qwen2 ({cfg.model.preset}) from scratch on "
        f"{jax.default_backend()} ({jax.device_count()} device(s)): {cfg_path.name}")
    trained[m] = train(cfg, root / "train" / m)
    cfgs[m] = cfg
    log(f"trained {m}: {trained[m]['step']} steps, final loss {trained[m]['loss']:.3f}, "
        f"{trained[m]['params']:,} parameters -> {root / 'train' / m}")
    model = load_params(root / "train" / m / "checkpoints")
    log(f"budget sweep ({m}) {list(s.budgets)} over {len(eval_rows)} held-out programs "
        "(one decode per question, the trigger placed at each budget)")
    prompts, results[m], model_rows = sweep_rows(model, tokenizer, eval_rows, s, system_prompt,
                                                 m)
    rows += model_rows
    if m == "z1":
      z1_model = model
  _write_jsonl(rows, root / "samples.jsonl")
  chance = chain.chance_level([r["answer"] for r in eval_rows])
  names = {m: f"{m} ({trained[m]['params'] / 1e6:.2f}M params, {trained[m]['step']} steps)"
           for m in MODELS}
  shared = {"task": "chain", "chance_level": chance, "budgets": list(s.budgets),
            "answer_tokens": s.answer_tokens, "placement": "replace",
            "eval_examples": len(eval_rows), "train_examples": s.train_examples,
            "task_settings": dataclasses.asdict(s.task)}
  summary = report.write(rows, root, names,
                         {"shared": shared, **{m: {**shared, "recipe": m,
                                                   "train_config": cfgs[m].to_dict()}
                                               for m in MODELS}}, chance)

  hf_dir = save_hf(z1_model, root / "hf", dtype="float32", tokenizer=tokenizer)
  largest = max(s.budgets)
  trigger_ids = encode(tokenizer, ANSWER_TRIGGER)
  hit = next((i for i, g in enumerate(results["z1"][largest]) if g.hit_budget), 0)
  same = hf_reproduces(hf_dir, prompts[hit], results["z1"][largest][hit], largest, trigger_ids)
  log(f"exported the z1 model as a HF checkpoint -> {hf_dir}; transformers reproduces its "
      f"greedy answer to held-out program {hit} at budget {largest}: {same}")
  demo = {"accuracy": {m: {e["budget"]: round(e["accuracy"], 4)
                           for e in summary["models"][m]["benchmarks"][BENCHMARK]}
                       for m in MODELS},
          "claim": summary["claim"], "chance_level": chance, "hf_reproduces_greedy_answer": same,
          "train_steps": {m: trained[m]["step"] for m in MODELS},
          "final_loss": {m: trained[m]["loss"] for m in MODELS},
          "wall_time_s": round(time.perf_counter() - log.start, 1),
          "cpu_time_s": round(time.process_time() - log.cpu, 1)}
  (root / "demo.json").write_text(json.dumps(demo, indent=2) + "\n")
  print((root / "summary.md").read_text(), flush=True)
  log(f"done in {demo['wall_time_s']}s wall, {demo['cpu_time_s']}s CPU")
  print(summary["headline"], flush=True)
  return demo
