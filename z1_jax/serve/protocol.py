"""The OpenAI wire format of `z1 serve`: request parsing and validation, response and stream
chunk shapes, usage accounting, and the reasoning / answer split of a Z1 generation.

No HTTP and no engine here (pure functions, unit-tested): `app.py` calls them.

Field names follow OpenAI's API and vLLM's extensions: `thinking_token_budget` (vLLM's name for
the per-request thinking budget B), `reasoning` and `reasoning_content` (the same text under
vLLM's current and former names), `usage.completion_tokens_details.reasoning_tokens`,
`{"error": {"message", "type", "param", "code"}}`. Z1's own fields: `answer_tokens` (A, the
answer allowance after the trigger), `placement` (`replace` / `append`), `mode` (`z1` / `s1`),
and a `z1` object in each response.

Parsing (`load_body`, `parse_chat`, `parse_completion`) turns any bytes into a `Parsed` request
or a `ServeError` (4xx): every number is checked against the width the engine stores it in
(int32, float32), every string is valid Unicode, and nothing it raises is anything else.

How budgets, answer allowances and `max_tokens` compose: `limits` (the table is in the README's
Serve section). The reasoning / answer rule: `split_generation` and `StreamText`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from typing import Any, Sequence

from z1_jax.data.format import DEFAULT_SYSTEM_PROMPT

INT32_MAX = 2**31 - 1  # integers the engine stores on the device are int32
PLACEMENTS = ("replace", "append")
MODES = ("z1", "s1")
ROLES = ("system", "user", "assistant")


class ServeError(Exception):
  """A request the server refuses: `status` (4xx), a message naming the field (`param`)."""

  def __init__(self, message: str, param: str | None = None, status: int = 400,
               type: str = "invalid_request_error", code: str | None = None,
               headers: dict[str, str] | None = None):
    super().__init__(message)
    self.message, self.param, self.status = message, param, status
    self.type, self.code, self.headers = type, code, headers or {}

  def body(self) -> dict:
    return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
  """OpenAI's error shape."""
  return {"error": {"message": message, "type": type, "param": param, "code": code}}


@dataclasses.dataclass(frozen=True)
class Defaults:
  """Server-wide settings a request may override."""
  thinking_budget: int | None = None  # --default-thinking-budget
  answer_tokens: int | None = None  # --default-answer-tokens
  system_prompt: str | None = DEFAULT_SYSTEM_PROMPT  # when the messages have no system turn


@dataclasses.dataclass(frozen=True)
class Parsed:
  """A validated request, ready for the engine (`prompt_ids` filled in by the app)."""
  kind: str  # "chat" | "completion"
  prompt_text: str | None  # text to tokenize (None when `prompt_ids` came as ids)
  prompt_ids: tuple[int, ...] | None
  stream: bool
  include_usage: bool  # stream_options.include_usage
  temperature: float
  top_p: float | None
  top_k: int | None
  seed: int | None  # None: the client sent none (the app draws one)
  max_tokens: int | None  # the completion cap M (max_tokens / max_completion_tokens)
  thinking_budget: int | None
  answer_tokens: int | None
  placement: str | None
  mode: str
  max_tokens_field: str | None = None  # which of max_tokens / max_completion_tokens was sent

  @property
  def prompt_field(self) -> str:
    return "messages" if self.kind == "chat" else "prompt"


@dataclasses.dataclass(frozen=True)
class Limits:
  """What the engine will be asked for: a budgeted row or a plain one."""
  thinking_budget: int | None
  answer_tokens: int | None
  max_new_tokens: int | None
  placement: str | None


# -- the body ------------------------------------------------------------------------------------

