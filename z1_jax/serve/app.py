"""The FastAPI app of `z1 serve`: `/v1/chat/completions`, `/v1/completions`, `/v1/models`,
`/health`. Parsing and shapes are `protocol`; the engine's thread is `runner`.

Every refusal is OpenAI's error shape with its status (400 naming the field, 404 for an unknown
model or path, 413 for a body over `--max-request-bytes`, 429 with `Retry-After` for a full
queue, 503 while compiling). A request is read with its size capped, then parsed, tokenized and
checked in a worker thread (a large prompt never stalls the event loop, so `/health` and the
streams keep going), its length refused as early as it is known (a text's byte count bounds its
tokens from below). Only a request the engine accepts reaches the engine's thread.
"""

from __future__ import annotations

import asyncio
import functools
import json
import secrets
import time
import uuid

from fastapi import FastAPI, Request as HTTPRequest
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from z1_jax.errors import Z1Error
from z1_jax.serve import protocol
from z1_jax.serve.protocol import Defaults, ServeError
from z1_jax.serve.runner import Failed, Runner, Sink

_POLL_S = 0.25  # how often a non-streamed request checks that its client is still there

# Engine field names in its messages -> the API field they come from.
_ENGINE_FIELDS = (("thinking_budget", "thinking_token_budget"), ("answer_tokens", "answer_tokens"),
                  ("max_new_tokens", "max_tokens"), ("temperature", "temperature"),
                  ("top_p", "top_p"), ("top_k", "top_k"), ("seed", "seed"), ("mode", "mode"))


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


