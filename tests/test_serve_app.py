"""`z1 serve`'s app in this process (FastAPI's TestClient; a tiny random model with the Qwen
tokenizer, compiled on first use): hostile bodies (hypothesis) only ever get 2xx or 4xx and
`/health` stays 200, one request cannot disable the server, the reasoning / answer rule is the
same streamed and whole in every case, seedless requests sample apart, the server's default
budget composes with what a client sends, and the body-size and context limits."""

import json
import threading
import time

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, event, given, settings, strategies as st

from json_strategies import request_body

MODEL = "tiny"
CONTEXT = 96
ENDS_EARLY = {"prompt": "print(1)", "temperature": 1.0, "seed": 11}  # see `env`


@pytest.fixture(scope="module")
def env():
  import z1_jax
  from z1_jax.data.tokenizer import load_tokenizer
  from z1_jax.infer.engine import Engine
  from z1_jax.serve.app import create_app
  from z1_jax.serve.protocol import Defaults
  from z1_jax.serve.runner import Runner
  from z1_jax.infer.engine import Request
  from z1_jax.serve.protocol import ChatTemplate
  tok = load_tokenizer()
  model = z1_jax.create_model(z1_jax.get_preset("tiny"))
  engines, logs = [], []
  # A random model never ends by itself: the token ENDS_EARLY's request samples 4th (as a
  # completion and as a chat) is made an end id, so that row ends inside its window.
  probe = Engine(model, slots=2, max_seq_len=CONTEXT, tokenizer=tok)
  texts = {False: ENDS_EARLY["prompt"], True: ChatTemplate(tok).render(
      [{"role": "user", "content": ENDS_EARLY["prompt"]}])}
  ends, sampled = {}, {}
  for chat, text in texts.items():
    ids = tok.encode(text, add_special_tokens=False)
    out = probe.run([Request(0, ids, max_new_tokens=6, temperature=ENDS_EARLY["temperature"],
                             seed=ENDS_EARLY["seed"])])[0].tokens
    assert out[3] not in out[:3], out
    ends[chat], sampled[chat] = out[3], out
  eos = tuple(probe.markers.eos_ids) + tuple(ends.values())
  del probe

  def make():
    engines.append(Engine(model, slots=2, max_seq_len=CONTEXT, tokenizer=tok, eos_ids=eos,
                          chunk_steps=8))
    return engines[-1]

  runner = Runner(make, warmup=False, log=logs.append)
  runner.start()
  apps = {name: create_app(runner, tok, MODEL, Defaults(*defaults), max_queue=8,
                           max_request_bytes=limit)
          for name, defaults, limit in (("plain", (), 200_000), ("default", (30, None), 200_000),
                                        ("big", (), 8_000_000))}
  clients = {name: TestClient(app) for name, app in apps.items()}
  for c in clients.values():
    c.__enter__()
  yield {"client": clients["plain"], "default": clients["default"], "big": clients["big"],
         "runner": runner, "engines": engines, "tok": tok, "logs": logs, "make": make,
         "sampled": sampled[False]}
  for c in clients.values():
    c.__exit__(None, None, None)
  runner.stop(timeout=30)


def _post(client, body, path="/v1/completions"):
  return client.post(path, content=json.dumps(body), headers={"content-type":
                                                               "application/json"})


def _health(client):
  r = client.get("/health")
  assert r.status_code == 200, r.text
  return r.json()


def _stream(client, body, path):
  chunks = []
  with client.stream("POST", path, json={**body, "stream": True,
                                         "stream_options": {"include_usage": True}}) as r:
    assert r.status_code == 200
    for line in r.iter_lines():
      if line.startswith("data: ") and line != "data: [DONE]":
        chunks.append(json.loads(line[6:]))
  return chunks