def load_body(raw: bytes):
  """The JSON value of a request body: UTF-8 (RFC 8259), and every string in it valid Unicode
  (JSON's `\\ud800` escapes can spell lone surrogates, which no tokenizer or encoder takes)."""
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise ServeError(f"the request body is not UTF-8 text (byte {e.start}: "
                     f"{raw[e.start:e.start + 1]!r})") from None
  try:
    body = json.loads(text)
  except RecursionError:
    raise ServeError("the request body is not usable JSON: nested too deeply") from None
  except ValueError as e:  # JSONDecodeError, and integers past Python's 4300-digit limit
    raise ServeError(f"the request body is not valid JSON: {str(e)[:200]}") from None
  try:
    valid = _encodes(body)
  except RecursionError:
    raise ServeError("the request body is not usable JSON: nested too deeply") from None
  if not valid:
    fields = list(body) if isinstance(body, dict) else []
    field = next((k for k in fields if not _encodes([k, body[k]])), None)
    where = "the body" if field is None else (field if _encodes(field) else "a key")
    raise ServeError(f"{where}: a string holds a lone surrogate (a JSON \\ud800-\\udfff "
                     "escape that is not half of a pair): not valid Unicode",
                     field if field is not None and _encodes(field) else None)
  return body


def _encodes(value) -> bool:
  """Every string (and key) in `value` is valid Unicode: it encodes as UTF-8."""
  try:
    json.dumps(value, ensure_ascii=False).encode("utf-8")
  except UnicodeEncodeError:
    return False
  return True


# -- field readers: each raises ServeError naming the field ------------------------------------

def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
  """A JSON number that is finite (an integer of any size; compared exactly, never converted
  before it is known to be in range)."""
  return _is_int(v) or (isinstance(v, float) and math.isfinite(v))


def _show(v) -> str:
  """A value for an error message, short (an integer of thousands of digits is not echoed)."""
  if _is_int(v) and abs(v) >= 10**30:  # (JSON brings at most 4300 digits: str() takes them)
    return f"an integer of {len(str(abs(v)))} digits"
  text = json.dumps(v, ensure_ascii=True) if isinstance(v, (str, list, dict)) else repr(v)
  return text if len(text) <= 60 else text[:57] + "..."


def _int(body: dict, name: str, minimum: int, maximum: int = INT32_MAX) -> int | None:
  v = body.get(name)
  if v is None:
    return None
  if not _is_int(v) or not minimum <= v <= maximum:
    upper = "2**31" if maximum == INT32_MAX else f"{maximum + 1}"
    raise ServeError(f"{name}={_show(v)}: expected an integer in [{minimum}, {upper})", name)
  return v


def _number(body: dict, name: str, lo: float, hi: float, lo_open=False) -> float | None:
  v = body.get(name)
  if v is None:
    return None
  if not _is_number(v) or not lo <= v <= hi or (lo_open and v == lo):
    bracket = "(" if lo_open else "["
    raise ServeError(f"{name}={_show(v)}: expected a number in {bracket}{lo}, {hi}]", name)
  return float(v)


def _choice(body: dict, name: str, choices: Sequence[str]) -> str | None:
  v = body.get(name)
  if v is None:
    return None
  if not isinstance(v, str) or v not in choices:
    raise ServeError(f"{name}={_show(v)}: expected one of {', '.join(choices)}", name)
  return v


def _bool(body: dict, name: str) -> bool:
  v = body.get(name, False)
  if v is None:
    return False
  if not isinstance(v, bool):
    raise ServeError(f"{name}={_show(v)}: expected true or false", name)
  return v


# Fields this server does not implement: refused when set to anything but their no-op value
# (a client asking for them would otherwise get a response that silently ignored them).
_UNSUPPORTED = {
    "logprobs": (None, False, 0), "top_logprobs": (None, 0), "echo": (None, False),
    "best_of": (None, 1), "suffix": (None, ""), "logit_bias": (None, {}),
    "presence_penalty": (None, 0, 0.0), "frequency_penalty": (None, 0, 0.0),
    "tools": (None, []), "functions": (None, []), "response_format": (None, {"type": "text"}),
}


def _same(v, allowed) -> bool:
  """`v` is one of `allowed` as JSON compares them (numbers by value; true is not 1)."""
  for a in allowed:
    if a is None or not _is_number(a):
      if type(v) is type(a) and v == a:
        return True
    elif _is_number(v) and v == a:
      return True
  return False


