"""The OpenAI wire format of `z1 serve`: request parsing and validation, response and stream
chunk shapes, usage accounting, and the reasoning / answer split of a Z1 generation.

No HTTP and no engine here (pure functions, unit-tested): `app.py` calls them.

Field names follow OpenAI's API and vLLM's extensions: `thinking_token_budget` (vLLM's name for
the per-request thinking budget B), `reasoning_content`,
`usage.completion_tokens_details.reasoning_tokens`, `{"error": {"message", "type", "param",
"code"}}`. Z1's own fields: `answer_tokens` (A, the answer allowance after the trigger),
`placement` (`replace` / `append`), `mode` (`z1` / `s1`), and a `z1` object in each response.

How the completion cap and the budget agree (a request never gets a silently shortened answer):
a budgeted row generates at most `B + A` tokens with `replace` (the trigger sits inside the
window) or `B + T + A` with `append` (T = the trigger's length). With `max_tokens` M and no
`answer_tokens`, A is what M leaves (M - B, or M - B - T); M that leaves no room for the
trigger and one answer token is refused. With both, the total must fit M.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Sequence

from z1_jax.data.format import DEFAULT_SYSTEM_PROMPT

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
  seed: int
  max_tokens: int | None  # the completion cap M (max_tokens / max_completion_tokens)
  thinking_budget: int | None
  answer_tokens: int | None
  placement: str | None
  mode: str


@dataclasses.dataclass(frozen=True)
class Limits:
  """What the engine will be asked for: a budgeted row or a plain one."""
  thinking_budget: int | None
  answer_tokens: int | None
  max_new_tokens: int | None
  placement: str | None


# -- field readers: each raises ServeError naming the field ------------------------------------

def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int(body: dict, name: str, minimum: int, maximum: int | None = None) -> int | None:
  v = body.get(name)
  if v is None:
    return None
  if not _is_int(v) or v < minimum or (maximum is not None and v > maximum):
    upper = f" and <= {maximum}" if maximum is not None else ""
    raise ServeError(f"{name}={v!r}: expected an integer >= {minimum}{upper}", name)
  return v


def _number(body: dict, name: str, lo: float, hi: float, lo_open=False) -> float | None:
  v = body.get(name)
  if v is None:
    return None
  if not _is_number(v) or v < lo or v > hi or (lo_open and v == lo):
    bracket = "(" if lo_open else "["
    raise ServeError(f"{name}={v!r}: expected a number in {bracket}{lo}, {hi}]", name)
  return float(v)


def _choice(body: dict, name: str, choices: Sequence[str]) -> str | None:
  v = body.get(name)
  if v is None:
    return None
  if v not in choices:
    raise ServeError(f"{name}={v!r}: expected one of {', '.join(choices)}", name)
  return v


def _bool(body: dict, name: str) -> bool:
  v = body.get(name, False)
  if v is None:
    return False
  if not isinstance(v, bool):
    raise ServeError(f"{name}={v!r}: expected true or false", name)
  return v


# Fields this server does not implement: refused when set to anything but their no-op value
# (a client asking for them would otherwise get a response that silently ignored them).
_UNSUPPORTED = {
    "logprobs": (None, False, 0), "top_logprobs": (None, 0), "echo": (None, False),
    "best_of": (None, 1), "suffix": (None, ""), "logit_bias": (None, {}),
    "presence_penalty": (None, 0, 0.0), "frequency_penalty": (None, 0, 0.0),
    "tools": (None, []), "functions": (None, []), "response_format": (None, {"type": "text"}),
}


def _common(body: dict, kind: str, served_model: str) -> dict:
  if not isinstance(body, dict):
    raise ServeError("the request body must be a JSON object", None)
  model = body.get("model")
  if model is None:
    raise ServeError("model is required", "model")
  if model != served_model:
    raise ServeError(f"model={model!r}: this server serves {served_model!r}", "model",
                     status=404, code="model_not_found")
  for name, allowed in _UNSUPPORTED.items():
    if name in body and body[name] not in allowed:
      raise ServeError(f"{name} is not supported by this server", name)
  n = body.get("n")
  if n is not None and n != 1:
    raise ServeError(f"n={n!r}: only n=1 is supported (one choice per request)", "n")
  if body.get("stop") not in (None, [], ""):
    raise ServeError("stop is not supported (generation ends at the model's end token, the "
                     "token limit or the thinking budget)", "stop")
  stream = _bool(body, "stream")
  options = body.get("stream_options")
  if options is not None and (not isinstance(options, dict) or not stream):
    raise ServeError("stream_options needs stream=true and must be an object",
                     "stream_options")
  include_usage = bool(options and _bool(options, "include_usage"))
  caps = [c for c in ("max_tokens", "max_completion_tokens") if body.get(c) is not None]
  if len(caps) == 2 and body["max_tokens"] != body["max_completion_tokens"]:
    raise ServeError("max_tokens and max_completion_tokens disagree: pass one",
                     "max_completion_tokens")
  max_tokens = _int(body, caps[0], 1) if caps else None
  temperature = _number(body, "temperature", 0.0, 2.0)
  top_p = _number(body, "top_p", 0.0, 1.0, lo_open=True)
  top_k = body.get("top_k")
  if top_k == -1:  # vLLM's "off"
    top_k = None
  top_k = _int({"top_k": top_k}, "top_k", 1)
  seed = _int(body, "seed", 0, 2**31 - 1)
  temperature = 1.0 if temperature is None else temperature  # OpenAI's default
  if temperature == 0.0:
    top_p = top_k = None  # greedy: the filters change nothing
  else:
    top_p = None if top_p == 1.0 else top_p
  return dict(
      kind=kind, stream=stream, include_usage=include_usage, temperature=temperature,
      top_p=top_p, top_k=top_k, seed=0 if seed is None else seed, max_tokens=max_tokens,
      thinking_budget=_int(body, "thinking_token_budget", 1),
      answer_tokens=_int(body, "answer_tokens", 1),
      placement=_choice(body, "placement", PLACEMENTS), mode=_choice(body, "mode", MODES) or "z1")


def _text(content, where: str) -> str:
  """A message's content: a string, or a list of `{"type": "text", "text": ...}` parts."""
  if isinstance(content, str):
    return content
  if isinstance(content, list) and content:
    parts = []
    for i, part in enumerate(content):
      if not (isinstance(part, dict) and part.get("type") == "text"
              and isinstance(part.get("text"), str)):
        raise ServeError(f"{where}[{i}]: only text parts are supported", where)
      parts.append(part["text"])
    return "".join(parts)
  raise ServeError(f"{where}: expected a string or a list of text parts", where)


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
    if role not in ROLES:
      raise ServeError(f"{where}.role={role!r}: expected one of {', '.join(ROLES)}",
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
  if isinstance(prompt, list) and len(prompt) > 1:
    raise ServeError("prompt: one prompt per request (a list of prompts is a batch: send "
                     "them as separate requests)", "prompt")
  raise ServeError("prompt: expected a non-empty string or a list of token ids", "prompt")


def limits(p: Parsed, defaults: Defaults, trigger_len: int, room: int) -> Limits:
  """The engine's limits for `p` (see the module docstring). `trigger_len`: T for `p.mode`;
  `room`: cache positions left after the prompt (for a plain request without `max_tokens`)."""
  budget = p.thinking_budget
  if budget is None and p.answer_tokens is None:
    budget = defaults.thinking_budget
  if budget is None:
    if p.answer_tokens is not None or p.placement is not None or p.mode != "z1":
      field = ("answer_tokens" if p.answer_tokens is not None else
               "placement" if p.placement is not None else "mode")
      raise ServeError(f"{field} needs thinking_token_budget (no server default is set)",
                       field)
    return Limits(None, None, p.max_tokens if p.max_tokens is not None else max(room, 1), None)
  placement = p.placement or ("replace" if p.mode == "z1" else "append")
  if budget <= trigger_len:
    raise ServeError(f"thinking_token_budget={budget} must exceed the answer trigger's "
                     f"{trigger_len} tokens", "thinking_token_budget")
  before_answer = budget + (trigger_len if placement == "append" else 0)
  answer = p.answer_tokens
  if p.max_tokens is not None:
    cap_name = "max_tokens"
    if answer is None:
      answer = p.max_tokens - before_answer
      if answer < 1:
        raise ServeError(
            f"{cap_name}={p.max_tokens} leaves no room for the trigger and an answer: a "
            f"thinking budget of {budget} ({placement}) uses {before_answer} tokens before "
            f"the answer; raise {cap_name} above {before_answer} or lower "
            "thinking_token_budget", cap_name)
    elif before_answer + answer > p.max_tokens:
      raise ServeError(
          f"{cap_name}={p.max_tokens} is below thinking_token_budget + answer_tokens: this "
          f"request may generate {before_answer + answer} tokens ({before_answer} before the "
          f"answer, {answer} after); raise {cap_name} or lower the budget", cap_name)
  elif answer is None:
    answer = defaults.answer_tokens
    if answer is None:
      raise ServeError("thinking_token_budget needs answer_tokens or max_tokens (no server "
                       "default --default-answer-tokens is set)", "answer_tokens")
  return Limits(budget, answer, None, placement)


# -- responses -----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Split:
  """A finished generation as the API shows it."""
  reasoning: str | None  # the thinking before the trigger (None without a trigger)
  content: str  # the answer; the whole text for a row without a trigger
  finish_reason: str
  prompt_tokens: int
  completion_tokens: int
  thinking_tokens: int
  answer_tokens: int
  hit_budget: bool


def split_generation(gen, tokenizer, trigger_len: int, eos_ids: Sequence[int]) -> Split:
  """`reasoning` = tokens before the trigger, `content` = tokens after it (a final end id left
  out); a row without a trigger (it ended inside its window, or no budget) is all content."""
  ids = list(gen.tokens)
  if gen.ended and ids and ids[-1] in eos_ids:
    ids = ids[:-1]
  has_trigger = gen.answer_tokens > 0 or (gen.thinking_tokens < len(gen.tokens))
  if has_trigger:
    reasoning = tokenizer.decode(ids[:gen.thinking_tokens])
    content = tokenizer.decode(ids[gen.thinking_tokens + trigger_len:])
  else:
    reasoning, content = None, tokenizer.decode(ids)
  return Split(reasoning, content, gen.finish_reason, gen.prompt_tokens, len(gen.tokens),
               gen.thinking_tokens, gen.answer_tokens, gen.hit_budget)


def usage(prompt_tokens: int, completion_tokens: int, reasoning_tokens: int) -> dict:
  return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
          "total_tokens": prompt_tokens + completion_tokens,
          "completion_tokens_details": {"reasoning_tokens": reasoning_tokens}}