def _joined(chunks, chat: bool) -> dict:
  out = {"content": "", "reasoning": "", "reasoning_content": ""}
  for c in chunks:
    assert "error" not in c, c
    for choice in c["choices"]:
      d = choice["delta"] if chat else {**choice, "content": choice["text"]}
      assert d.get("reasoning") == d.get("reasoning_content")  # the same text, both names
      for k in out:
        out[k] += d.get(k) or ""
  return out


CASES = {  # case -> request (the five cases of the reasoning rule)
    "plain": {"prompt": "hi", "max_tokens": 20, "temperature": 1.0, "seed": 1},
    "budget hit": {"prompt": "hi", "thinking_token_budget": 20, "answer_tokens": 8,
                   "temperature": 1.0, "seed": 2},
    "ended inside the window": {**ENDS_EARLY, "thinking_token_budget": 20, "answer_tokens": 5},
    "append": {"prompt": "x = 1", "thinking_token_budget": 16, "answer_tokens": 6,
               "placement": "append", "temperature": 1.0, "seed": 3},
    "s1": {"prompt": "x = 2", "thinking_token_budget": 16, "answer_tokens": 6, "mode": "s1",
           "temperature": 1.0, "seed": 4},
}


@pytest.mark.parametrize("chat", [False, True], ids=["completions", "chat"])
@pytest.mark.parametrize("case", list(CASES))
def test_streamed_and_whole_agree_field_by_field(env, case, chat):
  client = env["client"]
  body = {"model": MODEL, **CASES[case]}
  path = "/v1/completions"
  if chat:
    path, body["messages"] = "/v1/chat/completions", [{"role": "user",
                                                      "content": body.pop("prompt")}]
  whole = _post(client, body, path).json()
  chunks = _stream(client, body, path)
  choice = whole["choices"][0]
  message = choice["message"] if chat else {**choice, "content": choice["text"]}
  joined = _joined(chunks, chat)
  assert joined["content"] == message["content"]
  for name in ("reasoning", "reasoning_content"):
    assert joined[name] == (message.get(name) or "")
  finish = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
  assert [c["choices"][0]["finish_reason"] for c in finish] == [choice["finish_reason"]]
  assert finish[0]["z1"] == whole["z1"] and chunks[-1]["usage"] == whole["usage"]
  triggers = [c["z1"]["trigger"] for c in chunks if "trigger" in c.get("z1", {})]
  z1, usage = whole["z1"], whole["usage"]
  reasoning_tokens = usage["completion_tokens_details"]["reasoning_tokens"]
  if case == "plain":
    assert "reasoning" not in message and "reasoning_content" not in message
    assert reasoning_tokens == 0 and not triggers and message["content"]
  elif case == "ended inside the window":
    assert not z1["hit_budget"] and choice["finish_reason"] == "stop" and not triggers
    assert message["content"] == "" and message["reasoning"]
    assert reasoning_tokens == z1["thinking_tokens"] == usage["completion_tokens"] == 4
  else:
    assert z1["hit_budget"] and len(triggers) == 1 and message["content"]
    assert reasoning_tokens == z1["thinking_tokens"] < usage["completion_tokens"]
    t = {"budget hit": 12, "append": 0, "s1": 0}[case]  # replace: the trigger is in the window
    assert z1["thinking_tokens"] == body["thinking_token_budget"] - t


def test_requests_without_a_seed_sample_apart_and_a_seed_repeats(env):
  client = env["client"]
  body = {"model": MODEL, "prompt": "hi", "max_tokens": 12, "temperature": 1.0}
  texts = [_post(client, body).json()["choices"][0]["text"] for _ in range(3)]
  assert len(set(texts)) == 3
  seeded = [_post(client, {**body, "seed": 7}).json()["choices"][0]["text"] for _ in range(2)]
  assert seeded[0] == seeded[1]


@pytest.mark.parametrize("field, value", [("top_k", 2**31), ("seed", 2**31),
                                          ("max_tokens", 2**31), ("temperature", 10**400),
                                          ("thinking_token_budget", 2**32)])
