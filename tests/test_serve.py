"""`z1 serve` against the real `openai` client and httpx, one live server (a subprocess on
127.0.0.1, a tiny random model with the Qwen tokenizer) for the whole module: chat and
completions, streamed and not, budgets, equality with `z1 generate --json`, n samples, stop
strings, log-probabilities, echo, reasoning, the chat prompt, /metrics, 36 kinds of bad
requests, a bounded load test, a client that disconnects, SIGTERM with requests in flight."""

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from serve_helpers import tiny_server

ROOT = Path(__file__).parents[1]
MODEL = "tiny-z1"
SLOTS = 4


@pytest.fixture(scope="module")
def server(tmp_path_factory):
  with tiny_server(tmp_path_factory.mktemp("serve") / MODEL, "--batch-size", str(SLOTS),
                   "--max-seq-len", "512", "--max-queue", "64", "--shutdown-timeout", "20") as s:
    yield s


def _client(server):
  return openai.OpenAI(base_url=server["url"] + "/v1", api_key="none", max_retries=0,
                       timeout=60)


def _health(server):
  return httpx.get(server["url"] + "/health", timeout=10).json()


def test_models_and_health(server):
  models = _client(server).models.list()
  assert [m.id for m in models.data] == [MODEL]
  h = _health(server)
  assert h["status"] == "ok" and h["slots"] == SLOTS


def test_chat_with_a_budget(server):
  r = _client(server).chat.completions.create(
      model=MODEL, messages=[{"role": "user", "content": "add 2 and 3"}], max_tokens=40,
      temperature=0, extra_body={"thinking_token_budget": 20})
  extra = r.model_extra
  u = r.usage
  # a random model does not stop by itself: the trigger fills positions 8..19 of the window
  assert extra["z1"]["hit_budget"] and extra["z1"]["thinking_tokens"] == 20 - 12
  assert u.completion_tokens_details.reasoning_tokens == 8 <= 20
  assert extra["z1"]["answer_tokens"] == 40 - 20 == u.completion_tokens - 20
  assert r.choices[0].finish_reason == "length"
  assert r.choices[0].message.content and r.choices[0].message.model_extra["reasoning_content"]
  assert u.total_tokens == u.prompt_tokens + u.completion_tokens


def test_stream_equals_whole_and_shows_the_trigger(server):
  client = _client(server)
  kw = dict(model=MODEL, prompt="def add(a, b):", max_tokens=30, temperature=0,
            extra_body={"thinking_token_budget": 16, "answer_tokens": 10})
  whole = client.completions.create(**kw)
  chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True},
                                          **kw))
  content = "".join(c.choices[0].text for c in chunks if c.choices)
  reasoning = "".join(c.choices[0].model_extra.get("reasoning_content") or ""
                      for c in chunks if c.choices)
  assert content == whole.choices[0].text
  assert reasoning == whole.choices[0].model_extra["reasoning_content"]
  triggers = [c.model_extra["z1"]["trigger"] for c in chunks
              if "trigger" in (c.model_extra.get("z1") or {})]
  assert triggers == ["\n\nI overthought it, the final answer should be:\n\n"]
  assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens == 16 + 10


def test_chat_stream_switches_from_reasoning_to_content(server):
  stream = _client(server).chat.completions.create(
      model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=24, temperature=0,
      stream=True, extra_body={"thinking_token_budget": 16})
  fields = []
  for c in stream:
    for choice in c.choices:
      d = choice.delta
      if d.model_extra.get("reasoning_content"):
        fields.append("r")
      if d.content:
        fields.append("c")
  assert fields and fields[0] == "r" and fields[-1] == "c"
  assert "".join(fields).count("rc") == 1 and "cr" not in "".join(fields)


