"""The OpenAI wire format of `z1 serve`: request parsing and validation, response and stream
chunk shapes, usage accounting, and the reasoning / answer split of a Z1 generation.

No HTTP and no engine here (pure functions, unit-tested): `app.py` calls them.

Field names follow OpenAI's API and vLLM's extensions: `thinking_token_budget` (vLLM's name for
the per-request thinking budget B), `reasoning` and `reasoning_content` (the same text under
vLLM's current and former names), `usage.completion_tokens_details.reasoning_tokens`, `n`,
`stop`, `stop_token_ids`, `ignore_eos`, `min_tokens`, `logprobs` / `top_logprobs`, `echo`, a
list of prompts (a batch), `stream_options.continuous_usage_stats`, vLLM's `stop_reason`,
`{"error": {"message", "type", "param", "code"}}`. Z1's own fields: `answer_tokens` (A, the
answer allowance after the trigger), `placement` (`replace` / `append`), `mode` (`z1` / `s1`),
and a `z1` object in each choice. Log-probability shapes: `logprobs.py`.

Parsing (`load_body`, `parse_chat`, `parse_completion`) turns any bytes into a `Parsed` request
or a `ServeError` (4xx): every number is checked against the width the engine stores it in
(int32, float32), every string is valid Unicode, and nothing it raises is anything else.

How budgets, answer allowances and `max_tokens` compose: `limits` (the table is in the README's
Serve section). The reasoning / answer rule and stop strings: `split_generation` and
`StreamText`. The chat prompt: `ChatTemplate`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from typing import Any, Sequence

from z1_jax.data.format import DEFAULT_SYSTEM_PROMPT
from z1_jax.infer.engine.requests import MAX_LOGPROBS, MAX_STOP_TOKEN_IDS, valid_unicode

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


@dataclasses.dataclass(frozen=True)
class Parsed:
  """A validated request, ready for the engine (its prompts tokenized by the app)."""
  kind: str  # "chat" | "completion"
  prompts: tuple  # each a text to tokenize or a tuple of token ids (a batch: several)
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
  n: int = 1  # choices per prompt
  stop: tuple[str, ...] = ()
  stop_token_ids: tuple[int, ...] = ()
  ignore_eos: bool = False
  min_tokens: int = 0
  logprobs: int | None = None  # top log-probabilities per token (None: none asked)
  echo: bool = False  # completions: the prompt (and its log-probabilities) before the output
  continuous_usage: bool = False  # stream_options.continuous_usage_stats

  @property
  def prompt_field(self) -> str:
    return "messages" if self.kind == "chat" else "prompt"

  @property
  def scores_prompt(self) -> bool:
    """echo with logprobs: the prompt's tokens are scored (lm-eval's loglikelihood)."""
    return self.echo and self.logprobs is not None


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
    valid = valid_unicode(body)
  except RecursionError:
    raise ServeError("the request body is not usable JSON: nested too deeply") from None
  if not valid:
    fields = list(body) if isinstance(body, dict) else []
    field = next((k for k in fields if not valid_unicode([k, body[k]])), None)
    where = "the body" if field is None else (field if valid_unicode(field) else "a key")
    raise ServeError(f"{where}: a string holds a lone surrogate (a JSON \\ud800-\\udfff "
                     "escape that is not half of a pair): not valid Unicode",
                     field if field is not None and valid_unicode(field) else None)
  return body


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
# (a client asking for them would otherwise get a response that silently ignored them). OpenAI's
# and vLLM's sampling and formatting extensions alike.
_UNSUPPORTED = {
    "suffix": (None, ""), "logit_bias": (None, {}),
    "presence_penalty": (None, 0, 0.0), "frequency_penalty": (None, 0, 0.0),
    "repetition_penalty": (None, 1, 1.0), "min_p": (None, 0, 0.0),
    "use_beam_search": (None, False), "length_penalty": (None, 1, 1.0),
    "tools": (None, []), "functions": (None, []), "response_format": (None, {"type": "text"}),
    "prompt_logprobs": (None,), "include_stop_str_in_output": (None, False),
    "skip_special_tokens": (None, False), "allowed_token_ids": (None, []),
    "bad_words": (None, []), "guided_json": (None,), "guided_regex": (None,),
    "guided_choice": (None,), "guided_grammar": (None,), "structured_outputs": (None,),
    "truncate_prompt_tokens": (None,), "return_tokens_as_token_ids": (None, False),
}
_UNSUPPORTED_CHAT = {  # chat only: the prompt is the rendered messages
    "echo": (None, False), "chat_template": (None,), "chat_template_kwargs": (None, {}),
    "add_generation_prompt": (None, True), "continue_final_message": (None, False),
}
MAX_N = 128  # choices per prompt (OpenAI's limit for n)
MAX_STOP = 16  # stop strings per request (OpenAI takes 4; lm-eval's humaneval sends 6)
MAX_COMPLETION_LOGPROBS = 5  # `logprobs` on /v1/completions (OpenAI's legacy limit)


def _same(v, allowed) -> bool:
  """`v` is one of `allowed` as JSON compares them (numbers by value; true is not 1)."""
  for a in allowed:
    if a is None or not _is_number(a):
      if type(v) is type(a) and v == a:
        return True
    elif _is_number(v) and v == a:
      return True
  return False


def _stop(body: dict) -> tuple[str, ...]:
  """`stop`: a string or a list of up to `MAX_STOP` non-empty strings (null, "" and [] are no
  stop strings)."""
  v = body.get("stop")
  if v is None or v == "" or v == []:
    return ()
  if isinstance(v, str):
    return (v,)
  if not isinstance(v, list) or not all(isinstance(s, str) and s for s in v):
    raise ServeError(f"stop={_show(v)}: expected a string or a list of non-empty strings",
                     "stop")
  if len(v) > MAX_STOP:
    raise ServeError(f"stop: {len(v)} strings; at most {MAX_STOP}", "stop")
  return tuple(dict.fromkeys(v))


def _stop_token_ids(body: dict) -> tuple[int, ...]:
  v = body.get("stop_token_ids")
  if v is None:
    return ()
  if not isinstance(v, list) or not all(_is_int(i) and 0 <= i <= INT32_MAX for i in v):
    raise ServeError(f"stop_token_ids={_show(v)}: expected a list of token ids",
                     "stop_token_ids")
  if len(v) > MAX_STOP_TOKEN_IDS:
    raise ServeError(f"stop_token_ids: {len(v)} ids; at most {MAX_STOP_TOKEN_IDS}",
                     "stop_token_ids")
  return tuple(v)


def _logprobs(body: dict, kind: str) -> int | None:
  """The top log-probabilities per token the client wants (None: no log-probabilities):
  completions `logprobs: k` (k <= 5), chat `logprobs: true` with `top_logprobs: k` (k <= 20)."""
  if kind == "completion":
    if body.get("top_logprobs") is not None:
      raise ServeError("top_logprobs is a chat completions field: completions take "
                       f"logprobs=k (k <= {MAX_COMPLETION_LOGPROBS})", "top_logprobs")
    return _int(body, "logprobs", 0, MAX_COMPLETION_LOGPROBS)
  on = _bool(body, "logprobs")
  top = _int(body, "top_logprobs", 0, MAX_LOGPROBS)
  if top is not None and not on:
    raise ServeError("top_logprobs needs logprobs=true", "top_logprobs")
  return (top or 0) if on else None


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
  for name, allowed in (*_UNSUPPORTED.items(),
                        *(_UNSUPPORTED_CHAT.items() if kind == "chat" else ())):
    if name in body and not _same(body[name], allowed):
      raise ServeError(f"{name} is not supported by this server", name)
  n = _int(body, "n", 1, MAX_N) or 1
  best_of = body.get("best_of")
  if best_of is not None and not (_is_int(best_of) and best_of == n):
    raise ServeError(f"best_of={_show(best_of)}: only best_of=n is supported (every sample "
                     "is returned)", "best_of")
  stream = _bool(body, "stream")
  options = body.get("stream_options")
  if options is not None and (not isinstance(options, dict) or not stream):
    raise ServeError("stream_options needs stream=true and must be an object",
                     "stream_options")
  include_usage = bool(options and _bool(options, "include_usage"))
  continuous_usage = bool(options and _bool(options, "continuous_usage_stats"))
  echo = False if kind == "chat" else _bool(body, "echo")
  caps = [c for c in ("max_tokens", "max_completion_tokens") if body.get(c) is not None]
  max_tokens = _int(body, caps[0], 0) if caps else None
  if len(caps) == 2 and _int(body, caps[1], 0) != max_tokens:
    raise ServeError("max_tokens and max_completion_tokens disagree: pass one",
                     "max_completion_tokens")
  if max_tokens == 0 and not echo:
    raise ServeError(f"{caps[0]}=0 generates nothing: it applies with echo=true (scoring the "
                     "prompt)", caps[0])
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
  min_tokens = _int(body, "min_tokens", 0) or 0
  if max_tokens is not None and min_tokens > max_tokens:
    raise ServeError(f"min_tokens={min_tokens} exceeds {caps[0]}={max_tokens}", "min_tokens")
  logprobs = _logprobs(body, kind)
  budget = _int(body, "thinking_token_budget", 1)
  if echo and logprobs is not None and budget is not None:
    raise ServeError("echo with logprobs scores the prompt, which applies to requests "
                     "without a thinking budget (drop thinking_token_budget)", "echo")
  return dict(
      kind=kind, stream=stream, include_usage=include_usage, temperature=temperature,
      top_p=top_p, top_k=top_k, seed=seed, max_tokens=max_tokens,
      thinking_budget=budget, answer_tokens=_int(body, "answer_tokens", 1),
      placement=_choice(body, "placement", PLACEMENTS), mode=_choice(body, "mode", MODES) or "z1",
      max_tokens_field=caps[0] if caps else None, n=n, stop=_stop(body),
      stop_token_ids=_stop_token_ids(body), ignore_eos=_bool(body, "ignore_eos"),
      min_tokens=min_tokens, logprobs=logprobs, echo=echo, continuous_usage=continuous_usage)


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


def chat_turns(messages) -> list[dict]:
  """The messages as `[{"role", "content"}]` with text content: roles system (first only),
  user and assistant, the last one the user's."""
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
    turns.append({"role": role, "content": _text(m.get("content"), f"{where}.content")})
  if turns[-1]["role"] == "assistant":
    raise ServeError("messages: the last message must be the user's (continuing an "
                     "assistant turn is not supported)", "messages")
  return turns