def test_numbers_past_the_engines_widths_are_400_and_the_server_goes_on(env, field, value):
  client = env["client"]
  body = {"model": MODEL, "prompt": "hi", "temperature": 0.8, "max_tokens": 4, field: value}
  r = _post(client, body)
  assert r.status_code == 400 and r.json()["error"]["param"] == field, r.text
  r = _post(client, {"model": MODEL, "prompt": "hi", "temperature": 0.8, "top_k": 2**31 - 1,
                     "max_tokens": 4})
  assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4
  assert _health(client)["in_flight"] == 0


def test_a_step_that_raises_fails_its_requests_and_serving_goes_on(env, monkeypatch):
  """Before: the engine thread died, every later request got 503 and /health said failed."""
  client, runner = env["client"], env["runner"]
  assert _post(client, {"model": MODEL, "prompt": "hi", "max_tokens": 2}).status_code == 200
  made = len(env["engines"])
  engine = runner.engine
  real = engine.step

  def boom():
    monkeypatch.setattr(engine, "step", real)
    raise OverflowError("a value the engine could not store")

  monkeypatch.setattr(engine, "step", boom)
  r = _post(client, {"model": MODEL, "prompt": "hi", "max_tokens": 4})
  assert r.status_code == 500 and "OverflowError" in r.json()["error"]["message"]
  assert _health(client)["status"] == "ok"
  assert len(env["engines"]) == made + 1 and runner.engine is env["engines"][-1]
  r = _post(client, {"model": MODEL, "prompt": "hi", "max_tokens": 5, "temperature": 0})
  assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 5
  assert any("starting it afresh" in line for line in env["logs"])
  # the fresh engine took over the old one's compiled programs (none compiled anew for this)
  assert engine.programs and set(engine.programs) <= set(runner.engine.programs)


def test_health_and_the_serve_log_show_the_pages_and_the_queue(env, monkeypatch):
  import z1_jax.serve.runner as runner_module
  client = env["client"]
  monkeypatch.setattr(runner_module, "_LOG_EVERY_S", 0.0)
  h = _health(client)
  for key in ("pages_total", "pages_used", "pages_free", "pages_cached", "preemptions",
              "prefix_cache_hit_rate", "queued", "active", "page_size", "max_total_tokens"):
    assert key in h, h
  assert h["pages_used"] + h["pages_free"] == h["pages_total"] > 0
  env["logs"].clear()
  r = _post(client, {"model": MODEL, "prompt": "count to ten", "max_tokens": 40,
                     "temperature": 0})
  assert r.status_code == 200
  assert any("rows running" in line and "KV pages" in line and "preemptions" in line
             for line in env["logs"]), env["logs"]


def test_bodies_over_the_limit_are_413(env):
  client = env["client"]
  big = json.dumps({"model": MODEL, "prompt": "x" * 200_000})
  r = client.post("/v1/completions", content=big, headers={"content-type": "application/json"})
  assert r.status_code == 413 and "--max-request-bytes" in r.json()["error"]["message"]

  def chunks():  # no content-length: counted as it arrives
    for i in range(0, len(big), 10_000):
      yield big[i:i + 10_000].encode()
  r = client.post("/v1/completions", content=chunks(), headers={"content-type":
                                                                 "application/json"})
  assert r.status_code == 413
  assert _health(client)["status"] == "ok"


def test_a_huge_prompt_is_refused_by_its_size_before_it_is_tokenized(env):
  """Before: a 10 MB prompt was tokenized on the event loop (5 s without /health)."""
  t0 = time.perf_counter()
  r = _post(env["big"], {"model": MODEL, "prompt": "hello world " * 600_000})
  assert r.status_code == 400 and "at least" in r.json()["error"]["message"], r.text
  assert r.json()["error"]["param"] == "prompt"
  assert time.perf_counter() - t0 < 3