def test_greedy_equals_z1_generate_json(server):
  from z1_jax.data.tokenizer import load_tokenizer
  ids = load_tokenizer().encode("print(1 + 1)", add_special_tokens=False)
  out = subprocess.run(
      [sys.executable, "-m", "z1_jax.cli", "generate", "--hf", str(server["path"]),
       "--prompt-ids", ",".join(map(str, ids)), "--thinking-budget", "18", "--answer-tokens",
       "6", "--json"], capture_output=True, text=True, cwd=ROOT, timeout=120,
      env={**os.environ, "PYTHONPATH": str(ROOT), "XLA_FLAGS": ""})
  assert out.returncode == 0, out.stderr
  row = json.loads(out.stdout.splitlines()[-1])
  r = _client(server).completions.create(
      model=MODEL, prompt=ids, max_tokens=24, temperature=0,
      extra_body={"thinking_token_budget": 18})
  choice = r.choices[0]
  assert r.model_extra["z1"]["thinking_tokens"] == row["thinking_tokens"]
  assert r.model_extra["z1"]["answer_tokens"] == row["answer_tokens"]
  assert r.usage.completion_tokens == len(row["tokens"])
  trigger = "\n\nI overthought it, the final answer should be:\n\n"
  assert choice.model_extra["reasoning_content"] + trigger + choice.text == row["text"]