def chat_prompt(messages, system_prompt: str | None) -> str:
  """Z1's Qwen2.5 chat prompt (`data.format.render_prompt`'s layout, any number of turns),
  ending with the assistant's turn opened; `system_prompt` when the messages have no system
  turn. The layout for a tokenizer without a chat template (`ChatTemplate`)."""
  turns = [(t["role"], t["content"]) for t in chat_turns(messages)]
  if turns[0][0] != "system" and system_prompt is not None:
    turns.insert(0, ("system", system_prompt))
  text = "".join(f"<|im_start|>{role}\n{content}<|im_end|>\n" for role, content in turns)
  return text + "<|im_start|>assistant\n"


class ChatTemplate:
  """How `/v1/chat/completions` renders messages: `--chat-template FILE` when given, else the
  tokenizer's own `chat_template` (`apply_chat_template`; a z1-jax export carries Z1's layout,
  `data.tokenizer.Z1_CHAT_TEMPLATE`), else Z1's Qwen2.5 layout (`chat_prompt`, with the
  server's default system prompt). `source` says which, for the serve log."""

  def __init__(self, tokenizer, template: str | None = None, template_file: str | None = None,
               system_prompt: str | None = DEFAULT_SYSTEM_PROMPT):
    self.tokenizer, self.system_prompt = tokenizer, system_prompt
    if template is not None:
      self.template, self.source = template, f"--chat-template {template_file}"
    elif getattr(tokenizer, "chat_template", None):
      self.template, self.source = tokenizer.chat_template, "the tokenizer's chat_template"
    else:
      self.template, self.source = None, "Z1's Qwen2.5 layout (the tokenizer has no template)"

  def render(self, messages) -> str:
    if self.template is None:
      return chat_prompt(messages, self.system_prompt)
    turns = chat_turns(messages)
    from jinja2 import TemplateError
    try:
      return self.tokenizer.apply_chat_template(turns, chat_template=self.template,
                                                tokenize=False, add_generation_prompt=True)
    except TemplateError as e:  # the template's own raise_exception: these messages
      raise ServeError(f"messages: the chat template refused them: {e}", "messages") from None


