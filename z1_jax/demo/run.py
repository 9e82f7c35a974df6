"""`z1 demo`: the whole Z1 loop on a CPU in minutes: data -> train -> checkpoint -> infer -> eval.

1. task       chain programs (`demo.task`), answers by running them; train and held-out rows in
              the Z1 schema (`data/train.jsonl`, `data/eval.jsonl`)
2. tokenizer  a small BPE trained on the task with the Qwen chat tokens (`tokenizer/`)
3. train      `z1_jax.train.loop.train` on `configs/demo.toml` (a tiny Qwen2 from scratch):
              rendering, packing and grain through `z1_jax.data`, optax, Orbax (`train/`)
4. sweep      the held-out questions decoded once for every thinking budget with the answer
              trigger (`z1_jax.sweep`, Shifted Thinking Window), scored by exact match against
              the executed result (`samples.jsonl`)
5. report     `summary.json` (the `z1 sweep` schema), `summary.md`, `sweep.png`; chance level
6. export     HF safetensors (`hf/`), reloaded in transformers, which must reproduce one greedy
              answer token for token
Everything is written into a temporary directory beside `--out` and renamed at the end: an
interrupted demo leaves no partial output.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from pathlib import Path

from z1_jax.data.format import ANSWER_TRIGGER, render_prompt, render_target
from z1_jax.demo import task as chain
from z1_jax.errors import Z1Error

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo.toml"
BENCHMARK = "chain"


@dataclasses.dataclass(frozen=True)
class DemoSettings:
  train_examples: int = 8000
  eval_examples: int = 200
  budgets: tuple[int, ...] = (16, 24, 32, 40, 56)  # thinking tokens, trigger included
  answer_tokens: int = 8  # "answer: 7<|im_end|>" is 5 tokens
  vocab_size: int = 384  # tokenizer; the z1-demo preset's vocabulary has this size
  task: chain.ChainTask = chain.ChainTask()
  seed: int = 0


class _Clock:
  def __init__(self):
    self.start = time.perf_counter()

  def __call__(self, text: str) -> None:
    print(f"[demo {time.perf_counter() - self.start:6.1f}s] {text}", flush=True)


def _write_jsonl(rows, path: Path) -> Path:
  from z1_jax.data.sources import write_jsonl
  return write_jsonl(rows, path)


def make_data(root: Path, s: DemoSettings, system_prompt: str, log):
  """Task rows, tokenizer, and the token counts; returns (train rows, eval rows, tokenizer)."""
  from z1_jax.data.tokenizer import load_tokenizer
  from z1_jax.demo.tokenizer import save_tokenizer, train_tokenizer
  train_rows = chain.generate(s.train_examples, s.task, seed=s.seed)
  eval_rows = chain.generate(s.eval_examples, s.task, seed=s.seed + 1,
                             exclude={r["question"] for r in train_rows})
  kinds = {k: sum(r["kind"] == k for r in train_rows) for k in chain.KINDS}
  log(f"task: {len(train_rows)} training rows {kinds}, {len(eval_rows)} held-out programs")
  texts = [render_prompt(r["question"], system_prompt) + render_target(r["response"])
           for r in train_rows]
  tok_dir = save_tokenizer(train_tokenizer(texts, s.vocab_size), root / "tokenizer")
  tokenizer = load_tokenizer(str(tok_dir))
  log(f"tokenizer: {len(tokenizer)} tokens trained on the task -> {tok_dir}")
  train_rows = chain.count_tokens(train_rows, tokenizer)
  eval_rows = chain.count_tokens(eval_rows, tokenizer)
  _write_jsonl(train_rows, root / "data" / "train.jsonl")
  _write_jsonl(eval_rows, root / "data" / "eval.jsonl")
  return train_rows, eval_rows, tokenizer


def sweep_rows(model, tokenizer, eval_rows, s: DemoSettings, system_prompt: str):
  """Decodes every held-out question once for all budgets; one scored row per (budget, row)."""
  from z1_jax.infer.generate import sweep
  prompts = [tokenizer(render_prompt(r["question"], system_prompt),
                       add_special_tokens=False)["input_ids"] for r in eval_rows]
  results = sweep(model, prompts, list(s.budgets), s.answer_tokens, trigger=ANSWER_TRIGGER,
                  tokenizer=tokenizer)
  rows = []
  for budget, gens in sorted(results.items()):
    for i, (r, g) in enumerate(zip(eval_rows, gens)):
      extracted = chain.extract_answer(g.text or "")
      rows.append({"benchmark": BENCHMARK, "budget": budget, "id": i,
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


# What the demo writes into `--out`: a directory holding only these is a previous demo output.
DEMO_OUTPUTS = frozenset({"data", "tokenizer", "cache", "train", "hf", "samples.jsonl",
                          "summary.json", "summary.md", "sweep.png", "demo.json"})


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
  if not all(b > 0 for b in settings.budgets):
    raise Z1Error(f"--budgets {settings.budgets}: thinking budgets must be > 0")
  if out is None:
    out = Path(tempfile.gettempdir()) / f"z1-demo-{uuid.uuid4().hex[:8]}"
  final = check_output_dir(out, "--out", overwrite, what="demo output",
                           is_previous=lambda p: {e.name for e in p.iterdir()} <= DEMO_OUTPUTS,
                           inputs=[("--config", cfg_path)])
  with atomic_path(final) as root:
    root.mkdir(parents=True)
    summary = _run(root, cfg_path, list(overrides), settings)
  print(f"[demo] outputs in {final}", flush=True)
  return 0 if summary["hf_reproduces_greedy_answer"] else 1


def _run(root: Path, cfg_path: Path, overrides: list[str], s: DemoSettings) -> dict:
  import jax
  from z1_jax.checkpoint.hf import save_hf
  from z1_jax.checkpoint.orbax_io import load_params
  from z1_jax.config import load_config
  from z1_jax.eval.report import markdown, write_report
  from z1_jax.infer.budget import encode
  from z1_jax.train.loop import train

  log = _Clock()
  probe = load_config(cfg_path, overrides)
  system_prompt = probe.data.system_prompt
  train_rows, eval_rows, tokenizer = make_data(root, s, system_prompt, log)
  cfg = load_config(cfg_path, [f"data.dataset={root / 'data' / 'train.jsonl'}",
                               f"data.tokenizer={root / 'tokenizer'}",
                               f"data.cache_dir={root / 'cache'}", *overrides])
  log(f"training a tiny Qwen2 ({cfg.model.preset}) from scratch on {jax.default_backend()} "
      f"({jax.device_count()} device(s)): {cfg_path.name}")
  result = train(cfg, root / "train")
  log(f"trained {result['step']} steps, final loss {result['loss']:.3f}, "
      f"{result['params']:,} parameters -> {root / 'train'}")

  model = load_params(root / "train" / "checkpoints")
  log(f"budget sweep {list(s.budgets)} over {len(eval_rows)} held-out programs "
      "(one decode per question, the trigger placed at each budget)")
  prompts, results, rows = sweep_rows(model, tokenizer, eval_rows, s, system_prompt)
  _write_jsonl(rows, root / "samples.jsonl")
  chance = chain.chance_level([r["answer"] for r in eval_rows])
  model_name = f"z1-demo ({result['params'] / 1e6:.2f}M params, {result['step']} steps)"
  report = write_report([{k: r[k] for k in ("benchmark", "budget", "thinking_tokens",
                                            "hit_budget", "passed", "extracted")} for r in rows],
                        root, model=model_name,
                        config={"task": "chain", "chance_level": chance,
                                "budgets": list(s.budgets), "answer_tokens": s.answer_tokens,
                                "placement": "replace", "eval_examples": len(eval_rows),
                                "train_examples": len(train_rows),
                                "train_config": cfg.to_dict()})
  # summary.md: the report's table plus the chance level beside it.
  md = markdown(report) + (f"\nChance level (best constant guess on these {len(eval_rows)} "
                           f"answers): {100 * chance:.1f}%\n")
  (root / "summary.md").write_text(md)

  hf_dir = save_hf(model, root / "hf", dtype="float32", tokenizer=tokenizer)
  largest = max(s.budgets)
  trigger_ids = encode(tokenizer, ANSWER_TRIGGER)
  same = hf_reproduces(hf_dir, prompts[0], results[largest][0], largest, trigger_ids)
  log(f"exported HF checkpoint -> {hf_dir}; transformers reproduces the greedy answer to "
      f"held-out program 0 at budget {largest}: {same}")
  entries = report["benchmarks"][BENCHMARK]
  summary = {"accuracy": {e["budget"]: round(e["accuracy"], 4) for e in entries},
             "chance_level": chance, "hf_reproduces_greedy_answer": same,
             "train_steps": result["step"], "final_loss": result["loss"],
             "wall_time_s": round(time.perf_counter() - log.start, 1)}
  (root / "demo.json").write_text(json.dumps(summary, indent=2) + "\n")
  print(md, flush=True)
  log(f"done: accuracy {summary['accuracy']} (chance {chance:.2f})")
  return summary