def test_tokenization_runs_off_the_event_loop(env, monkeypatch):
  client, tok = env["client"], env["tok"]
  real = type(tok).encode
  started = threading.Event()

  def slow(self, *a, **kw):
    started.set()
    time.sleep(1.5)
    return real(self, *a, **kw)

  monkeypatch.setattr(type(tok), "encode", slow)
  worker = threading.Thread(target=_post, args=(client, {"model": MODEL, "prompt": "hi",
                                                        "max_tokens": 2}))
  worker.start()
  assert started.wait(10)
  t0 = time.perf_counter()
  _health(client)
  assert time.perf_counter() - t0 < 0.5  # answered while the prompt is being tokenized
  worker.join(30)


def test_the_default_budget_composes_with_what_the_client_sends(env):
  """`--default-thinking-budget 30`: a plain request with max_tokens is served within it, one
  with only answer_tokens gets the default window."""
  client = env["default"]
  for m in (5, 30, 36):
    r = _post(client, {"model": MODEL, "prompt": "hi", "max_tokens": m, "temperature": 0})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] <= m
  r = _post(client, {"model": MODEL, "prompt": "hi", "max_tokens": 36, "temperature": 0})
  assert r.json()["z1"] == {"hit_budget": True, "thinking_tokens": 30 - 12, "answer_tokens": 6}
  r = _post(client, {"model": MODEL, "prompt": "hi", "answer_tokens": 4, "temperature": 0})
  assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 34


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_hostile_bodies_get_2xx_or_4xx_and_health_stays_200(env, data):
  client = env["client"]
  chat = data.draw(st.booleans())
  path = "/v1/chat/completions" if chat else "/v1/completions"
  if data.draw(st.integers(0, 9)) == 0:
    raw = data.draw(st.binary(max_size=64))
  else:
    raw = json.dumps(request_body(data, MODEL, 151936, chat)).encode()
  r = client.post(path, content=raw, headers={"content-type": "application/json"})
  event(f"status {r.status_code}")
  assert 200 <= r.status_code < 300 or 400 <= r.status_code < 500, (r.status_code, r.text)
  if r.status_code >= 400:
    assert r.json()["error"]["message"]
  elif r.headers["content-type"].startswith("text/event-stream"):
    assert "data: [DONE]" in r.text and '"error"' not in r.text
  assert _health(client)["status"] == "ok"


def test_the_request_parser_returns_only_what_the_engine_can_hold(env):
  """`app.prepare` on hostile bodies (many, fast: no decoding): a ServeError with a 4xx, or a
  request whose every number fits the width the engine stores it in and whose length fits the
  context."""
  from z1_jax.serve.app import longest_token_bytes, prepare
  from z1_jax.serve.protocol import Defaults, ServeError
  engine, tok = env["runner"].engine, env["tok"]
  token_bytes = longest_token_bytes(tok)

  @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
  @given(data=st.data(), default=st.sampled_from([None, 30]))
  def check(data, default):
    chat = data.draw(st.booleans())
    if data.draw(st.integers(0, 9)) == 0:
      raw = data.draw(st.binary(max_size=40))
    else:
      raw = json.dumps(request_body(data, MODEL, 151936, chat)).encode()
    try:
      p, prompts, reqs = prepare(raw, "chat" if chat else "completion", "r", engine=engine,
                                 tokenizer=tok, served_model=MODEL, defaults=Defaults(default),
                                 token_bytes=token_bytes, max_choices=10)
    except ServeError as e:
      assert 400 <= e.status < 500 and e.message
      event(f"refused {e.param}")
      return
    event("accepted")
    assert len(reqs) == len(prompts) * p.n <= 10 and len({r.id for r in reqs}) == len(reqs)
    for req in reqs:
      for name in ("top_k", "seed", "thinking_budget", "answer_tokens", "max_new_tokens",
                   "min_tokens", "logprobs", "prompt_logprobs"):
        value = getattr(req, name)
        assert value is None or (type(value) is int and 0 <= value < 2**31), (name, value)
      assert 0 <= req.temperature <= 2 and (req.top_p is None or 0 < req.top_p <= 1)
      assert all(type(i) is int and 0 <= i < 151936 for i in req.prompt_ids)
      assert all(type(i) is int and 0 <= i < 151936 for i in req.stop_token_ids)
      assert all(isinstance(s, str) and s for s in req.stop)
      t = len(engine.trigger_ids(req.mode))
      if req.thinking_budget is None:
        total = req.max_new_tokens
      else:
        assert req.thinking_budget > t
        total = req.thinking_budget + req.answer_tokens + (t if req.placement == "append" else 0)
      assert len(req.prompt_ids) + total <= CONTEXT

  check()