def parse_chat(body, served_model: str, template: ChatTemplate) -> Parsed:
  fields = _common(body, "chat", served_model)
  return Parsed(prompts=(template.render(body.get("messages")),), **fields)


def _one_prompt(prompt, where: str):
  """A text (non-empty) or a list of token ids (non-empty); else None."""
  if isinstance(prompt, str) and prompt:
    return prompt
  if isinstance(prompt, list) and prompt and all(_is_int(t) for t in prompt):
    if not all(0 <= t <= INT32_MAX for t in prompt):
      bad = next(t for t in prompt if not 0 <= t <= INT32_MAX)
      raise ServeError(f"{where}: token id {_show(bad)} is not a token id", "prompt")
    return tuple(prompt)
  return None


def parse_completion(body, served_model: str) -> Parsed:
  """`prompt`: a text, a list of token ids, or a list of either (a batch: one choice per
  prompt, times n)."""
  fields = _common(body, "completion", served_model)
  prompt = body.get("prompt")
  one = _one_prompt(prompt, "prompt")
  if one is not None:
    return Parsed(prompts=(one,), **fields)
  if isinstance(prompt, list) and prompt and all(isinstance(t, (str, list)) for t in prompt):
    prompts = []
    for i, item in enumerate(prompt):
      one = _one_prompt(item, f"prompt[{i}]")
      if one is None:
        raise ServeError(f"prompt[{i}]: expected a non-empty string or a list of token ids",
                         "prompt")
      prompts.append(one)
    return Parsed(prompts=tuple(prompts), **fields)
  raise ServeError("prompt: expected a non-empty string, a list of token ids, or a list of "
                   "those (a batch)", "prompt")


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
#
# Stop strings end the row wherever they appear, in the reasoning or in the answer (never
# inside the forced trigger: the engine checks the generated text only). The matched string
# and what follows it are left out of the field it appeared in; a stream holds back the last
# (longest stop string - 1) characters of a field until more text shows that no stop string
# starts there, so it never sends text that a stop string later removes.

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
  stop_reason: str | int | None = None  # the stop string or stop token id that ended it