def z1_fields(s: Split) -> dict:
  return {"hit_budget": s.hit_budget, "thinking_tokens": s.thinking_tokens,
          "answer_tokens": s.answer_tokens}


def _usage_of(s: Split) -> dict:
  return usage(s.prompt_tokens, s.completion_tokens, s.thinking_tokens)


def chat_response(rid: str, model: str, s: Split, created: int | None = None) -> dict:
  message: dict[str, Any] = {"role": "assistant", "content": s.content}
  if s.reasoning is not None:
    message["reasoning_content"] = s.reasoning
  return {"id": rid, "object": "chat.completion", "created": created or int(time.time()),
          "model": model,
          "choices": [{"index": 0, "message": message, "finish_reason": s.finish_reason,
                       "logprobs": None}],
          "usage": _usage_of(s), "z1": z1_fields(s)}


def completion_response(rid: str, model: str, s: Split, created: int | None = None) -> dict:
  choice = {"index": 0, "text": s.content, "finish_reason": s.finish_reason, "logprobs": None}
  if s.reasoning is not None:
    choice["reasoning_content"] = s.reasoning
  return {"id": rid, "object": "text_completion", "created": created or int(time.time()),
          "model": model, "choices": [choice], "usage": _usage_of(s), "z1": z1_fields(s)}