def test_serve_refuses_a_context_past_the_models_positions_before_loading(hf_checkpoint,
                                                                        capsys):
  from z1_jax.cli import main
  from z1_jax.data.tokenizer import offline_tokenizer_dir
  _, path = hf_checkpoint("untied-gqa4-theta")  # 256 positions
  tokenizer = ["--tokenizer", str(offline_tokenizer_dir()), "--port", "0"]
  assert main(["serve", "--hf", str(path), "--max-seq-len", "4096", *tokenizer]) == 2
  assert "--max-seq-len 4096: the model has 256 positions" in capsys.readouterr().err
  assert main(["serve", "--hf", str(path), "--default-thinking-budget", "300",
               *tokenizer]) == 2
  assert "a one-token prompt would need" in capsys.readouterr().err


# -- the OpenAI / vLLM controls through the app ----------------------------------------------------

def _ok(client, body, path="/v1/completions") -> dict:
  r = _post(client, {"model": MODEL, **body}, path)
  assert r.status_code == 200, r.text
  return r.json()


def _choices(chunks, chat: bool) -> dict:
  """A stream's chunks joined per choice index: text by field, logprobs, finish, usage."""
  out = {}
  for c in chunks:
    assert "error" not in c, c
    for ch in c["choices"]:
      o = out.setdefault(ch["index"], {"content": "", "reasoning": "", "lp": [], "finish": [],
                                       "usage": []})
      d = ch["delta"] if chat else {**ch, "content": ch["text"]}
      o["content"] += d.get("content") or ""
      o["reasoning"] += d.get("reasoning") or ""
      if ch["logprobs"]:
        o["lp"].append(ch["logprobs"])
      if ch["finish_reason"]:
        o["finish"].append((ch["finish_reason"], ch["stop_reason"]))
      if "usage" in c:
        o["usage"].append(c["usage"]["completion_tokens"])
  return out


def _joined_logprobs(parts: list, chat: bool):
  if chat:
    return {"content": [x for p in parts for x in p["content"]], "refusal": None}
  from z1_jax.serve.logprobs import join_completion
  return join_completion(parts)


STREAMED = {  # name -> (path, body)
    "n, stop, logprobs, continuous usage": ("/v1/completions", {
        "prompt": "hi", "max_tokens": 16, "n": 2, "temperature": 1.0, "seed": 5,
        "logprobs": 2, "stop": ["STOP"]}),
    "echo with logprobs (lm-eval's loglikelihood)": ("/v1/completions", {
        "prompt": ["x = 1", "print(2)"], "max_tokens": 1, "temperature": 0, "echo": True,
        "logprobs": 1}),
    "echo scoring only": ("/v1/completions", {"prompt": "def f():", "max_tokens": 0,
                                              "echo": True, "logprobs": 3}),
    "echo without logprobs": ("/v1/completions", {"prompt": [[1, 2, 3]], "max_tokens": 4,
                                                  "echo": True, "temperature": 0}),
    "chat: n, budget, top_logprobs": ("/v1/chat/completions", {
        "messages": [{"role": "user", "content": "hi"}], "n": 2, "temperature": 1.0,
        "seed": 9, "thinking_token_budget": 16, "answer_tokens": 4, "logprobs": True,
        "top_logprobs": 3}),
}