BAD = [
    ("not json", b"{bad", 400, None),
    ("answer_tokens, no budget", {"model": MODEL, "prompt": "x", "answer_tokens": 3}, 400,
     "answer_tokens"),
    ("array body", [], 400, None),
    ("no model", {"prompt": "x", "max_tokens": 4}, 400, "model"),
    ("unknown model", {"model": "gpt-4", "prompt": "x"}, 404, "model"),
    ("no prompt", {"model": MODEL, "max_tokens": 4}, 400, "prompt"),
    ("prompt number", {"model": MODEL, "prompt": 5}, 400, "prompt"),
    ("id out of vocab", {"model": MODEL, "prompt": [1, 10**7], "max_tokens": 4}, 400, "prompt"),
    ("max_tokens 0", {"model": MODEL, "prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ("max_tokens str", {"model": MODEL, "prompt": "x", "max_tokens": "9"}, 400, "max_tokens"),
    ("temperature", {"model": MODEL, "prompt": "x", "temperature": 3}, 400, "temperature"),
    ("top_p 0", {"model": MODEL, "prompt": "x", "top_p": 0}, 400, "top_p"),
    ("n 129", {"model": MODEL, "prompt": "x", "n": 129}, 400, "n"),
    ("n past slots + queue", {"model": MODEL, "prompt": "x", "n": 69}, 400, "n"),
    ("stop not text", {"model": MODEL, "prompt": "x", "stop": [1]}, 400, "stop"),
    ("17 stop strings", {"model": MODEL, "prompt": "x", "stop": list("abcdefghijklmnopq")},
     400, "stop"),
    ("9 stop_token_ids", {"model": MODEL, "prompt": "x", "stop_token_ids": list(range(9))},
     400, "stop_token_ids"),
    ("top_logprobs on completions", {"model": MODEL, "prompt": "x", "top_logprobs": 2}, 400,
     "top_logprobs"),
    ("chat top_logprobs 21", {"model": MODEL, "messages": [{"role": "user", "content": "x"}],
                              "logprobs": True, "top_logprobs": 21}, 400, "top_logprobs"),
    ("chat echo", {"model": MODEL, "messages": [{"role": "user", "content": "x"}],
                   "echo": True}, 400, "echo"),
    ("echo + logprobs + budget", {"model": MODEL, "prompt": "x", "echo": True, "logprobs": 1,
                                  "thinking_token_budget": 20}, 400, "echo"),
    ("repetition_penalty", {"model": MODEL, "prompt": "x", "repetition_penalty": 1.1}, 400,
     "repetition_penalty"),
    ("budget <= trigger", {"model": MODEL, "prompt": "x", "max_tokens": 30,
                           "thinking_token_budget": 5}, 400, "thinking_token_budget"),
    ("no room to answer", {"model": MODEL, "prompt": "x", "max_tokens": 20,
                           "thinking_token_budget": 20}, 400, "max_tokens"),
    ("cap below budget+answer", {"model": MODEL, "prompt": "x", "max_tokens": 30,
                                 "thinking_token_budget": 20, "answer_tokens": 20}, 400,
     "max_tokens"),
    ("placement", {"model": MODEL, "prompt": "x", "thinking_token_budget": 20,
                   "answer_tokens": 4, "placement": "middle"}, 400, "placement"),
    ("does not fit", {"model": MODEL, "prompt": "x", "max_tokens": 600}, 400, "prompt"),
    ("top_k past int32", {"model": MODEL, "prompt": "x", "temperature": 1, "top_k": 2**31},
     400, "top_k"),
    ("temperature of 400 digits", {"model": MODEL, "prompt": "x", "temperature": 10**400}, 400,
     "temperature"),
    ("lone surrogate", b'{"model": "tiny-z1", "prompt": "\\ud800"}', 400, "prompt"),
    ("integer past 4300 digits", b'{"model": "tiny-z1", "prompt": "x", "seed": ' +
     b"9" * 4301 + b"}", 400, None),
    ("nested 100,000 deep", b"[" * 100_000 + b"]" * 100_000, 400, None),
    ("not UTF-8", b'{"model": "tiny-z1", "prompt": "\xff"}', 400, None),
    ("bad message role", {"model": MODEL, "messages": [{"role": "robot", "content": "x"}]},
     400, "messages"),
    ("logprobs 6", {"model": MODEL, "prompt": "x", "logprobs": 6}, 400, "logprobs"),
    ("stream not bool", {"model": MODEL, "prompt": "x", "stream": "yes"}, 400, "stream"),
]


def test_bad_requests_each_get_their_4xx_and_the_server_keeps_serving(server):
  url = server["url"]
  for name, body, status, param in BAD:
    path = "/v1/chat/completions" if isinstance(body, dict) and "messages" in body else (
        "/v1/completions")
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(url + path, content=data, headers={"content-type": "application/json"},
                   timeout=30)
    assert r.status_code == status, (name, r.text)
    err = r.json()["error"]
    assert err["message"] and err["param"] == param, (name, err)
  assert httpx.get(url + "/v1/nothing-here").status_code == 404
  r = _client(server).completions.create(model=MODEL, prompt="x", max_tokens=3, temperature=0)
  assert r.usage.completion_tokens == 3
  assert _health(server)["in_flight"] == 0


def _joined_stream(chunks):
  """Per choice index: text, reasoning, legacy log-probabilities, finish reason."""
  out = {}
  for c in chunks:
    for ch in c.choices:
      o = out.setdefault(ch.index, {"text": "", "reasoning": "", "lp": [], "finish": None})
      extra = (ch.delta.model_extra if hasattr(ch, "delta") else ch.model_extra) or {}
      o["text"] += (ch.delta.content if hasattr(ch, "delta") else ch.text) or ""
      o["reasoning"] += extra.get("reasoning") or ""
      if ch.logprobs is not None:
        o["lp"].append(ch.logprobs.model_dump(exclude_none=False))
      o["finish"] = ch.finish_reason or o["finish"]
  return out


def test_openai_client_n_stop_logprobs_echo_streamed_and_whole(server):
  """What pass@k harnesses and lm-eval send, through the `openai` client: n samples (distinct
  without a seed, repeated with one), stop strings, legacy log-probabilities, echo; each
  streamed equal to its whole response."""
  client = _client(server)
  kw = dict(model=MODEL, prompt="def add(a, b):", max_tokens=12)
  samples = client.completions.create(n=3, temperature=1.0, **kw)
  assert [c.index for c in samples.choices] == [0, 1, 2]
  assert len({c.text for c in samples.choices}) == 3
  seeded = [[c.text for c in client.completions.create(n=3, temperature=1.0, seed=4,
                                                       **kw).choices] for _ in range(2)]
  assert seeded[0] == seeded[1]
  greedy = client.completions.create(temperature=0, **kw).choices[0].text
  stop = greedy[len(greedy) // 2:len(greedy) // 2 + 2]
  cases = [dict(n=3, temperature=1.0, seed=4), dict(temperature=0, stop=[stop, "\n\n\n"]),
           dict(temperature=0, logprobs=3), dict(temperature=0, echo=True, logprobs=1)]
  for case in cases:
    whole = client.completions.create(**kw, **case)
    chunks = list(client.completions.create(**kw, **case, stream=True))
    streamed = _joined_stream(chunks)
    for c in whole.choices:
      s = streamed[c.index]
      assert (s["text"], s["finish"]) == (c.text, c.finish_reason), case
      if case.get("logprobs") is not None:
        parts = s["lp"]
        joined = {k: [x for p in parts for x in p[k]] for k in parts[0]}
        assert joined == c.logprobs.model_dump(exclude_none=False), case
  r = client.completions.create(**kw, temperature=0, stop=[stop])
  assert r.choices[0].text == greedy[:greedy.index(stop)]
  assert r.choices[0].finish_reason == "stop" and r.choices[0].model_extra["stop_reason"] == stop
  r = client.completions.create(**kw, temperature=0, logprobs=3)
  lp = r.choices[0].logprobs
  assert len(lp.tokens) == len(lp.token_logprobs) == r.usage.completion_tokens == 12
  assert "".join(lp.tokens) == r.choices[0].text and lp.text_offset[0] == 0
  assert all(len(d) <= 4 and max(d.values()) <= 0 for d in lp.top_logprobs)
  r = client.completions.create(**{**kw, "max_tokens": 1}, temperature=0, echo=True,
                                logprobs=1)
  lp = r.choices[0].logprobs
  assert r.choices[0].text.startswith("def add(a, b):") and lp.token_logprobs[0] is None
  assert len(lp.tokens) == r.usage.prompt_tokens + 1


def test_openai_client_chat_logprobs_and_reasoning(server):
  client = _client(server)
  kw = dict(model=MODEL, messages=[{"role": "user", "content": "add 2 and 3"}], max_tokens=30,
            temperature=0, logprobs=True, top_logprobs=4,
            extra_body={"thinking_token_budget": 20})
  r = client.chat.completions.create(**kw)
  m = r.choices[0].message
  assert m.model_extra["reasoning"] == m.model_extra["reasoning_content"] and m.content
  content = r.choices[0].logprobs.content
  assert len(content) == r.usage.completion_tokens == 30
  assert all(len(t.top_logprobs) == 4 and t.logprob <= 0 for t in content)
  chunks = list(client.chat.completions.create(**kw, stream=True))
  s = _joined_stream(chunks)[0]
  assert (s["reasoning"], s["text"]) == (m.model_extra["reasoning"], m.content)
  assert [x for p in s["lp"] for x in p["content"]] == r.choices[0].logprobs.model_dump()[
      "content"]


def test_the_chat_prompt_is_the_training_prompt(server):
  """The checkpoint was written by `save_hf`: its tokenizer's template is Z1's, so the served
  chat prompt is `data.format.render_prompt`'s (the offline tokenizer's own template has no
  default system prompt)."""
  from z1_jax.data.format import render_prompt
  from z1_jax.data.tokenizer import load_tokenizer
  r = _client(server).chat.completions.create(
      model=MODEL, messages=[{"role": "user", "content": "Is 1001 prime?"}], max_tokens=1,
      temperature=0)
  want = load_tokenizer().encode(render_prompt("Is 1001 prime?"), add_special_tokens=False)
  assert r.usage.prompt_tokens == len(want)
  assert any("chat prompts from the tokenizer's chat_template" in line for line in server["log"])


def _metrics(server) -> dict:
  from prometheus_client.parser import text_string_to_metric_families
  text = httpx.get(server["url"] + "/metrics", timeout=10).text
  return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples
          if "le" not in s.labels and "finished_reason" not in s.labels}


def test_metrics_count_what_was_served(server):
  client = _client(server)
  before = _metrics(server)
  rs = [client.completions.create(model=MODEL, prompt="x", max_tokens=7, temperature=0, n=2),
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "y"}],
                                       max_tokens=24, temperature=0,
                                       extra_body={"thinking_token_budget": 16})]
  after = _metrics(server)
  d = lambda k: after[k] - before.get(k, 0)
  assert d("vllm:prompt_tokens_total") == sum(r.usage.prompt_tokens for r in rs)
  assert d("vllm:generation_tokens_total") == sum(r.usage.completion_tokens for r in rs) == 38
  assert d("z1:reasoning_tokens_total") == 4 and d("z1:thinking_budget_hits_total") == 1
  assert d("vllm:time_to_first_token_seconds_count") == 3
  assert d("vllm:e2e_request_latency_seconds_count") == 2
  assert after["vllm:num_requests_running"] == 0 and 0 <= after["vllm:kv_cache_usage_perc"] <= 1