def prepare(raw: bytes, kind: str, rid: str, *, engine, tokenizer, served_model: str,
            defaults: Defaults, token_bytes: int):
  """A request body -> (`Parsed`, the engine's `Request`), or a `ServeError` (4xx) naming the
  field: the server's whole request parser, run in a worker thread (JSON, tokenization and
  checks). The prompt's length is refused as soon as it is known: a list of ids at once, a
  text first by its lower bound (bytes / `token_bytes`), then by its token count."""
  from z1_jax.infer.engine import Request
  body = protocol.load_body(raw)
  if kind == "chat":
    p = protocol.parse_chat(body, served_model, defaults)
  else:
    p = protocol.parse_completion(body, served_model)
  if p.prompt_ids is not None:
    protocol.check_prompt_length(p, len(p.prompt_ids), engine.max_seq_len)
    ids = list(p.prompt_ids)
  else:
    lower = -(-len(p.prompt_text.encode("utf-8")) // token_bytes)
    protocol.check_prompt_length(p, lower, engine.max_seq_len, at_least=True)
    ids = tokenizer.encode(p.prompt_text, add_special_tokens=False)
    protocol.check_prompt_length(p, len(ids), engine.max_seq_len)
  lim = protocol.limits(p, defaults, len(engine.trigger_ids(p.mode)), len(ids),
                        engine.max_seq_len)
  # no seed: a fresh one per request (OpenAI's meaning; a seed makes a request reproducible)
  seed = secrets.randbelow(protocol.INT32_MAX + 1) if p.seed is None else p.seed
  req = Request(id=rid, prompt_ids=tuple(ids), thinking_budget=lim.thinking_budget,
                answer_tokens=lim.answer_tokens, max_new_tokens=lim.max_new_tokens,
                placement=lim.placement, mode=p.mode, temperature=p.temperature,
                top_p=p.top_p, top_k=p.top_k, seed=seed)
  try:
    engine.validate(req)
  except Z1Error as e:  # what only the model knows (ids outside its vocabulary)
    message = str(e).replace(f"request {rid!r}: ", "")
    param = p.prompt_field if ("prompt" in message or "cache" in message) else next(
        (api for name, api in _ENGINE_FIELDS if name in message), None)
    raise ServeError(message, param) from None
  return p, req


def create_app(runner: Runner, tokenizer, served_model: str, defaults: Defaults,
               max_queue: int, max_request_bytes: int) -> FastAPI:
  app = FastAPI(title="z1 serve", docs_url=None, redoc_url=None, openapi_url=None)
  token_bytes = longest_token_bytes(tokenizer)
  max_seq_len, eos_ids = runner.engine.max_seq_len, runner.engine.markers.eos_ids
  trigger_ids = {mode: runner.engine.trigger_ids(mode) for mode in protocol.MODES}

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
    rid = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"
    try:
      raw = await _read(request)
      p, req = await asyncio.get_running_loop().run_in_executor(None, functools.partial(
          prepare, raw, kind, rid, engine=_engine(), tokenizer=tokenizer,
          served_model=served_model, defaults=defaults, token_bytes=token_bytes))
      if not runner.ready.is_set():
        raise ServeError("the engine is still compiling: retry shortly", status=503,
                         type="server_error", headers={"Retry-After": "5"})
      slots = _engine().slots
      if runner.accepted >= slots + max_queue:
        raise ServeError(f"the server is full ({slots} slots busy and {max_queue} "
                         "requests queued, --max-queue): retry later", status=429,
                         type="rate_limit_error", headers={"Retry-After": "1"})
    except ServeError as e:
      return _error(e)
    sink = Sink(asyncio.get_running_loop())
    runner.submit(req, sink)
    if p.stream:
      return StreamingResponse(_stream(p, req, sink), media_type="text/event-stream",
                               headers={"Cache-Control": "no-cache"})
    return await _whole(request, p, req, sink)

  def _split(p, req, gen):
    return protocol.split_generation(gen, tokenizer, len(trigger_ids[p.mode]), eos_ids,
                                     req.thinking_budget is not None)

  async def _whole(request: HTTPRequest, p, req, sink: Sink):
    finished = False
    try:
      while True:
        try:
          item = await asyncio.wait_for(sink.queue.get(), _POLL_S)
        except asyncio.TimeoutError:
          if await request.is_disconnected():
            return JSONResponse(protocol.error_body("client disconnected"), status_code=499)
          continue
        if isinstance(item, Failed):
          finished = True
          return _ASCIIJSON(protocol.error_body(item.message, "server_error"),
                            status_code=item.status if item.status != 499 else 500)
        if item.finished is not None:
          finished = True
          shape = protocol.chat_response if p.kind == "chat" else protocol.completion_response
          return shape(req.id, served_model, _split(p, req, item.finished))
    finally:
      if not finished:
        runner.cancel(req.id)

  async def _stream(p, req, sink: Sink):
    created = int(time.time())
    chunk = protocol.chat_chunk if p.kind == "chat" else protocol.completion_chunk
    text = protocol.StreamText(tokenizer, eos_ids, req.thinking_budget is not None)
    trigger_text = protocol.decode(tokenizer, trigger_ids[p.mode])
    finished = False
    try:
      if p.kind == "chat":
        yield _sse(chunk(req.id, served_model, created, {"role": "assistant", "content": ""}))
      while True:
        item = await sink.queue.get()
        if isinstance(item, Failed):
          finished = True
          yield _sse(protocol.error_body(item.message, "server_error"))
          break
        done = item.finished is not None
        for field, delta in text.add(item.offset, item.new_tokens, item.trigger_at,
                                     item.trigger_len, done, done and item.finished.ended):
          if field == "trigger":
            yield _sse(chunk(req.id, served_model, created, {}, extra={"z1": {
                "trigger": trigger_text, "thinking_tokens": text.trigger[0]}}))
          else:
            yield _sse(chunk(req.id, served_model, created, {field: delta}))
        if done:
          finished = True
          s = _split(p, req, item.finished)
          yield _sse(chunk(req.id, served_model, created, {}, s.finish_reason,
                           extra={"z1": protocol.z1_fields(s)}))
          if p.include_usage:
            yield _sse(protocol.usage_chunk(req.id, served_model, created, p.kind, s))
          break
      yield "data: [DONE]\n\n"
    finally:
      if not finished:  # the client went away (or the server is stopping): free the slot
        runner.cancel(req.id)

  @app.post("/v1/chat/completions")
  async def chat(request: HTTPRequest):
    return await _serve(request, "chat")

  @app.post("/v1/completions")
  async def completions(request: HTTPRequest):
    return await _serve(request, "completion")

  return app