def _common(body: dict, kind: str, served_model: str) -> dict:
  if not isinstance(body, dict):
    raise ServeError("the request body must be a JSON object", None)
  model = body.get("model")
  if model is None:
    raise ServeError("model is required", "model")
  if not isinstance(model, str):
    raise ServeError(f"model={_show(model)}: expected the model's name", "model")
  if model != served_model:
    raise ServeError(f"model={_show(model)}: this server serves {served_model!r}", "model",
                     status=404, code="model_not_found")
  for name, allowed in _UNSUPPORTED.items():
    if name in body and not _same(body[name], allowed):
      raise ServeError(f"{name} is not supported by this server", name)
  n = body.get("n")
  if n is not None and not (_is_int(n) and n == 1):
    raise ServeError(f"n={_show(n)}: only n=1 is supported (one choice per request)", "n")
  if not _same(body.get("stop"), (None, [], "")):
    raise ServeError("stop is not supported (generation ends at the model's end token, the "
                     "token limit or the thinking budget)", "stop")
  stream = _bool(body, "stream")
  options = body.get("stream_options")
  if options is not None and (not isinstance(options, dict) or not stream):
    raise ServeError("stream_options needs stream=true and must be an object",
                     "stream_options")
  include_usage = bool(options and _bool(options, "include_usage"))
  caps = [c for c in ("max_tokens", "max_completion_tokens") if body.get(c) is not None]
  max_tokens = _int(body, caps[0], 1) if caps else None
  if len(caps) == 2 and _int(body, caps[1], 1) != max_tokens:
    raise ServeError("max_tokens and max_completion_tokens disagree: pass one",
                     "max_completion_tokens")
  temperature = _number(body, "temperature", 0.0, 2.0)
  top_p = _number(body, "top_p", 0.0, 1.0, lo_open=True)
  top_k = body.get("top_k")
  if _is_int(top_k) and top_k == -1:  # vLLM's "off"
    top_k = None
  top_k = _int({"top_k": top_k}, "top_k", 1)
  seed = _int(body, "seed", 0)
  temperature = 1.0 if temperature is None else temperature  # OpenAI's default
  if temperature == 0.0:
    top_p = top_k = None  # greedy: the filters change nothing
  else:
    top_p = None if top_p == 1.0 else top_p
  return dict(
      kind=kind, stream=stream, include_usage=include_usage, temperature=temperature,
      top_p=top_p, top_k=top_k, seed=seed, max_tokens=max_tokens,
      thinking_budget=_int(body, "thinking_token_budget", 1),
      answer_tokens=_int(body, "answer_tokens", 1),
      placement=_choice(body, "placement", PLACEMENTS), mode=_choice(body, "mode", MODES) or "z1",
      max_tokens_field=caps[0] if caps else None)


def _text(content, where: str) -> str:
  """A message's content: a string, or a list of `{"type": "text", "text": ...}` parts."""
  if isinstance(content, str):
    return content
  if isinstance(content, list) and content:
    parts = []
    for i, part in enumerate(content):
      if not (isinstance(part, dict) and part.get("type") == "text"
              and isinstance(part.get("text"), str)):
        raise ServeError(f"{where}[{i}]: only text parts are supported", "messages")
      parts.append(part["text"])
    return "".join(parts)
  raise ServeError(f"{where}: expected a string or a list of text parts", "messages")


def chat_prompt(messages, system_prompt: str | None) -> str:
  """The Qwen2.5 chat prompt (`data.format.render_prompt`'s layout, any number of turns),
  ending with the assistant's turn opened; `system_prompt` when the messages have no system
  turn."""
  if not isinstance(messages, list) or not messages:
    raise ServeError("messages: expected a non-empty list of messages", "messages")
  turns = []
  for i, m in enumerate(messages):
    where = f"messages[{i}]"
    if not isinstance(m, dict):
      raise ServeError(f"{where}: expected an object with role and content", "messages")
    role = m.get("role")
    if not isinstance(role, str) or role not in ROLES:
      raise ServeError(f"{where}.role={_show(role)}: expected one of {', '.join(ROLES)}",
                       "messages")
    if role == "system" and i:
      raise ServeError(f"{where}: a system message must come first", "messages")
    turns.append((role, _text(m.get("content"), f"{where}.content")))
  if turns[-1][0] == "assistant":
    raise ServeError("messages: the last message must be the user's (continuing an "
                     "assistant turn is not supported)", "messages")
  if turns[0][0] != "system" and system_prompt is not None:
    turns.insert(0, ("system", system_prompt))
  text = "".join(f"<|im_start|>{role}\n{content}<|im_end|>\n" for role, content in turns)
  return text + "<|im_start|>assistant\n"