def decode(tokenizer, ids: Sequence[int]) -> str:
  """The text of `ids` (special tokens kept): the one decoder of responses and streams."""
  return tokenizer.backend_tokenizer.decode(list(ids), skip_special_tokens=False)


def cut_at_stop(text: str, stop) -> str:
  """`text` before the stop string `stop` (its first occurrence: the engine ends a row at the
  first one). A stop token id or None cuts nothing (the end id is no text)."""
  if isinstance(stop, str):
    at = text.find(stop)
    if at >= 0:  # (not found only where the engine matched across a split character)
      return text[:at]
  return text


def _ends_with_end_id(ids: Sequence[int], ended: bool, stop, eos_ids) -> bool:
  """The last token ended the row as an end id (the model's, or one of `stop_token_ids`):
  it is no text. A row that a stop string ended keeps its last token's text up to the
  string."""
  return bool(ended and ids and not isinstance(stop, str) and
              (ids[-1] in eos_ids or ids[-1] == stop))


def split_generation(gen, tokenizer, trigger_len: int, eos_ids: Sequence[int],
                     budgeted: bool) -> Split:
  """`gen` (a `Generation`) split by the rule above (a final end id is no text; a stop
  string and what follows it are cut)."""
  stop = getattr(gen, "stop_reason", None)
  ids = list(gen.tokens)
  if _ends_with_end_id(ids, gen.ended, stop, set(eos_ids)):
    ids = ids[:-1]
  if not budgeted:
    reasoning, content = None, cut_at_stop(decode(tokenizer, ids), stop)
  elif gen.thinking_tokens < len(gen.tokens):  # the trigger (or s1 marker) was placed
    reasoning = decode(tokenizer, ids[:gen.thinking_tokens])
    content = cut_at_stop(decode(tokenizer, ids[gen.thinking_tokens + trigger_len:]), stop)
  else:  # ended inside its window
    reasoning, content = cut_at_stop(decode(tokenizer, ids), stop), ""
  return Split(reasoning, content, gen.finish_reason, gen.prompt_tokens, len(gen.tokens),
               gen.thinking_tokens if budgeted else 0, gen.thinking_tokens,
               gen.answer_tokens, gen.hit_budget, stop)