def chat_chunk(rid: str, model: str, created: int, delta: dict, finish_reason=None,
               extra: dict | None = None) -> dict:
  out = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
         "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason,
                      "logprobs": None}]}
  return {**out, **(extra or {})}


def completion_chunk(rid: str, model: str, created: int, delta: dict, finish_reason=None,
                     extra: dict | None = None) -> dict:
  choice = {"index": 0, "text": delta.get("content", ""), "finish_reason": finish_reason,
            "logprobs": None}
  if "reasoning_content" in delta:
    choice["reasoning_content"] = delta["reasoning_content"]
  out = {"id": rid, "object": "text_completion", "created": created, "model": model,
         "choices": [choice]}
  return {**out, **(extra or {})}


def usage_chunk(rid: str, model: str, created: int, kind: str, s: Split) -> dict:
  """The last chunk with `stream_options.include_usage`: no choices, the usage."""
  obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
  return {"id": rid, "object": obj, "created": created, "model": model, "choices": [],
          "usage": _usage_of(s), "z1": z1_fields(s)}


class StreamText:
  """Turns a generation's tokens, as they arrive, into `reasoning_content` / `content` deltas.

  A budgeted row's tokens stream as `reasoning_content` until the trigger (Z1 has no think
  delimiters: until the row ends or hits its budget, what it writes is thinking); the answer
  after the trigger streams as `content`, and the switch is the trigger's position (the chunk
  there also carries `z1.trigger`). A budgeted row that ends inside its window has no trigger:
  its whole text is then sent once more as `content` in the last delta, so the concatenated
  `content` deltas always equal the non-streamed `content`. A row without a budget streams
  `content` only.

  Each segment is decoded whole each time and the new suffix sent, so a multi-token character
  or a merge across a chunk boundary comes out right; text ending in an incomplete character
  ("\ufffd") waits for the next tokens. The trigger's own tokens are in neither segment."""

  def __init__(self, tokenizer, eos_ids: Sequence[int], budgeted: bool):
    self.tokenizer, self.eos_ids, self.budgeted = tokenizer, set(eos_ids), budgeted
    self.tokens: list[int] = []
    self.trigger: tuple[int, int] | None = None  # (start, length) once known
    self.sent = {"reasoning_content": "", "content": ""}

  def add(self, offset: int, new_tokens: Sequence[int], trigger_at: int | None,
          trigger_len: int) -> bool:
    """Adds an event's tokens; True when this event holds the trigger's start."""
    del self.tokens[offset:]
    self.tokens.extend(int(t) for t in new_tokens)
    if trigger_at is not None and self.trigger is None:
      self.trigger = (offset + trigger_at, trigger_len)
      return True
    return False

  def _segments(self, final: bool, ended: bool) -> list[tuple[str, list[int]]]:
    ids = self.tokens
    if final and ended and ids and ids[-1] in self.eos_ids:
      ids = ids[:-1]
    if not self.budgeted:
      return [("content", ids)]
    if self.trigger is None:
      return [("reasoning_content", ids)] + ([("content", ids)] if final else [])
    start, t = self.trigger
    return [("reasoning_content", ids[:start]), ("content", ids[start + t:])]

  def deltas(self, final: bool = False, ended: bool = False) -> list[tuple[str, str]]:
    """(field, text) deltas since the last call, reasoning before content."""
    out = []
    for field, ids in self._segments(final, ended):
      text = self.tokenizer.decode(ids)
      if not final and text.endswith("\ufffd"):
        text = text.rstrip("\ufffd")
      sent = self.sent[field]
      if len(text) > len(sent) and text.startswith(sent):
        out.append((field, text[len(sent):]))
        self.sent[field] = text
    return out