@pytest.mark.parametrize("name", list(STREAMED))
def test_streamed_and_whole_agree_for_every_control(env, name):
  """Per choice: the text of each field, the log-probabilities (joined over the chunks),
  finish and stop reasons; the usage, and continuous usage counting up to each choice's
  completion tokens."""
  client = env["client"]
  path, body = STREAMED[name]
  chat = path.endswith("chat/completions")
  if name.startswith("n, stop"):  # a stop string the first sample reaches (found greedily)
    text = _ok(client, {**body, "stop": None, "n": 1})["choices"][0]["text"]
    body = {**body, "stop": [text[len(text) // 2:len(text) // 2 + 2]]}
  whole = _ok(client, body, path)
  chunks = []
  with client.stream("POST", path, json={"model": MODEL, **body, "stream": True,
                                         "stream_options": {"include_usage": True,
                                                            "continuous_usage_stats": True}}) as r:
    assert r.status_code == 200
    for line in r.iter_lines():
      if line.startswith("data: ") and line != "data: [DONE]":
        chunks.append(json.loads(line[6:]))
  streamed = _choices(chunks, chat)
  assert sorted(streamed) == [c["index"] for c in whole["choices"]] == list(
      range(len(whole["choices"])))
  for c in whole["choices"]:
    s = streamed[c["index"]]
    message = c["message"] if chat else {"content": c["text"], "reasoning": c.get("reasoning")}
    assert s["content"] == message["content"] and s["reasoning"] == (message["reasoning"] or "")
    assert s["finish"] == [(c["finish_reason"], c["stop_reason"])]
    assert (_joined_logprobs(s["lp"], chat) if s["lp"] else None) == c["logprobs"]
    assert s["usage"] == sorted(s["usage"]) and s["usage"][-1] == c["z1"]["thinking_tokens"] + (
        c["z1"]["answer_tokens"] + (12 if c["z1"]["hit_budget"] else 0))
  assert chunks[-1]["usage"] == whole["usage"]
  n = body.get("n", 1)
  if name.startswith("n, stop"):
    a, b = whole["choices"]
    assert a["finish_reason"] == "stop" and a["stop_reason"] == body["stop"][0]
    assert a["text"] != b["text"]  # two samples of one prompt
    lp = a["logprobs"]
    assert len(lp["tokens"]) == a["z1"]["thinking_tokens"] == len(lp["text_offset"])
    assert all(len(d) <= 3 and lp["tokens"][i] in d for i, d in enumerate(lp["top_logprobs"]))
  elif name.startswith("echo"):
    prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
    for c, prompt in zip(whole["choices"], prompts):
      text = prompt if isinstance(prompt, str) else env["tok"].decode(prompt)
      assert c["text"].startswith(text)
      if "logprobs" in body:
        lp = c["logprobs"]
        k = len(env["tok"].encode(text, add_special_tokens=False))
        assert len(lp["tokens"]) == k + body["max_tokens"]
        assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
        assert all(v <= 0 for v in lp["token_logprobs"][1:])
        assert "".join(lp["tokens"][:k]) == text and lp["text_offset"][k - 1] < len(text)
  else:
    assert len(whole["choices"]) == n and all(c["z1"]["hit_budget"] for c in whole["choices"])
    content = whole["choices"][0]["logprobs"]["content"]
    assert len(content) == 16 + 4 and all(len(x["top_logprobs"]) == 3 for x in content)


def test_n_samples_share_the_prompts_pages_and_a_seed_repeats_them(env):
  """The n samples are requests with one prompt: after the first prefills it, the others find
  its full pages in the prefix cache (engine counters: prompt tokens looked up and found)."""
  client, runner = env["client"], env["runner"]
  prompt = "def longest_common_prefix(words):\n    # return the prefix shared by all\n" * 3
  ids = env["tok"].encode(prompt, add_special_tokens=False)
  full = (len(ids) - 1) // 16 * 16  # tokens in full pages (16-token pages on CPU)
  assert full >= 32
  hits = lambda: runner.engine.stats()["prefix_cache_hit_tokens"]
  before = hits()
  body = {"prompt": prompt, "max_tokens": 6, "n": 2, "temperature": 1.0}
  a = _ok(client, body)
  assert hits() - before == full  # the second sample found the first one's pages
  texts = [c["text"] for c in a["choices"]]
  assert texts[0] != texts[1]
  seeded = [[c["text"] for c in _ok(client, {**body, "seed": 3})["choices"]] for _ in range(2)]
  assert seeded[0] == seeded[1] and seeded[0][0] != seeded[0][1]
  assert a["usage"]["prompt_tokens"] == len(ids) and a["usage"]["completion_tokens"] == 12


def test_a_batch_samples_each_prompt_as_it_samples_alone(env):
  client = env["client"]
  body = {"max_tokens": 5, "temperature": 1.0, "seed": 21, "n": 2}
  batch = _ok(client, {**body, "prompt": ["alpha", [11, 12, 13]]})
  assert [c["index"] for c in batch["choices"]] == [0, 1, 2, 3]
  alone = [_ok(client, {**body, "prompt": p}) for p in ("alpha", [11, 12, 13])]
  assert [c["text"] for c in batch["choices"]] == [c["text"] for r in alone
                                                   for c in r["choices"]]
  assert batch["usage"]["prompt_tokens"] == sum(r["usage"]["prompt_tokens"] for r in alone)
  r = _post(client, {"model": MODEL, "prompt": ["a"] * 6, "n": 2})
  assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"  # 12 > 2 + 8


def test_stop_strings_end_the_row_in_the_reasoning_or_the_answer_not_in_the_trigger(env):
  """A budgeted row (window 20, answer 8): a stop string in its thinking ends it inside the
  window (all reasoning, no trigger); one in its answer cuts the answer; the trigger's own
  text never matches (it is forced, not generated)."""
  client = env["client"]
  body = {"prompt": "hi", "thinking_token_budget": 20, "answer_tokens": 8, "temperature": 1.0,
          "seed": 2}
  base = _ok(client, body)["choices"][0]
  reasoning, content = base["reasoning"], base["text"]
  assert base["z1"]["hit_budget"] and len(reasoning) > 8 and len(content) > 4
  stop = reasoning[6:8]
  r = _ok(client, {**body, "stop": stop})["choices"][0]
  assert (r["finish_reason"], r["stop_reason"], r["text"]) == ("stop", stop, "")
  assert r["reasoning"] == reasoning[:reasoning.index(stop)] and not r["z1"]["hit_budget"]
  stop = next(content[i:i + 2] for i in range(1, len(content) - 1)
              if content[i:i + 2] not in reasoning)
  r = _ok(client, {**body, "stop": ["never-generated", stop]})["choices"][0]
  assert r["reasoning"] == reasoning and r["text"] == content[:content.index(stop)]
  assert (r["finish_reason"], r["stop_reason"]) == ("stop", stop) and r["z1"]["hit_budget"]
  r = _ok(client, {**body, "stop": "overthought"})["choices"][0]
  assert (r["reasoning"], r["text"], r["finish_reason"]) == (reasoning, content, "length")


def test_stop_token_ids_ignore_eos_and_min_tokens(env):
  """ENDS_EARLY samples an end id as its 4th token (see `env`)."""
  client = env["client"]
  body = {**ENDS_EARLY, "max_tokens": 10}
  assert _ok(client, body)["usage"]["completion_tokens"] == 4
  r = _ok(client, {**body, "ignore_eos": True})
  assert r["usage"]["completion_tokens"] == 10 and r["choices"][0]["finish_reason"] == "length"
  r = _ok(client, {**body, "min_tokens": 6})
  assert r["usage"]["completion_tokens"] >= 6
  stop_id = env["sampled"][1]
  r = _ok(client, {**body, "stop_token_ids": [stop_id]})["choices"][0]
  assert (r["finish_reason"], r["stop_reason"]) == ("stop", stop_id)
  assert r["z1"]["thinking_tokens"] == 2
  r = _post(client, {"model": MODEL, **body, "stop_token_ids": [151936 + 5]})
  assert r.status_code == 400 and r.json()["error"]["param"] == "stop_token_ids", r.text


def _scrape(client) -> dict:
  from prometheus_client.parser import text_string_to_metric_families
  r = client.get("/metrics")
  assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
  out = {}
  for family in text_string_to_metric_families(r.text):
    for s in family.samples:
      key = s.name + "".join(f"[{v}]" for k, v in sorted(s.labels.items())
                             if k not in ("model_name", "le"))
      if s.labels.get("le") in (None, "+Inf"):
        assert s.labels["model_name"] == MODEL
        out[key] = s.value
  return out


def test_metrics_move_by_what_was_served(env):
  client = env["client"]
  before = _scrape(client)
  for key in ("vllm:num_requests_running", "vllm:num_requests_waiting",
              "vllm:kv_cache_usage_perc", "vllm:num_preemptions_total",
              "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total",
              "z1:prefix_cache_hit_rate"):
    assert key in before, sorted(before)
  responses = [_ok(client, b) for b in (
      {"prompt": "a", "max_tokens": 5, "n": 2, "temperature": 1.0},
      {"prompt": "b", "thinking_token_budget": 16, "answer_tokens": 3, "temperature": 0},
      {**ENDS_EARLY, "max_tokens": 9},
      {"prompt": ["c", "dd"], "max_tokens": 1, "echo": True, "logprobs": 1})]
  after = _scrape(client)
  delta = lambda k: after.get(k, 0) - before.get(k, 0)
  usage = lambda k: sum(r["usage"][k] for r in responses)
  choices = [c for r in responses for c in r["choices"]]
  assert delta("vllm:prompt_tokens_total") == usage("prompt_tokens")
  assert delta("vllm:generation_tokens_total") == usage("completion_tokens") == 10 + 19 + 4 + 2
  assert delta("z1:reasoning_tokens_total") == sum(
      r["usage"]["completion_tokens_details"]["reasoning_tokens"] for r in responses) == 4
  assert delta("z1:thinking_budget_hits_total") == 1
  assert delta("vllm:request_success_total[stop]") == 1  # ENDS_EARLY
  assert delta("vllm:request_success_total[length]") == len(choices) - 1
  assert delta("vllm:time_to_first_token_seconds_count") == len(choices)
  assert delta("vllm:e2e_request_latency_seconds_count") == len(responses)
  itl = delta("vllm:inter_token_latency_seconds_count")
  assert 0 < itl <= usage("completion_tokens") - len(choices)
  assert after["vllm:num_requests_running"] == after["vllm:num_requests_waiting"] == 0
  # the prefix cache, in prompt tokens: n=2 samples of a prompt of several full pages look them
  # up twice, and the second finds the first one's (16-token pages on CPU)
  prompt = "class Stack:\n    # push, pop and peek, each in O(1)\n" * 4
  full = (len(env["tok"].encode(prompt, add_special_tokens=False)) - 1) // 16 * 16
  _ok(client, {"prompt": prompt, "max_tokens": 1, "n": 2, "temperature": 1.0})
  cached = _scrape(client)
  moved = lambda k: cached[k] - after[k]
  assert full >= 32 and moved("vllm:prefix_cache_queries_total") == 2 * full
  assert moved("vllm:prefix_cache_hits_total") == full