def usage(prompt_tokens: int, completion_tokens: int, reasoning_tokens: int) -> dict:
  return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
          "total_tokens": prompt_tokens + completion_tokens,
          "completion_tokens_details": {"reasoning_tokens": reasoning_tokens}}


def z1_fields(s: Split) -> dict:
  return {"hit_budget": s.hit_budget, "thinking_tokens": s.thinking_tokens,
          "answer_tokens": s.answer_tokens}


def _with_reasoning(obj: dict, reasoning: str | None) -> dict:
  if reasoning is not None:
    obj.update({name: reasoning for name in REASONING_FIELDS})
  return obj


def choice(kind: str, index: int, s: Split, logprobs: dict | None = None,
           echo: str = "") -> dict:
  """One finished choice: `message` (chat) or `text` (completions; `echo`: the prompt's text
  before it), `finish_reason`, vLLM's `stop_reason`, `logprobs`, and its `z1` counts."""
  if kind == "chat":
    body = {"index": index, "message": _with_reasoning(
        {"role": "assistant", "content": s.content}, s.reasoning)}
  else:
    body = _with_reasoning({"index": index, "text": echo + s.content}, s.reasoning)
  return {**body, "finish_reason": s.finish_reason, "stop_reason": s.stop_reason,
          "logprobs": logprobs, "z1": z1_fields(s)}


def response(kind: str, rid: str, model: str, choices: list[dict], splits: list[Split],
             prompt_tokens: int, created: int | None = None) -> dict:
  """A whole response: the choices in `index` order and the request's usage (each prompt's
  tokens once, every choice's completion). With one choice its `z1` counts are also at the
  top level."""
  out = {"id": rid, "object": "chat.completion" if kind == "chat" else "text_completion",
         "created": created or int(time.time()), "model": model,
         "choices": sorted(choices, key=lambda c: c["index"]),
         "usage": usage(prompt_tokens, sum(s.completion_tokens for s in splits),
                        sum(s.reasoning_tokens for s in splits))}
  if len(choices) == 1:
    out["z1"] = choices[0]["z1"]
  return out


