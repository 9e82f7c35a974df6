"""What goes into the engine and what comes out: `Request`, `Generation`, `Event`, and the
checks a request passes before it is queued (`check_request`; `z1 generate` and `z1 serve`
run them before anything reaches the engine's thread).

A request is plain (`max_new_tokens`) or budgeted (`thinking_budget` B + `answer_tokens` A:
the Shifted Thinking Window or s1 budget forcing, `infer.window`). Beside that, the OpenAI /
vLLM controls evaluation clients send: `stop` strings (checked on the generated text, the
forced trigger excluded), `stop_token_ids`, `ignore_eos`, `min_tokens`, `logprobs` (the
chosen token's log-probability and the top k, k <= `MAX_LOGPROBS`) and `prompt_logprobs`
(the prompt's own tokens scored: `echo`, lm-eval's loglikelihood; `max_new_tokens=0` then
scores without generating). Log-probabilities are the model's raw distribution (log-softmax
of the logits, before temperature, top-k/top-p and `min_tokens`), vLLM's default.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from z1_jax.errors import Z1Error
from z1_jax.infer import budget as budget_lib
from z1_jax.infer import window
from z1_jax.infer.sampling import Sampling

MAX_LOGPROBS = 20  # top log-probabilities per token (OpenAI's chat limit)
MAX_STOP_TOKEN_IDS = 8  # per request, held on the device
INT32_MAX = 2**31 - 1  # the device stores every integer control as int32
FLOAT32_MAX = float(np.finfo(np.float32).max)  # and temperature / top_p as float32


@dataclasses.dataclass(frozen=True)
class Request:
  """One generation request (see the module docstring)."""
  id: str | int
  prompt_ids: Sequence[int]
  thinking_budget: int | None = None  # B; None = plain generation of max_new_tokens
  answer_tokens: int | None = None  # A (required with a budget)
  max_new_tokens: int | None = None  # without a budget
  placement: str | None = None  # "replace" | "append" (default: replace for z1, append for s1)
  mode: str = "z1"  # "z1" | "s1"
  temperature: float = 0.0
  top_p: float | None = None
  top_k: int | None = None
  seed: int = 0
  row_id: int = 0  # the sampling stream: keys from (seed, row_id, token index)
  min_thinking: int = 0  # s1: an end before this many tokens becomes "Wait"
  stop: tuple[str, ...] = ()  # stop strings: the row ends where one appears (text excluded)
  stop_token_ids: tuple[int, ...] = ()  # end ids beside the model's own
  ignore_eos: bool = False  # the model's end ids do not end the row
  min_tokens: int = 0  # end ids (and stop_token_ids) are suppressed before this many tokens
  logprobs: int | None = None  # None: none; k: each token's log-probability and the top k
  prompt_logprobs: int | None = None  # None: none; k: the prompt tokens' (echo)


@dataclasses.dataclass(frozen=True)
class Generation:
  """One request's continuation.

  tokens: generated ids (the end id included when one was emitted; for a row that hit its
    budget: the window's kept tokens, the trigger and the answer; cut after the token that
    completed a stop string).
  thinking_tokens: tokens before the trigger / s1 marker (all tokens without one: a row that
    ended inside its window).
  hit_budget: the trigger was placed because the budget ran out.
  answer_tokens: tokens after the trigger / marker (0 without one).
  ended: the row stopped at an end id or a stop string (`finish_reason` "stop"), else at a
    length limit ("length").
  text: `tokens` decoded (a final end id left out, cut before a stop string) when a tokenizer
    is known.
  stop_reason: the stop string or stop token id that ended the row (None otherwise).
  logprobs / top_logprobs: per token, when asked (`top_logprobs[i]`: (id, logprob) pairs).
  prompt_logprobs / prompt_top_logprobs: per prompt token (the first has none: None / []).
  """
  tokens: list[int]
  thinking_tokens: int
  hit_budget: bool
  answer_tokens: int
  ended: bool
  text: str | None = None
  id: str | int | None = None
  prompt_tokens: int = 0
  stop_reason: str | int | None = None
  logprobs: list[float] | None = None
  top_logprobs: list[list[tuple[int, float]]] | None = None
  prompt_logprobs: list[float | None] | None = None
  prompt_top_logprobs: list[list[tuple[int, float]]] | None = None

  @property
  def finish_reason(self) -> str:
    return "stop" if self.ended else "length"


@dataclasses.dataclass(frozen=True)
class Event:
  """What one request did in one chunk (see `infer.engine`)."""
  id: str | int
  new_tokens: list[int]
  offset: int
  phase: str  # "thinking" | "answer"
  trigger_at: int | None
  trigger_len: int
  finished: Generation | None = None
  error: str | None = None
  logprobs: list[float] | None = None  # for new_tokens, when the request asked
  top_logprobs: list[list[tuple[int, float]]] | None = None


def bucket(n: int, minimum: int = 16) -> int:
  """Padded size for `n`: powers of two up to 1024, then multiples of 1024."""
  n = max(n, minimum)
  return 1 << (n - 1).bit_length() if n <= 1024 else -(-n // 1024) * 1024


def placement_of(req: Request) -> str:
  return req.placement or ("replace" if req.mode == "z1" else "append")


def _ids(where: str, ids, vocab: int) -> tuple[int, ...]:
  ids = tuple(int(i) for i in ids)
  bad = [i for i in ids if not 0 <= i < vocab]
  if bad:
    raise Z1Error(f"{where}: id {_short(bad[0])} is outside the model's vocabulary [0, {vocab})")
  return ids


def _default_ids(kind: str, tokenizer, vocab: int) -> tuple[int, ...]:
  """Default marker ids; () when no tokenizer can make them or they fall outside the
  vocabulary (a request that needs them is then refused by `check_request`)."""
  try:
    ids = (budget_lib.wait_ids(tokenizer) if kind == "wait" else
           budget_lib.marker_ids(kind, None, None, tokenizer))
  except (OSError, ValueError, ImportError):  # no offline tokenizer
    return ()
  return ids if all(i < vocab for i in ids) else ()


def resolve_markers(vocab: int, tokenizer=None, eos_ids=None, trigger_ids=None,
                    s1_marker_ids=None, wait_ids=None) -> window.Markers:
  """End ids and forced sequences: given ones checked against the vocabulary, defaults from
  `tokenizer` (else the offline Qwen2.5 one) where they fit it."""
  if eos_ids is None:  # defaults a tiny test vocabulary cannot emit are left out
    eos = tuple(i for i in budget_lib.default_eos_ids(tokenizer) if i < vocab)
  else:
    eos = _ids("eos_ids", eos_ids, vocab)
  pick = lambda name, ids, kind: (_ids(name, ids, vocab) if ids is not None else
                                  _default_ids(kind, tokenizer, vocab))
  return window.Markers(eos, pick("trigger ids", trigger_ids, "z1"),
                        pick("s1 marker ids", s1_marker_ids, "s1"),
                        pick("wait_ids", wait_ids, "wait"))


def stop_of(req: Request, markers: window.Markers) -> int:
  """Most tokens `req` can generate (its window, trigger and answer; or max_new_tokens)."""
  if req.thinking_budget is None:
    return int(req.max_new_tokens)
  marker = markers.z1_ids if req.mode == "z1" else markers.s1_ids
  return window.stop_for(int(req.thinking_budget), int(req.answer_tokens), len(marker),
                         placement_of(req), None)


def check_request(req: Request, cfg, markers: window.Markers, max_seq_len: int,
                  tokenizer=None) -> Sampling:
  """Checks `req` against the model config, the markers and the engine's `max_seq_len`;
  raises `Z1Error` naming the request and the field. Returns its sampling settings."""
  try:
    return _check(req, cfg, markers, max_seq_len, tokenizer)
  except Z1Error as e:
    raise Z1Error(f"request {_short(req.id)}: {e}") from None


def _int_field(req: Request, field: str, minimum: int, maximum: int | None = INT32_MAX):
  """An integer field in [minimum, maximum] (no maximum: lengths, bounded by the model's
  positions right after, which names the real limit)."""
  value = getattr(req, field)
  if value is None:
    return None
  if maximum is None:
    if not _is_int(value) or value < minimum:
      raise Z1Error(f"{field}={_short(value)}: expected an integer >= {minimum}")
  elif not _is_int(value) or not minimum <= value <= maximum:
    upper = "2**31)" if maximum == INT32_MAX else f"{maximum}]"
    raise Z1Error(f"{field}={_short(value)}: expected an integer in [{minimum}, {upper}")
  return value


def _check(req: Request, cfg, markers: window.Markers, max_seq_len: int,
           tokenizer=None) -> Sampling:
  """Every field checked against what the engine does with it, before it reaches the device:
  integers against int32 (the rows' width), lengths against the model's positions and the
  engine's max_seq_len, numbers against float32."""
  if isinstance(req.prompt_ids, (str, bytes)):
    raise Z1Error("prompt_ids is text: give token ids (tokenize it first)")
  prompt = list(req.prompt_ids)
  if not all(_is_int(x) for x in prompt):
    raise Z1Error("prompt_ids: expected a list of integer token ids")
  if not prompt:
    raise Z1Error("prompt_ids is empty: a prompt needs at least one token")
  bad = next((i for i in prompt if not 0 <= i < cfg.vocab_size), None)
  if bad is not None:
    raise Z1Error(f"prompt_ids: id {_short(bad)} is outside the model's vocabulary "
                  f"[0, {cfg.vocab_size})")
  if len(prompt) > cfg.max_position_embeddings:
    raise Z1Error(f"prompt_ids: {len(prompt)} tokens are longer than the model's maximum of "
                  f"{cfg.max_position_embeddings} positions")
  if req.mode not in budget_lib.MODES:
    raise Z1Error(f"mode={req.mode!r}: expected one of {budget_lib.MODES}")
  for field in ("thinking_budget", "answer_tokens"):
    _int_field(req, field, 1, None)
  _int_field(req, "max_new_tokens", 0 if req.prompt_logprobs is not None else 1, None)
  if req.thinking_budget is None:
    if req.mode == "s1":
      raise Z1Error("mode='s1' needs a thinking_budget")
    if req.answer_tokens is not None or req.placement is not None:
      raise Z1Error("answer_tokens / placement apply with a thinking_budget only")
    if req.max_new_tokens is None:
      raise Z1Error("max_new_tokens is unset: pass it, or thinking_budget with answer_tokens")
    stop = int(req.max_new_tokens)
  else:
    if req.max_new_tokens is not None:
      raise Z1Error("pass max_new_tokens or thinking_budget with answer_tokens, not both")
    if req.answer_tokens is None:
      raise Z1Error("thinking_budget needs answer_tokens (the answer's length limit)")
    marker = (markers.z1_ids if req.mode == "z1" else markers.s1_ids)
    if not marker:
      raise Z1Error(f"no {'trigger' if req.mode == 'z1' else 's1 answer marker'} ids: pass "
                    "them (trigger_ids, --trigger-ids): no tokenizer makes them for this "
                    "vocabulary")
    plan = budget_lib.Budget(int(req.thinking_budget), int(req.answer_tokens), marker,
                             placement_of(req))  # the trigger-length check
    stop = plan.stop
  if req.mode == "s1":
    if req.min_thinking and not markers.wait_ids:
      raise Z1Error("min_thinking needs wait ids (wait_ids, --wait-ids): this vocabulary has "
                    "no default \"Wait\"")
  elif req.min_thinking:
    raise Z1Error("min_thinking applies to mode='s1' only")
  _int_field(req, "min_thinking", 0)
  # the model's context first (it names the real limit; it also keeps every length, and the
  # sums of them the device computes, far inside int32)
  positions = cfg.max_position_embeddings
  if len(prompt) + stop > positions:
    raise Z1Error(f"{len(prompt)} prompt tokens + up to {_short(stop)} generated exceed the "
                  f"model's {positions} positions (max_position_embeddings)")
  if len(prompt) + stop > max_seq_len:
    raise Z1Error(f"{len(prompt)} prompt tokens + up to {stop} generated do not fit the "
                  f"engine's {max_seq_len} positions per request (max_seq_len)")
  for field in ("seed", "row_id"):
    _int_field(req, field, 0)
  temperature = req.temperature
  if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.number)):
    raise Z1Error(f"temperature={_short(temperature)}: expected a number")
  if not -FLOAT32_MAX <= temperature <= FLOAT32_MAX:  # also nan; ints too large for a float
    raise Z1Error(f"temperature={_short(temperature)}: expected a finite number >= 0 that "
                  "float32 can hold")
  temperature = float(temperature)
  _int_field(req, "top_k", 1)
  if req.top_p is not None and (isinstance(req.top_p, bool) or
                                not isinstance(req.top_p, (int, float, np.number)) or
                                not 0 < req.top_p <= 1):
    raise Z1Error(f"top_p={_short(req.top_p)}: expected a number in (0, 1]")
  # OpenAI / vLLM controls
  if isinstance(req.stop, (str, bytes)) or not all(isinstance(s, str) and s for s in req.stop):
    raise Z1Error("stop: expected a tuple of non-empty strings")
  if req.stop and tokenizer is None:
    raise Z1Error("stop strings need the engine's tokenizer (the check runs on decoded text)")
  ids = req.stop_token_ids
  if isinstance(ids, (str, bytes)) or not all(_is_int(i) for i in ids):
    raise Z1Error("stop_token_ids: expected a list of integer token ids")
  if len(ids) > MAX_STOP_TOKEN_IDS:
    raise Z1Error(f"stop_token_ids: {len(ids)} ids; at most {MAX_STOP_TOKEN_IDS}")
  _ids("stop_token_ids", ids, cfg.vocab_size)
  if not isinstance(req.ignore_eos, (bool, np.bool_)):
    raise Z1Error(f"ignore_eos={req.ignore_eos!r}: expected true or false")
  _int_field(req, "min_tokens", 0, stop)
  _int_field(req, "logprobs", 0, MAX_LOGPROBS)
  _int_field(req, "prompt_logprobs", 0, MAX_LOGPROBS)
  if req.prompt_logprobs is not None and req.thinking_budget is not None:
    raise Z1Error("prompt_logprobs (echo) applies to plain requests (max_new_tokens), not with "
                  "a thinking budget")
  return Sampling(temperature, None if req.top_k is None else int(req.top_k),
                  None if req.top_p is None else float(req.top_p))


def _short(value) -> str:
  """`repr(value)`, cut: an integer of thousands of digits is not repeated whole."""
  if _is_int(value) and abs(value) >= 10**30:
    try:
      return f"an integer of {len(str(abs(int(value))))} digits"
    except ValueError:  # str() refuses integers past 4300 digits
      return "an integer of more than 4300 digits"
  text = repr(value)
  return text if len(text) <= 60 else text[:57] + "..."


def _is_int(value) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def valid_unicode(value) -> bool:
  """Every string (and key) in `value` is valid Unicode: it encodes as UTF-8 (a lone surrogate,
  from a JSON `\\ud800` escape or undecodable argv bytes, does not)."""
  import json
  try:
    json.dumps(value, ensure_ascii=False).encode("utf-8")
  except UnicodeEncodeError:
    return False
  return True