def parse_chat(body, served_model: str, defaults: Defaults) -> Parsed:
  fields = _common(body, "chat", served_model)
  text = chat_prompt(body.get("messages"), defaults.system_prompt)
  return Parsed(prompt_text=text, prompt_ids=None, **fields)


def parse_completion(body, served_model: str) -> Parsed:
  fields = _common(body, "completion", served_model)
  prompt = body.get("prompt")
  if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
    prompt = prompt[0]  # one prompt in a list
  if isinstance(prompt, str) and prompt:
    return Parsed(prompt_text=prompt, prompt_ids=None, **fields)
  if isinstance(prompt, list) and prompt and all(_is_int(t) for t in prompt):
    return Parsed(prompt_text=None, prompt_ids=tuple(prompt), **fields)
  if isinstance(prompt, list) and len(prompt) > 1 and all(
      isinstance(t, (str, list)) for t in prompt):
    raise ServeError("prompt: one prompt per request (a list of prompts is a batch: send "
                     "them as separate requests)", "prompt")
  raise ServeError("prompt: expected a non-empty string or a list of token ids", "prompt")


def check_prompt_length(p: Parsed, prompt_tokens: int, max_seq_len: int,
                        at_least: bool = False) -> None:
  """Refuses a prompt that leaves no position to generate in the context. `at_least`: the
  count is a lower bound (a text's bytes over the longest token's), known before tokenizing."""
  if prompt_tokens >= max_seq_len:
    count = f"at least {prompt_tokens}" if at_least else f"{prompt_tokens}"
    raise ServeError(f"{p.prompt_field}: {count} prompt tokens leave no room to generate in "
                     f"the server's {max_seq_len}-position context (--max-seq-len)",
                     p.prompt_field, code="context_length_exceeded")