def chunk(kind: str, rid: str, model: str, created: int, index: int, delta: dict,
          finish_reason=None, logprobs: dict | None = None, extra: dict | None = None,
          stop_reason=None) -> dict:
  """One stream chunk of choice `index`. `delta`: {"content": text}, {"reasoning": text}
  (sent under both reasoning names), {"role": ...} (chat's first chunk) or {} (a chunk that
  only carries `finish_reason`, `logprobs` or `extra`)."""
  if kind == "chat":
    body = _with_reasoning({"content": delta["content"]} if "content" in delta else {},
                           delta.get("reasoning"))
    if "role" in delta:
      body = {"role": delta["role"], **body}
    c = {"index": index, "delta": body}
  else:
    c = _with_reasoning({"index": index, "text": delta.get("content", "")},
                        delta.get("reasoning"))
  c.update(finish_reason=finish_reason, stop_reason=stop_reason, logprobs=logprobs)
  obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
  return {"id": rid, "object": obj, "created": created, "model": model, "choices": [c],
          **(extra or {})}


def usage_chunk(rid: str, model: str, created: int, kind: str, usage_: dict,
                z1: dict | None = None) -> dict:
  """The last chunk with `stream_options.include_usage`: no choices, the usage."""
  obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
  out = {"id": rid, "object": obj, "created": created, "model": model, "choices": [],
         "usage": usage_}
  return {**out, "z1": z1} if z1 is not None else out


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
  marks where the trigger starts (the app sends `z1.trigger` there). With `stop` strings the
  last (longest - 1) characters of a field wait for the next event (or the end): a stop
  string completed later cuts text that was never sent."""

  def __init__(self, tokenizer, eos_ids: Sequence[int], budgeted: bool,
               stop: Sequence[str] = ()):
    self.eos_ids, self.budgeted = set(eos_ids), budgeted
    self.fields = {"reasoning": _FieldText(tokenizer), "content": _FieldText(tokenizer)}
    self.hold = max((len(s) for s in stop), default=1) - 1
    self.held = {"reasoning": "", "content": ""}  # decoded, not sent yet
    self.count = 0  # tokens received
    self.trigger: tuple[int, int] | None = None  # (index, length) once placed

  def add(self, offset: int, new_tokens: Sequence[int], trigger_at: int | None,
          trigger_len: int, done: bool = False, ended: bool = False,
          stop=None) -> list[tuple[str, Any]]:
    """`done`: the last event; `ended` and `stop` (its `Generation`'s `ended` and
    `stop_reason`): a final end id is no text, a stop string cuts its field."""
    if offset != self.count:
      raise ValueError(f"stream: tokens from {offset} after {self.count} (events must bring "
                       "final tokens in order)")
    tokens = [int(t) for t in new_tokens]
    self.count += len(tokens)
    if done and _ends_with_end_id(tokens, ended, stop, self.eos_ids):
      tokens = tokens[:-1]
    out: list[tuple[str, Any]] = []
    run: list[int] = []
    run_field = None

    def close():
      if run:
        self._send(run_field, self.fields[run_field].push(run), out, final=done)

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
      last = "content" if not self.budgeted or self.trigger is not None else "reasoning"
      for field in ("reasoning", "content"):
        text = self.held[field] + self.fields[field].flush()
        self.held[field] = ""
        if field == last:
          text = cut_at_stop(text, stop)  # (the string starts in what was held back)
        if text:
          out.append((field, text))
    return out

  def _send(self, field: str, text: str, out: list, final: bool) -> None:
    """`text` out, but the last `self.hold` characters of the field kept back (while a stop
    string could still start there); in the last event all of it waits for the cut."""
    text = self.held[field] + text
    keep = len(text) if final else min(self.hold, len(text))
    self.held[field] = text[len(text) - keep:]
    if len(text) > keep:
      out.append((field, text[:len(text) - keep]))

  def _place_trigger(self, index: int, length: int, out: list) -> None:
    """The reasoning is complete at the trigger: what it still holds goes out before it (no
    stop string matches across the trigger)."""
    self.trigger = (index, length)
    text = self.held["reasoning"] + self.fields["reasoning"].flush()
    self.held["reasoning"] = ""
    if text:
      out.append(("reasoning", text))
    out.append(("trigger", None))
