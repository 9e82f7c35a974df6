"""EleutherAI's lm-evaluation-harness against `z1 serve` (`--model local-completions`, as people
score a model behind an OpenAI-compatible server), on the local tasks in tests/lm_eval_tasks/:
a generate_until task with `until` strings (sent as `stop`), a multiple_choice task (echo +
logprobs + max_tokens 1: loglikelihood) and a generate_until task that passes
`thinking_token_budget` through `generation_kwargs`. One live server (a subprocess on
127.0.0.1) on a tiny random fp32 checkpoint with the Qwen tokenizer; the same checkpoint under
`--model hf` (transformers) is the reference: the same scores, per-sample loglikelihoods within
1e-4, the same greedy continuations, at batch_size 1 and 4 (a list of prompts per request)."""

import json
from pathlib import Path

import httpx
import lm_eval  # the test extra's lm-eval[api,hf]
import pytest
from serve_helpers import tiny_server

ROOT = Path(__file__).parents[1]
TASKS = ROOT / "tests" / "lm_eval_tasks"
MODEL = "tiny-z1"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
  with tiny_server(tmp_path_factory.mktemp("lm-eval") / MODEL, "--batch-size", "4",
                   "--max-seq-len", "256") as s:
    yield s


def _evaluate(model: str, model_args: dict, tasks: list[str], batch_size: int, tmp_path,
              monkeypatch) -> dict:
  """`lm_eval.simple_evaluate` in this process: task -> {"metrics", "samples" by doc id}."""
  import datasets
  from lm_eval.tasks import TaskManager
  monkeypatch.chdir(ROOT)  # the tasks' data files are relative to the repository root
  monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
  out = lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=tasks,
                                batch_size=batch_size, device="cpu", log_samples=True,
                                task_manager=TaskManager(include_path=str(TASKS)))
  return {t: {"metrics": {k: v for k, v in out["results"][t].items() if "stderr" not in k},
              "samples": {s["doc_id"]: s for s in out["samples"][t]}} for t in tasks}


def _server_args(served) -> dict:
  return {"model": MODEL, "base_url": served["url"] + "/v1/completions",
          "tokenizer_backend": "huggingface", "tokenizer": str(served["path"]),
          "num_concurrent": 1, "max_retries": 1}


def _metric(served, name: str, **labels) -> float:
  from prometheus_client.parser import text_string_to_metric_families
  text = httpx.get(served["url"] + "/metrics", timeout=10).text
  return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
             if s.name == name and labels.items() <= s.labels.items())


def test_lm_eval_scores_through_z1_serve_equal_transformers(served, tmp_path, monkeypatch):
  tasks = ["z1_until", "z1_choice"]
  stops_before = _metric(served, "vllm:request_success_total", finished_reason="stop")
  runs = {f"serve b{b}": _evaluate("local-completions", _server_args(served), tasks, b,
                                   tmp_path, monkeypatch) for b in (1, 4)}
  runs["hf"] = _evaluate("hf", {"pretrained": str(served["path"]), "dtype": "float32"}, tasks,
                         1, tmp_path, monkeypatch)
  ref = runs.pop("hf")
  for name, run in runs.items():
    for task in tasks:
      assert run[task]["metrics"] == ref[task]["metrics"], (name, task)
      got, want = run[task]["samples"], ref[task]["samples"]
      assert sorted(got) == sorted(want) and len(want) >= 4
      for doc, s in want.items():
        if task == "z1_until":  # the greedy continuation, cut at the first `until` string
          assert got[doc]["resps"] == s["resps"], (name, doc)
        else:  # per choice: [[loglikelihood, is_greedy]]
          for g, w in zip(got[doc]["resps"], s["resps"], strict=True):
            assert abs(float(g[0][0]) - float(w[0][0])) < 1e-4, (name, doc, g, w)
            assert g[0][1] == w[0][1], (name, doc, g, w)
  # the cases the tasks were made to hold: stops at the start and inside the text, a
  # continuation to the length limit, a greedy choice
  conts = [s["resps"][0][0] for s in ref["z1_until"]["samples"].values()]
  assert "" in conts and " " in conts and any(len(c) >= 16 for c in conts), conts
  greedy = [str(c[0][1]) for s in ref["z1_choice"]["samples"].values() for c in s["resps"]]
  assert "True" in greedy and "False" in greedy
  # 2 runs x 5 stopped continuations (the other and the loglikelihoods end at their length)
  assert _metric(served, "vllm:request_success_total", finished_reason="stop") == (
      stops_before + 10)


def test_lm_eval_passes_the_thinking_budget_to_z1_serve(served, tmp_path, monkeypatch):
  """`thinking_token_budget: 20` in the task's generation_kwargs reaches the server (every row
  of the random model runs out of its window: one budget hit per document and run), and the
  answers are the engine's: window 20, answer 32 - 20 = 12 tokens, the text after the
  trigger."""
  import z1_jax
  from z1_jax.data.tokenizer import load_tokenizer
  hits = _metric(served, "z1:thinking_budget_hits_total")
  runs = [_evaluate("local-completions", _server_args(served), ["z1_budget"], b, tmp_path,
                    monkeypatch)["z1_budget"] for b in (1, 4)]
  docs = [json.loads(line) for line in (TASKS / "z1_budget.jsonl").read_text().splitlines()]
  assert _metric(served, "z1:thinking_budget_hits_total") - hits == 2 * len(docs)
  tok = load_tokenizer(served["path"])
  model = z1_jax.load_hf(served["path"], dtype="float32")
  gens = z1_jax.generate(model, [tok.encode(d["question"], add_special_tokens=False)
                                 for d in docs], thinking_budget=20, answer_tokens=12,
                         tokenizer=tok)
  trigger = "\n\nI overthought it, the final answer should be:\n\n"
  answers = [g.text.split(trigger, 1)[1] for g in gens]
  assert all(g.hit_budget for g in gens)
  for run in runs:
    assert [run["samples"][i]["resps"][0][0] for i in range(len(docs))] == answers