def limits(p: Parsed, defaults: Defaults, trigger_len: int, prompt_tokens: int,
           max_seq_len: int) -> Limits:
  """The engine's limits for `p`: a window B and an answer allowance A, or a plain decode of
  up to M tokens (the table in the README's Serve section). `trigger_len`: T for `p.mode`.

  W = B (+ T with `append`) tokens come before the answer; a budgeted row generates at most
  W + A. `room` = the context's positions after the prompt; `cap` = `max_tokens`, else room.
  - The client's budget B: A = `answer_tokens`, else what `max_tokens` leaves (M - W), else
    `--default-answer-tokens` (at most the room left). Refused when W + A does not fit.
  - The server's default budget D: with `answer_tokens` the window shrinks to fit the cap
    (min(D, cap - A - T')); without it the answer gets what the cap leaves after D, and where
    D leaves nothing the request decodes plainly up to the cap, as on a server without a
    default (unless it sent `mode` or `placement`, which need a window).
  - No budget: a plain decode of up to M tokens (or the room).
  Every refusal names fields the client sent (the server's defaults are described, not
  named as fields)."""
  room = max_seq_len - prompt_tokens
  cap_name = p.max_tokens_field or "max_tokens"
  context = (f"{prompt_tokens} prompt tokens leave {room} of the server's {max_seq_len}-"
             "position context (--max-seq-len)")
  # fields that need a window (mode z1 is also what a plain request decodes with)
  sent_window = [f for f, v in (("placement", p.placement), ("mode", p.mode == "s1" or None))
                 if v is not None]

  def fits(total: int) -> None:
    if total > room:
      raise ServeError(f"{p.prompt_field}: {context}, and this request may generate "
                       f"{total} tokens", p.prompt_field, code="context_length_exceeded")

  def plain(cap: int) -> Limits:
    fits(cap)
    return Limits(None, None, cap, None)

  budget = p.thinking_budget
  default_budget = budget is None and defaults.thinking_budget is not None
  if default_budget:
    budget = defaults.thinking_budget
  if budget is None:
    if p.answer_tokens is not None or sent_window:
      field = "answer_tokens" if p.answer_tokens is not None else sent_window[0]
      raise ServeError(f"{field} needs thinking_token_budget (this server has no default "
                       "thinking budget)", field)
    return plain(p.max_tokens if p.max_tokens is not None else room)
  placement = p.placement or ("replace" if p.mode == "z1" else "append")
  extra = trigger_len if placement == "append" else 0  # T': the trigger after the window
  if not default_budget and budget <= trigger_len:
    raise ServeError(f"thinking_token_budget={budget} must exceed the answer trigger's "
                     f"{trigger_len} tokens", "thinking_token_budget")
  cap = p.max_tokens if p.max_tokens is not None else room
  cap_text = (f"{cap_name}={cap}" if p.max_tokens is not None else
              f"the context ({context})")
  answer = p.answer_tokens
  if default_budget:
    if answer is not None:  # the window shrinks to what the client's numbers leave
      budget = min(budget, cap - answer - extra)
      if budget <= trigger_len:
        raise ServeError(
            f"answer_tokens={answer} leaves {max(cap - answer - extra, 0)} tokens of "
            f"{cap_text} for the thinking window{' (the trigger comes after it)' if extra else ''}"
            f"; the window must hold more than the answer trigger's {trigger_len} tokens",
            "answer_tokens")
    else:
      answer = cap - budget - extra
      if p.max_tokens is None and defaults.answer_tokens is not None:
        answer = min(answer, defaults.answer_tokens)
      if answer < 1:  # the server's window does not close before the cap
        if sent_window:
          raise ServeError(
              f"{sent_window[0]}={_show(getattr(p, sent_window[0]))} needs a thinking "
              f"window, and the server's default window ({budget + extra} tokens before the "
              f"answer) leaves no room for an answer within {cap_text}", sent_window[0])
        return plain(cap)
  elif answer is not None:
    if budget + extra + answer > cap and p.max_tokens is not None:
      raise ServeError(
          f"{cap_name}={cap} is below thinking_token_budget + answer_tokens: this request "
          f"may generate {budget + extra + answer} tokens ({budget + extra} before the "
          f"answer, {answer} after); raise {cap_name} or lower the budget", cap_name)
  elif p.max_tokens is not None:
    answer = p.max_tokens - budget - extra
    if answer < 1:
      raise ServeError(
          f"{cap_name}={p.max_tokens} leaves no room for the trigger and an answer: a "
          f"thinking budget of {budget} ({placement}) uses {budget + extra} tokens before "
          f"the answer; raise {cap_name} above {budget + extra} or lower "
          "thinking_token_budget", cap_name)
  else:
    answer = room - budget - extra
    if defaults.answer_tokens is not None:
      answer = min(answer, defaults.answer_tokens)
    if answer < 1:
      raise ServeError(
          f"thinking_token_budget={budget} ({budget + extra} tokens before the answer) "
          f"leaves no room for an answer: {context}", "thinking_token_budget",
          code="context_length_exceeded")
  fits(budget + extra + answer)
  return Limits(budget, answer, None, placement)


# -- responses -----------------------------------------------------------------------------------
#
# The reasoning / answer rule (one rule, streamed or not): Z1 writes no think delimiters, so
# the answer trigger is the only boundary. A budgeted request's tokens before the trigger are
# reasoning, the tokens after it are the answer (`content`), and the trigger's own tokens are
# in neither (the `z1.trigger` chunk marks it in a stream). Which side a token falls on is
# known when it is generated, so a stream never sends text twice or moves it: a budgeted row
# that ends inside its window has reasoning only (`content` is ""); its text is the whole
# output, which is what the paper grades for such rows. A request without a budget has
# `content` only. `reasoning_tokens` counts the tokens before the trigger of a budgeted row
# (all of them when it ended inside its window) and is 0 without a budget.

REASONING_FIELDS = ("reasoning", "reasoning_content")  # vLLM's current and former names


@dataclasses.dataclass(frozen=True)
class Split:
  """A finished generation as the API shows it."""
  reasoning: str | None  # the text before the trigger (None without a budget)
  content: str  # the text after the trigger; the whole text without a budget
  finish_reason: str
  prompt_tokens: int
  completion_tokens: int
  reasoning_tokens: int
  thinking_tokens: int
  answer_tokens: int
  hit_budget: bool


