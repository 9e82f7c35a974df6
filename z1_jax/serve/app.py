"""The FastAPI app of `z1 serve`: `/v1/chat/completions`, `/v1/completions`, `/v1/models`,
`/health`, `/metrics`. Parsing and shapes are `protocol` and `logprobs`; the engine's thread
is `runner`; the counters are `metrics`.

Every refusal is OpenAI's error shape with its status (400 naming the field, 404 for an unknown
model or path, 413 for a body over `--max-request-bytes`, 429 with `Retry-After` for a full
queue, 503 while compiling). A request is read with its size capped, then parsed, tokenized and
checked in a worker thread (a large prompt never stalls the event loop, so `/health` and the
streams keep going), its length refused as early as it is known (a text's byte count bounds its
tokens from below). Only a request the engine accepts reaches the engine's thread.

One HTTP request is one engine request per choice: each prompt (a list of prompts is a batch)
times `n`, choice `index` = prompt index x n + sample. The n samples of a prompt are requests
with the same prompt, seed and `row_id` 0..n-1 (their sampling streams): they share the
prompt's KV pages through the engine's prefix cache, differ from one another, and repeat with
the same `seed`; a prompt sent in a batch samples as it does alone. If one choice fails, the
request fails and its other choices are cancelled.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import secrets
import time
import uuid

from fastapi import FastAPI, Request as HTTPRequest
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from z1_jax.errors import Z1Error
from z1_jax.serve import logprobs as lp_shapes
from z1_jax.serve import protocol
from z1_jax.serve.metrics import Metrics
from z1_jax.serve.protocol import ChatTemplate, Defaults, ServeError
from z1_jax.serve.runner import Failed, Runner, Sink

_POLL_S = 0.25  # how often a non-streamed request checks that its client is still there

# Engine field names in its messages -> the API field they come from.
_ENGINE_FIELDS = (("thinking_budget", "thinking_token_budget"), ("answer_tokens", "answer_tokens"),
                  ("max_new_tokens", "max_tokens"), ("temperature", "temperature"),
                  ("top_p", "top_p"), ("top_k", "top_k"), ("seed", "seed"), ("mode", "mode"),
                  ("stop_token_ids", "stop_token_ids"), ("min_tokens", "min_tokens"),
                  ("prompt_logprobs", "echo"), ("logprobs", "logprobs"), ("stop", "stop"))


class _ASCIIJSON(JSONResponse):
  """Errors as ASCII JSON: whatever a message quotes, the body always encodes."""

  def render(self, content) -> bytes:
    return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode()


def _error(e: ServeError) -> JSONResponse:
  return _ASCIIJSON(e.body(), status_code=e.status, headers=e.headers)


def _sse(obj) -> str:
  return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def longest_token_bytes(tokenizer) -> int:
  """The most UTF-8 bytes one token stands for (byte-level BPE spells a byte as one character;
  added tokens by their text): a text of n bytes is at least n / this many tokens."""
  vocab = tokenizer.get_vocab()
  return max(1, max(len(t.encode("utf-8", "surrogatepass")) for t in vocab))


@dataclasses.dataclass(frozen=True)
class Prompt:
  """One prompt of a request: its token ids and its text (what `echo` sends back)."""
  ids: tuple[int, ...]
  text: str


def prepare(raw: bytes, kind: str, rid: str, *, engine, tokenizer, served_model: str,
            defaults: Defaults, token_bytes: int, template: ChatTemplate | None = None,
            max_choices: int | None = None):
  """A request body -> (`Parsed`, its `Prompt`s, the engine's `Request`s in choice order), or
  a `ServeError` (4xx) naming the field: the server's whole request parser, run in a worker
  thread (JSON, chat template, tokenization and checks). A prompt's length is refused as soon
  as it is known: a list of ids at once, a text first by its lower bound (bytes /
  `token_bytes`), then by its token count. `max_choices`: the most engine requests one HTTP
  request may make (the server's slots and queue)."""
  from z1_jax.infer.engine import Request
  body = protocol.load_body(raw)
  if kind == "chat":
    p = protocol.parse_chat(body, served_model, template or ChatTemplate(tokenizer))
  else:
    p = protocol.parse_completion(body, served_model)
  choices = len(p.prompts) * p.n
  if max_choices is not None and choices > max_choices:
    field = "n" if len(p.prompts) == 1 else "prompt"
    raise ServeError(f"{len(p.prompts)} prompt(s) x n={p.n} = {choices} choices: this server "
                     f"holds at most {max_choices} at once (--batch-size slots + --max-queue)",
                     field)
  if p.scores_prompt:  # scoring is a plain request: the server's default budget stays out
    defaults = dataclasses.replace(defaults, thinking_budget=None, answer_tokens=None)
  # no seed: a fresh one per request (OpenAI's meaning; a seed makes a request reproducible)
  seed = secrets.randbelow(protocol.INT32_MAX + 1) if p.seed is None else p.seed
  prompts, reqs = [], []
  for i, prompt in enumerate(p.prompts):
    if isinstance(prompt, tuple):
      protocol.check_prompt_length(p, len(prompt), engine.max_seq_len)
      ids, text = list(prompt), None
    else:
      lower = -(-len(prompt.encode("utf-8")) // token_bytes)
      protocol.check_prompt_length(p, lower, engine.max_seq_len, at_least=True)
      ids, text = tokenizer.encode(prompt, add_special_tokens=False), prompt
      protocol.check_prompt_length(p, len(ids), engine.max_seq_len)
    lim = protocol.limits(p, defaults, len(engine.trigger_ids(p.mode)), len(ids),
                          engine.max_seq_len)
    scoring = p.logprobs if p.scores_prompt else (0 if lim.max_new_tokens == 0 else None)
    for sample in range(p.n):
      req = Request(id=f"{rid}-{i * p.n + sample}", prompt_ids=tuple(ids),
                    thinking_budget=lim.thinking_budget, answer_tokens=lim.answer_tokens,
                    max_new_tokens=lim.max_new_tokens, placement=lim.placement, mode=p.mode,
                    temperature=p.temperature, top_p=p.top_p, top_k=p.top_k, seed=seed,
                    row_id=sample, stop=p.stop, stop_token_ids=p.stop_token_ids,
                    ignore_eos=p.ignore_eos, min_tokens=p.min_tokens, logprobs=p.logprobs,
                    prompt_logprobs=scoring)
      try:
        engine.validate(req)
      except Z1Error as e:  # what only the model knows (ids outside its vocabulary)
        message = str(e).replace(f"request {req.id!r}: ", "")
        param = next((api for name, api in _ENGINE_FIELDS if message.startswith(name)),
                     None)
        if param is None:
          param = p.prompt_field if ("prompt" in message or "cache" in message) else next(
              (api for name, api in _ENGINE_FIELDS if name in message), None)
        raise ServeError(message, param) from None
      reqs.append(req)
    if p.echo and text is None:
      text = protocol.decode(tokenizer, ids)
    prompts.append(Prompt(tuple(ids), text or ""))
  return p, prompts, reqs


class _Choice:
  """One choice of a request as its events arrive: its text (`StreamText`), log-probabilities,
  token count and timing."""

  def __init__(self, index: int, req, prompt: Prompt, p, tokenizer, eos_ids, token_text):
    self.index, self.req, self.prompt, self.p = index, req, prompt, p
    self.text = protocol.StreamText(tokenizer, eos_ids, req.thinking_budget is not None,
                                    req.stop)
    self.offsets = lp_shapes.Offsets(tokenizer, len(prompt.text) if p.echo else 0)
    self.tokenizer, self.token_text = tokenizer, token_text
    self.tokens = 0
    self.last: float | None = None  # when its previous event came
    self.finished = None  # its Generation, once done

  def logprobs(self, ids, values, tops) -> dict | None:
    """The shape of `p.logprobs` for these generated tokens (None when none was asked)."""
    if self.p.logprobs is None or not ids:
      return None
    if self.p.kind == "chat":
      return lp_shapes.chat(self.token_text, ids, values, tops)
    return lp_shapes.completion(self.token_text, ids, values, tops, self.offsets.add(ids))

  def echo_logprobs(self, gen) -> dict | None:
    """The prompt's part of a completion's log-probabilities (`echo` with `logprobs`)."""
    if not (self.p.echo and self.p.logprobs is not None):
      return None
    offsets = lp_shapes.Offsets(self.tokenizer).add(self.prompt.ids)
    return lp_shapes.completion(self.token_text, self.prompt.ids, gen.prompt_logprobs,
                                [None if v is None else top for v, top in
                                 zip(gen.prompt_logprobs, gen.prompt_top_logprobs)], offsets)

  def usage(self) -> dict:
    """This choice's usage so far (`continuous_usage_stats`)."""
    trig = self.text.trigger
    reasoning = (0 if self.req.thinking_budget is None else
                 min(self.tokens, trig[0]) if trig else self.tokens)
    return protocol.usage(len(self.prompt.ids), self.tokens, reasoning)


def create_app(runner: Runner, tokenizer, served_model: str, defaults: Defaults,
               max_queue: int, max_request_bytes: int,
               chat_template: ChatTemplate | None = None) -> FastAPI:
  app = FastAPI(title="z1 serve", docs_url=None, redoc_url=None, openapi_url=None)
  token_bytes = longest_token_bytes(tokenizer)
  template = chat_template or ChatTemplate(tokenizer)
  max_seq_len, eos_ids = runner.engine.max_seq_len, runner.engine.markers.eos_ids
  trigger_ids = {mode: runner.engine.trigger_ids(mode) for mode in protocol.MODES}
  token_text = lp_shapes.TokenText(tokenizer)
  metrics = Metrics(served_model, runner.stats)

  @app.exception_handler(StarletteHTTPException)
  async def _http_error(request, exc: StarletteHTTPException):
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    return _ASCIIJSON(protocol.error_body(str(exc.detail), kind), status_code=exc.status_code)

  @app.exception_handler(Exception)
  async def _crash(request, exc: Exception):  # a bug, still in the API's shape
    return _ASCIIJSON(protocol.error_body(f"internal error: {type(exc).__name__}: {exc}",
                                          "server_error"), status_code=500)

  @app.get("/health")
  async def health():
    if runner.failed:
      return JSONResponse({"status": "failed", "error": runner.failed}, status_code=503)
    if not runner.ready.is_set():
      return JSONResponse({"status": "loading"}, status_code=503)
    return {"status": "ok", **runner.stats()}

  @app.get("/metrics")
  async def prometheus():
    from prometheus_client import CONTENT_TYPE_LATEST
    return Response(metrics.text(), media_type=CONTENT_TYPE_LATEST)

  def _engine():
    engine = runner.engine
    if runner.failed or engine is None:
      raise ServeError(f"the engine failed: {runner.failed}" if runner.failed else
                       "the engine is restarting: retry shortly", status=503,
                       type="server_error", headers={"Retry-After": "1"})
    return engine

  @app.get("/v1/models")
  async def models():
    return {"object": "list", "data": [{
        "id": served_model, "object": "model", "created": 0, "owned_by": "z1-jax",
        "max_model_len": max_seq_len}]}

  async def _read(request: HTTPRequest) -> bytes:
    """The body, refused (413) past `max_request_bytes` before more of it is read."""
    too_big = ServeError(f"the request body is larger than this server's limit of "
                         f"{max_request_bytes} bytes (--max-request-bytes)", status=413)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_request_bytes:
      raise too_big
    parts, size = [], 0
    async for part in request.stream():
      size += len(part)
      if size > max_request_bytes:
        raise too_big
      parts.append(part)
    return b"".join(parts)

  async def _serve(request: HTTPRequest, kind: str):
    arrival = time.perf_counter()
    rid = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"
    try:
      raw = await _read(request)
      engine = _engine()
      p, prompts, reqs = await asyncio.get_running_loop().run_in_executor(None, functools.partial(
          prepare, raw, kind, rid, engine=engine, tokenizer=tokenizer,
          served_model=served_model, defaults=defaults, token_bytes=token_bytes,
          template=template, max_choices=engine.slots + max_queue))
      if not runner.ready.is_set():
        raise ServeError("the engine is still compiling: retry shortly", status=503,
                         type="server_error", headers={"Retry-After": "5"})
      slots = _engine().slots
      if runner.accepted + len(reqs) > slots + max_queue:
        raise ServeError(f"the server is full ({slots} slots busy and {max_queue} "
                         "requests queued, --max-queue): retry later", status=429,
                         type="rate_limit_error", headers={"Retry-After": "1"})
    except ServeError as e:
      return _error(e)
    sink = Sink(asyncio.get_running_loop())
    choices = {}
    for i, req in enumerate(reqs):
      choices[req.id] = _Choice(i, req, prompts[i // p.n], p, tokenizer, eos_ids, token_text)
      runner.submit(req, sink)
    if p.stream:
      return StreamingResponse(_stream(p, rid, choices, sink, arrival),
                               media_type="text/event-stream",
                               headers={"Cache-Control": "no-cache"})
    return await _whole(request, p, rid, choices, sink, arrival)

  def _split(c: _Choice, gen):
    return protocol.split_generation(gen, tokenizer, len(trigger_ids[c.p.mode]), eos_ids,
                                     c.req.thinking_budget is not None)

  def _observe(c: _Choice, item, arrival: float) -> None:
    now = time.perf_counter()
    new = len(item.new_tokens)
    if new:
      metrics.tokens(new, now - arrival, None if c.last is None else now - c.last)
      c.last = now
    c.tokens += new

  def _finished(c: _Choice, s) -> None:
    metrics.finished(s, len(c.prompt.ids) if c.index % c.p.n == 0 else 0)

  def _cancel_all(choices) -> None:
    for rid, c in choices.items():
      if c.finished is None:
        runner.cancel(rid)

  async def _whole(request: HTTPRequest, p, rid, choices: dict, sink: Sink, arrival: float):
    done = 0
    try:
      while done < len(choices):
        try:
          item = await asyncio.wait_for(sink.queue.get(), _POLL_S)
        except asyncio.TimeoutError:
          if await request.is_disconnected():
            return JSONResponse(protocol.error_body("client disconnected"), status_code=499)
          continue
        if isinstance(item, Failed):
          return _ASCIIJSON(protocol.error_body(item.message, "server_error"),
                            status_code=item.status if item.status != 499 else 500)
        c = choices[item.id]
        _observe(c, item, arrival)
        if item.finished is not None:
          c.finished = item.finished
          done += 1
      bodies, splits = [], []
      for c in choices.values():
        gen = c.finished
        s = _split(c, gen)
        _finished(c, s)
        splits.append(s)
        lp = c.logprobs(gen.tokens, gen.logprobs, gen.top_logprobs)
        echo = c.echo_logprobs(gen)
        if echo is not None:
          lp = lp_shapes.join_completion([echo] + ([lp] if lp else []))
        bodies.append(protocol.choice(p.kind, c.index, s, lp,
                                      c.prompt.text if p.echo else ""))
      metrics.e2e.observe(time.perf_counter() - arrival)
      prompt_tokens = sum(len(c.prompt.ids) for c in choices.values() if c.index % p.n == 0)
      return protocol.response(p.kind, rid, served_model, bodies, splits, prompt_tokens)
    finally:
      _cancel_all(choices)

  def _events(p, rid, c: _Choice, item, created: int) -> list[dict]:
    """The chunks of one event of choice `c`."""
    chunk = functools.partial(protocol.chunk, p.kind, rid, served_model, created, c.index)
    gen = item.finished
    done = gen is not None
    out = []
    for field, delta in c.text.add(item.offset, item.new_tokens, item.trigger_at,
                                   item.trigger_len, done, done and gen.ended,
                                   gen.stop_reason if done else None):
      if field == "trigger":
        out.append(chunk({}, extra={"z1": {"trigger": protocol.decode(
            tokenizer, trigger_ids[p.mode]), "thinking_tokens": c.text.trigger[0]}}))
      else:
        out.append(chunk({field: delta}))
    lp = c.logprobs(item.new_tokens, item.logprobs, item.top_logprobs)
    if lp is not None or (not out and item.new_tokens and p.continuous_usage):
      if out:
        out[0]["choices"][0]["logprobs"] = lp
      else:  # tokens without text yet (held back, or the trigger's): their values go now
        out.append(chunk({}, logprobs=lp))
    if done:
      s = _split(c, gen)
      _finished(c, s)
      out.append(chunk({}, s.finish_reason, stop_reason=s.stop_reason,
                       extra={"z1": protocol.z1_fields(s)}))
    if p.continuous_usage:
      for x in out:
        x["usage"] = c.usage()
    return out

  async def _stream(p, rid, choices: dict, sink: Sink, arrival: float):
    created = int(time.time())
    # echo with logprobs: the prompt's values come with the Generation, so such a choice's
    # chunks wait for its end (its prompt chunk goes first)
    deferred = {r: [] for r in choices} if p.scores_prompt else {}
    done = 0
    try:
      for c in choices.values():
        first = None
        if p.kind == "chat":
          first = protocol.chunk(p.kind, rid, served_model, created, c.index,
                                 {"role": "assistant", "content": ""})
        elif p.echo and not p.scores_prompt:
          first = protocol.chunk(p.kind, rid, served_model, created, c.index,
                                 {"content": c.prompt.text})
        if first is not None:
          if p.continuous_usage:
            first["usage"] = c.usage()
          yield _sse(first)
      while done < len(choices):
        item = await sink.queue.get()
        if isinstance(item, Failed):
          yield _sse(protocol.error_body(item.message, "server_error"))
          break
        c = choices[item.id]
        _observe(c, item, arrival)
        out = _events(p, rid, c, item, created)
        if item.finished is not None:
          c.finished = item.finished
          done += 1
        if item.id in deferred:
          deferred[item.id] += out
          if c.finished is None:
            continue
          head = protocol.chunk(p.kind, rid, served_model, created, c.index,
                                {"content": c.prompt.text},
                                logprobs=c.echo_logprobs(c.finished))
          if p.continuous_usage:
            head["usage"] = protocol.usage(len(c.prompt.ids), 0, 0)
          out = [head] + deferred.pop(item.id)
        for x in out:
          yield _sse(x)
      else:
        metrics.e2e.observe(time.perf_counter() - arrival)
        if p.include_usage:
          splits = [_split(c, c.finished) for c in choices.values()]
          prompt_tokens = sum(len(c.prompt.ids) for c in choices.values()
                              if c.index % p.n == 0)
          total = protocol.usage(prompt_tokens, sum(s.completion_tokens for s in splits),
                                 sum(s.reasoning_tokens for s in splits))
          z1 = protocol.z1_fields(splits[0]) if len(splits) == 1 else None
          yield _sse(protocol.usage_chunk(rid, served_model, created, p.kind, total, z1))
      yield "data: [DONE]\n\n"
    finally:  # the client went away, a choice failed, or the server is stopping: free the rows
      _cancel_all(choices)

  @app.post("/v1/chat/completions")
  async def chat(request: HTTPRequest):
    return await _serve(request, "chat")

  @app.post("/v1/completions")
  async def completions(request: HTTPRequest):
    return await _serve(request, "completion")

  return app
