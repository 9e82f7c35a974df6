"""The FastAPI app of `z1 serve`: `/v1/chat/completions`, `/v1/completions`, `/v1/models`,
`/health`. Parsing and shapes are `protocol`; the engine's thread is `runner`.

Every refusal is OpenAI's error shape with its status (400 naming the field, 404 for an unknown
model or path, 429 with `Retry-After` for a full queue, 503 while compiling); bad input never
reaches the engine's thread, so it cannot disturb other requests.
"""

from __future__ import annotations

import asyncio
import json
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


def _error(e: ServeError) -> JSONResponse:
  return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


def _sse(obj) -> str:
  return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def create_app(runner: Runner, tokenizer, served_model: str, defaults: Defaults,
               max_queue: int) -> FastAPI:
  engine = runner.engine
  eos_ids = tuple(engine.markers.eos_ids)
  app = FastAPI(title="z1 serve", docs_url=None, redoc_url=None, openapi_url=None)

  @app.exception_handler(StarletteHTTPException)
  async def _http_error(request, exc: StarletteHTTPException):
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    return JSONResponse(protocol.error_body(str(exc.detail), kind), status_code=exc.status_code)

  @app.exception_handler(Exception)
  async def _crash(request, exc: Exception):  # a bug, still in the API's shape
    return JSONResponse(protocol.error_body(f"internal error: {type(exc).__name__}: {exc}",
                                            "server_error"), status_code=500)

  @app.get("/health")
  async def health():
    if runner.failed:
      return JSONResponse({"status": "failed", "error": runner.failed}, status_code=503)
    if not runner.ready.is_set():
      return JSONResponse({"status": "loading"}, status_code=503)
    return {"status": "ok", **runner.stats()}

  @app.get("/v1/models")
  async def models():
    return {"object": "list", "data": [{
        "id": served_model, "object": "model", "created": 0, "owned_by": "z1-jax",
        "max_model_len": engine.max_seq_len}]}

  async def _body(request: HTTPRequest):
    raw = await request.body()
    try:
      return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise ServeError(f"the request body is not valid JSON: {e}") from None

  def _request(p: protocol.Parsed, rid: str):
    from z1_jax.infer.engine import Request
    if runner.failed:
      raise ServeError(f"the engine failed: {runner.failed}", status=503, type="server_error")
    if not runner.ready.is_set():
      raise ServeError("the engine is still compiling: retry shortly", status=503,
                       type="server_error", headers={"Retry-After": "5"})
    field = "messages" if p.kind == "chat" else "prompt"
    if p.prompt_ids is not None:
      ids = list(p.prompt_ids)
    else:
      ids = tokenizer.encode(p.prompt_text, add_special_tokens=False)
    trigger_len = len(engine.trigger_ids(p.mode))
    room = engine.max_seq_len - len(ids)
    if room < 1:
      raise ServeError(f"{field}: {len(ids)} prompt tokens do not fit the server's "
                       f"{engine.max_seq_len}-position context (--max-seq-len)", field)
    lim = protocol.limits(p, defaults, trigger_len, room)
    req = Request(id=rid, prompt_ids=tuple(ids), thinking_budget=lim.thinking_budget,
                  answer_tokens=lim.answer_tokens, max_new_tokens=lim.max_new_tokens,
                  placement=lim.placement, mode=p.mode, temperature=p.temperature,
                  top_p=p.top_p, top_k=p.top_k, seed=p.seed)
    try:
      engine.validate(req)
    except Z1Error as e:
      message = str(e).replace(f"request {rid!r}: ", "")
      param = field if ("prompt" in message or "cache" in message) else next(
          (api for name, api in _ENGINE_FIELDS if name in message), None)
      raise ServeError(message, param) from None
    if runner.accepted >= engine.slots + max_queue:
      raise ServeError(f"the server is full ({engine.slots} slots busy and {max_queue} "
                       "requests queued, --max-queue): retry later", status=429,
                       type="rate_limit_error", headers={"Retry-After": "1"})
    return req, len(ids)

  async def _serve(request: HTTPRequest, kind: str):
    try:
      body = await _body(request)
      if kind == "chat":
        p = protocol.parse_chat(body, served_model, defaults)
      else:
        p = protocol.parse_completion(body, served_model)
      rid = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"
      req, _ = _request(p, rid)
    except ServeError as e:
      return _error(e)
    sink = Sink(asyncio.get_running_loop())
    runner.submit(req, sink)
    if p.stream:
      return StreamingResponse(_stream(p, req, sink), media_type="text/event-stream",
                               headers={"Cache-Control": "no-cache"})
    return await _whole(request, p, req, sink)

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
          return JSONResponse(protocol.error_body(item.message, "server_error"),
                              status_code=item.status if item.status != 499 else 500)
        if item.finished is not None:
          finished = True
          s = protocol.split_generation(item.finished, tokenizer,
                                        len(engine.trigger_ids(p.mode)), eos_ids)
          shape = protocol.chat_response if p.kind == "chat" else protocol.completion_response
          return shape(req.id, served_model, s)
    finally:
      if not finished:
        runner.cancel(req.id)

  async def _stream(p, req, sink: Sink):
    created = int(time.time())
    chunk = protocol.chat_chunk if p.kind == "chat" else protocol.completion_chunk
    text = protocol.StreamText(tokenizer, eos_ids, req.thinking_budget is not None)
    trigger_text = tokenizer.decode(list(engine.trigger_ids(p.mode)))
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
        at_trigger = text.add(item.offset, item.new_tokens, item.trigger_at, item.trigger_len)
        done = item.finished is not None
        for field, delta in text.deltas(final=done, ended=done and item.finished.ended):
          if field == "content" and at_trigger:
            yield _sse(chunk(req.id, served_model, created, {}, extra={"z1": {
                "trigger": trigger_text, "thinking_tokens": text.trigger[0]}}))
            at_trigger = False
          yield _sse(chunk(req.id, served_model, created, {field: delta}))
        if at_trigger:  # the trigger arrived with no answer text yet
          yield _sse(chunk(req.id, served_model, created, {}, extra={"z1": {
              "trigger": trigger_text, "thinking_tokens": text.trigger[0]}}))
        if done:
          finished = True
          s = protocol.split_generation(item.finished, tokenizer, item.trigger_len or len(
              engine.trigger_ids(p.mode)), eos_ids)
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