def decode(tokenizer, ids: Sequence[int]) -> str:
  """The text of `ids` (special tokens kept): the one decoder of responses and streams."""
  return tokenizer.backend_tokenizer.decode(list(ids), skip_special_tokens=False)


def split_generation(gen, tokenizer, trigger_len: int, eos_ids: Sequence[int],
                     budgeted: bool) -> Split:
  """`gen` (a `Generation`) split by the rule above (a final end id is no text)."""
  ids = list(gen.tokens)
  if gen.ended and ids and ids[-1] in eos_ids:
    ids = ids[:-1]
  if not budgeted:
    reasoning, content = None, decode(tokenizer, ids)
  elif gen.thinking_tokens < len(gen.tokens):  # the trigger (or s1 marker) was placed
    reasoning = decode(tokenizer, ids[:gen.thinking_tokens])
    content = decode(tokenizer, ids[gen.thinking_tokens + trigger_len:])
  else:  # ended inside its window
    reasoning, content = decode(tokenizer, ids), ""
  return Split(reasoning, content, gen.finish_reason, gen.prompt_tokens, len(gen.tokens),
               gen.thinking_tokens if budgeted else 0, gen.thinking_tokens,
               gen.answer_tokens, gen.hit_budget)


def usage(prompt_tokens: int, completion_tokens: int, reasoning_tokens: int) -> dict:
  return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
          "total_tokens": prompt_tokens + completion_tokens,
          "completion_tokens_details": {"reasoning_tokens": reasoning_tokens}}


def z1_fields(s: Split) -> dict:
  return {"hit_budget": s.hit_budget, "thinking_tokens": s.thinking_tokens,
          "answer_tokens": s.answer_tokens}


def _usage_of(s: Split) -> dict:
  return usage(s.prompt_tokens, s.completion_tokens, s.reasoning_tokens)


def _with_reasoning(obj: dict, reasoning: str | None) -> dict:
  if reasoning is not None:
    obj.update({name: reasoning for name in REASONING_FIELDS})
  return obj


def chat_response(rid: str, model: str, s: Split, created: int | None = None) -> dict:
  message = _with_reasoning({"role": "assistant", "content": s.content}, s.reasoning)
  return {"id": rid, "object": "chat.completion", "created": created or int(time.time()),
          "model": model,
          "choices": [{"index": 0, "message": message, "finish_reason": s.finish_reason,
                       "logprobs": None}],
          "usage": _usage_of(s), "z1": z1_fields(s)}


def completion_response(rid: str, model: str, s: Split, created: int | None = None) -> dict:
  choice = _with_reasoning({"index": 0, "text": s.content, "finish_reason": s.finish_reason,
                            "logprobs": None}, s.reasoning)
  return {"id": rid, "object": "text_completion", "created": created or int(time.time()),
          "model": model, "choices": [choice], "usage": _usage_of(s), "z1": z1_fields(s)}


def chat_chunk(rid: str, model: str, created: int, delta: dict, finish_reason=None,
               extra: dict | None = None) -> dict:
  """`delta`: {"content": text}, {"reasoning": text} (sent under both reasoning names), or
  {} (a chunk that only carries `finish_reason` / `extra`)."""
  body = _with_reasoning({"content": delta["content"]} if "content" in delta else {},
                         delta.get("reasoning"))
  if "role" in delta:
    body = {"role": delta["role"], **body}
  out = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
         "choices": [{"index": 0, "delta": body, "finish_reason": finish_reason,
                      "logprobs": None}]}
  return {**out, **(extra or {})}


def completion_chunk(rid: str, model: str, created: int, delta: dict, finish_reason=None,
                     extra: dict | None = None) -> dict:
  choice = _with_reasoning({"index": 0, "text": delta.get("content", ""),
                            "finish_reason": finish_reason, "logprobs": None},
                           delta.get("reasoning"))
  out = {"id": rid, "object": "text_completion", "created": created, "model": model,
         "choices": [choice]}
  return {**out, **(extra or {})}


