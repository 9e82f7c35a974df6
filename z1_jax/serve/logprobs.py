"""Log-probabilities in OpenAI's two shapes, from the engine's per-token values.

- completions (`logprobs: k`, k <= 5), the legacy shape: `tokens` (each token's own text),
  `token_logprobs`, `top_logprobs` (a dict per token: the top k and the chosen token, so up to
  k + 1 entries, as OpenAI and vLLM send them; None for the prompt's first token, which has
  no log-probability) and `text_offset` (each token's character offset in the text: the
  prompt's with `echo`, then the generated text's).
- chat (`logprobs: true`, `top_logprobs: k`, k <= 20): `{"content": [{token, logprob, bytes,
  top_logprobs: [{token, logprob, bytes}] * k}], "refusal": None}`.

Values are the engine's: the model's raw distribution (log-softmax of the logits, before
temperature, top-k / top-p and `min_tokens`), vLLM's default. Every generated token has one,
in order: with a thinking budget the reasoning, the forced trigger and the answer (the
`text_offset`s then count in that whole decoded output, whose parts are the `reasoning` and
`text` fields), and a final end id. A log-probability below -9999 is sent as -9999.0, as
vLLM does (JSON has no -Infinity).
"""

from __future__ import annotations

from typing import Sequence

LOGPROB_FLOOR = -9999.0


def _lp(value: float | None) -> float | None:
  return None if value is None else max(float(value), LOGPROB_FLOOR)


class TokenText:
  """Each token's own text and UTF-8 bytes (cached: the same ids recur)."""

  def __init__(self, tokenizer):
    self._tok = tokenizer.backend_tokenizer
    self._text: dict[int, str] = {}
    self._bytes: dict[int, list[int]] = {}
    self._byte_of = None
    if type(self._tok.decoder).__name__ == "ByteLevel":  # GPT-2's byte-to-character table
      from transformers.convert_slow_tokenizer import bytes_to_unicode
      self._byte_of = {c: b for b, c in bytes_to_unicode().items()}
      self._added = set(self._tok.get_added_tokens_decoder())

  def text(self, i: int) -> str:
    t = self._text.get(i)
    if t is None:
      t = self._text[i] = self._tok.decode([i], skip_special_tokens=False)
    return t

  def bytes(self, i: int) -> list[int]:
    """The token's bytes: a piece of a multi-byte character is its own bytes (its text alone
    is U+FFFD), so a client can join them."""
    b = self._bytes.get(i)
    if b is None:
      piece = self._tok.id_to_token(i)
      if (self._byte_of is not None and piece is not None and i not in self._added
              and all(c in self._byte_of for c in piece)):
        b = [self._byte_of[c] for c in piece]
      else:
        b = list(self.text(i).encode("utf-8"))
      self._bytes[i] = b
    return b


class Offsets:
  """Each token's character offset in the decoded text, as tokens arrive: the characters
  complete before it (tokenizers' `DecodeStream`; a token that starts inside a multi-byte
  character is placed after what its predecessors completed of it, i.e. at that character)."""

  def __init__(self, tokenizer, start: int = 0):
    from tokenizers.decoders import DecodeStream
    self._tok = tokenizer.backend_tokenizer
    self._stream = DecodeStream(skip_special_tokens=False)
    self._held: list[int] = []  # ids not decoded into text yet (an unfinished character)
    self.length = start

  def add(self, ids: Sequence[int]) -> list[int]:
    out = []
    for i in ids:
      done = 0
      if self._held:  # the whole characters the held ids already spell
        done = len(self._tok.decode(self._held, skip_special_tokens=False).rstrip("\ufffd"))
      out.append(self.length + done)
      piece = self._stream.step(self._tok, int(i))
      if piece is None:
        self._held.append(int(i))
      else:
        self.length += len(piece)
        self._held = []
    return out


def completion(text: TokenText, ids: Sequence[int], logprobs: Sequence[float | None],
               tops: Sequence[Sequence[tuple[int, float]] | None],
               offsets: Sequence[int]) -> dict:
  """The legacy shape for `ids` (`logprobs[i]` None: the prompt's first token)."""
  top_dicts = []
  for i, lp, top in zip(ids, logprobs, tops):
    if lp is None:
      top_dicts.append(None)
      continue
    d = {}
    for j, v in top:
      d.setdefault(text.text(j), _lp(v))
    d.setdefault(text.text(i), _lp(lp))  # the chosen token, as OpenAI adds it
    top_dicts.append(d)
  return {"tokens": [text.text(i) for i in ids], "token_logprobs": [_lp(v) for v in logprobs],
          "top_logprobs": top_dicts, "text_offset": list(offsets)}


def join_completion(parts: Sequence[dict]) -> dict:
  """Legacy-shape pieces (a stream's chunks, or the prompt's and the output's) as one."""
  keys = ("tokens", "token_logprobs", "top_logprobs", "text_offset")
  return {k: [x for p in parts for x in p[k]] for k in keys}


def chat(text: TokenText, ids: Sequence[int], logprobs: Sequence[float],
         tops: Sequence[Sequence[tuple[int, float]]]) -> dict:
  """The chat shape for `ids`."""
  def entry(i, v):
    return {"token": text.text(i), "logprob": _lp(v), "bytes": text.bytes(i)}
  return {"content": [{**entry(i, lp), "top_logprobs": [entry(j, v) for j, v in top]}
                      for i, lp, top in zip(ids, logprobs, tops)], "refusal": None}