def test_load_mixed_budgets_no_slot_leaked(server):
  client = _client(server)
  budgets = [None, 14, 20, 32]

  def one(i):
    budget = budgets[i % 4]
    t0 = time.perf_counter()
    extra = {} if budget is None else {"thinking_token_budget": budget}
    r = client.completions.create(model=MODEL, prompt=f"x = {i}", max_tokens=(budget or 8) + 6,
                                  temperature=0.7, seed=i, extra_body=extra)
    if budget is not None:
      assert r.usage.completion_tokens_details.reasoning_tokens <= budget
    assert r.usage.completion_tokens == (budget or 8) + 6
    return time.perf_counter() - t0, r.usage.completion_tokens

  t0 = time.perf_counter()
  with ThreadPoolExecutor(32) as pool:
    results = list(pool.map(one, range(64), timeout=120))
  wall = time.perf_counter() - t0
  lat = sorted(r[0] for r in results)
  print(f"load: 64 requests, 32 clients, {wall:.1f} s, {sum(r[1] for r in results) / wall:.0f} "
        f"tokens/s, p50 {lat[31]:.2f} s, p99 {lat[-1]:.2f} s")
  h = _health(server)
  assert (h["in_flight"], h["active"], h["queued"]) == (0, 0, 0)


def test_disconnect_mid_stream_frees_the_slot(server):
  """A client that goes away frees its slot at the next dispatch chunk: long before the
  generation (about 500 tokens) could end by itself. With `Runner.cancel` a no-op the slot
  stays busy to the end and this fails."""
  body = {"model": MODEL, "prompt": "long", "max_tokens": 500, "temperature": 0,
          "stream": True}
  with httpx.stream("POST", server["url"] + "/v1/completions", json=body, timeout=60) as r:
    assert r.status_code == 200
    times = []
    for line in r.iter_lines():
      if line.startswith("data: {"):
        times.append(time.perf_counter())
        if len(times) == 5:
          break
    assert _health(server)["active"] == 1
  gone = time.perf_counter()
  # each event brings at most --chunk-steps (16) tokens: what is left takes at least this long
  per_event = (times[-1] - times[1]) / 3
  left = (500 - 16 * len(times)) / 16 * per_event
  while _health(server)["active"] and time.perf_counter() - gone < left:
    time.sleep(0.02)
  freed = time.perf_counter() - gone
  h = _health(server)
  assert (h["in_flight"], h["active"], h["queued"]) == (0, 0, 0)
  print(f"disconnect: slot freed {freed:.2f} s after the client left; the generation had "
        f"{left:.2f} s or more to go")
  assert freed < left / 4, (freed, left)


def test_sigterm_with_requests_in_flight_finishes_them_and_exits_0(server):
  client = _client(server)
  with ThreadPoolExecutor(3) as pool:
    futures = [pool.submit(client.completions.create, model=MODEL, prompt=f"p{i}",
                           max_tokens=90, temperature=0) for i in range(3)]
    deadline = time.time() + 20
    while _health(server)["active"] < 3 and time.time() < deadline:
      time.sleep(0.05)
    server["proc"].send_signal(signal.SIGTERM)
    done = [f.result(timeout=60) for f in futures]
  assert [r.usage.completion_tokens for r in done] == [90, 90, 90]
  assert server["proc"].wait(timeout=60) == 0, "".join(server["log"])