def usage_chunk(rid: str, model: str, created: int, kind: str, s: Split) -> dict:
  """The last chunk with `stream_options.include_usage`: no choices, the usage."""
  obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
  return {"id": rid, "object": obj, "created": created, "model": model, "choices": [],
          "usage": _usage_of(s), "z1": z1_fields(s)}


class _FieldText:
  """One field's text, decoded as its tokens arrive: tokenizers' `DecodeStream` (it keeps
  the few ids of an unfinished multi-byte character or merge and decodes only those again, as
  HF's TextStreamer and vLLM's detokenizer do), so n tokens cost O(n), not O(n^2). At the end
  the ids it still holds (a character cut by the end) are decoded as the whole text would
  decode them."""

  def __init__(self, tokenizer):
    from tokenizers.decoders import DecodeStream
    self._tok = tokenizer.backend_tokenizer
    self._stream = DecodeStream(skip_special_tokens=False)
    self._sent: list[int] = []  # the ids of the last piece sent (context for the flush)
    self._held: list[int] = []  # ids since then

  def push(self, ids: list[int]) -> str:
    if not ids:
      return ""
    self._held.extend(ids)
    text = self._stream.step(self._tok, ids)
    if text is None:
      return ""
    self._sent, self._held = self._held, []
    return text

  def flush(self) -> str:
    if not self._held:
      return ""
    before = self._tok.decode(self._sent, skip_special_tokens=False)
    both = self._tok.decode(self._sent + self._held, skip_special_tokens=False)
    self._sent, self._held = self._sent + self._held, []
    return both[len(before):]


class StreamText:
  """A generation's tokens, as the engine's events bring them, as ("reasoning" | "trigger" |
  "content", text) deltas by the rule above: joined, each field equals `split_generation`'s.

  Tokens arrive in order and final (`offset` is always the count so far: the engine streams a
  replace row's tokens from B-T on only once they are final). The "trigger" delta (text None)
  marks where the trigger starts (the app sends `z1.trigger` there)."""

  def __init__(self, tokenizer, eos_ids: Sequence[int], budgeted: bool):
    self.eos_ids, self.budgeted = set(eos_ids), budgeted
    self.fields = {"reasoning": _FieldText(tokenizer), "content": _FieldText(tokenizer)}
    self.count = 0  # tokens received
    self.trigger: tuple[int, int] | None = None  # (index, length) once placed

  def add(self, offset: int, new_tokens: Sequence[int], trigger_at: int | None,
          trigger_len: int, done: bool = False, ended: bool = False) -> list[tuple[str, Any]]:
    if offset != self.count:
      raise ValueError(f"stream: tokens from {offset} after {self.count} (events must bring "
                       "final tokens in order)")
    tokens = [int(t) for t in new_tokens]
    self.count += len(tokens)
    if done and ended and tokens and tokens[-1] in self.eos_ids:
      tokens = tokens[:-1]  # the end id is no text
    out: list[tuple[str, Any]] = []
    run: list[int] = []
    run_field = None

    def close():
      if run:
        text = self.fields[run_field].push(run)
        if text:
          out.append((run_field, text))

    for k, tok in enumerate(tokens):
      i = offset + k
      if self.budgeted and self.trigger is None and trigger_at is not None and k == trigger_at:
        close()
        run, run_field = [], None
        self._place_trigger(i, trigger_len, out)
      if not self.budgeted:
        field = "content"
      elif self.trigger is None:
        field = "reasoning"
      elif i < self.trigger[0] + self.trigger[1]:
        continue  # the trigger's own tokens
      else:
        field = "content"
      if field != run_field:
        close()
        run, run_field = [], field
      run.append(tok)
    close()
    if self.budgeted and self.trigger is None and trigger_at is not None:
      self._place_trigger(offset + trigger_at, trigger_len, out)  # after the event's tokens
    if done:
      for field in ("reasoning", "content"):
        text = self.fields[field].flush()
        if text:
          out.append((field, text))
    return out

  def _place_trigger(self, index: int, length: int, out: list) -> None:
    """The reasoning is complete at the trigger: what it still holds goes out before it."""
    self.trigger = (index, length)
    text = self.fields["reasoning"].flush()
    if text:
      out.append(("reasoning", text))
    out.append(("trigger", None))
