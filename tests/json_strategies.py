"""Hypothesis strategies for hostile request bodies and request-file rows: any JSON value in
any field (integers past int32 and float, floats with nan and infinities, strings with lone
surrogates, nesting), mixed with valid values so that many requests reach the deep checks and
the engine."""

from hypothesis import strategies as st

# any character, lone surrogates included (JSON spells them \udXXX)
TEXT = st.text(st.characters(categories=["L", "N", "P", "S", "Z", "Cc", "Cs"]), max_size=12)
EDGES = st.sampled_from([0, -1, 1, 2**31 - 1, 2**31, 2**32, -2**31, 10**30, 2**63, 10**400,
                         1e-320, 1e39, 20.0])
LEAF = st.one_of(st.none(), st.booleans(), st.integers(), EDGES,
                 st.floats(allow_nan=True, allow_infinity=True), TEXT)
ANY = st.recursive(LEAF, lambda inner: st.lists(inner, max_size=3) |
                   st.dictionaries(TEXT, inner, max_size=3), max_leaves=6)

# request body fields -> a valid value (the engine may still refuse a combination)
BODY = {
    "max_tokens": st.integers(1, 40), "max_completion_tokens": st.integers(1, 40),
    "thinking_token_budget": st.integers(13, 40), "answer_tokens": st.integers(1, 20),
    "temperature": st.floats(0, 2), "top_p": st.floats(0, 1, exclude_min=True),
    "top_k": st.integers(1, 50) | st.just(-1), "seed": st.integers(0, 2**31 - 1),
    "placement": st.sampled_from(["replace", "append"]), "mode": st.sampled_from(["z1", "s1"]),
    "stream": st.booleans(), "stream_options": st.fixed_dictionaries(
        {"include_usage": st.booleans(), "continuous_usage_stats": st.booleans()}),
    "n": st.integers(1, 3), "stop": st.one_of(TEXT, st.lists(TEXT, max_size=3)),
    "stop_token_ids": st.lists(st.integers(0, 151940), max_size=3),
    "logprobs": st.one_of(st.booleans(), st.integers(0, 6)), "top_logprobs": st.integers(0, 21),
    "echo": st.booleans(), "ignore_eos": st.booleans(), "min_tokens": st.integers(0, 10),
}
# `z1 generate --prompts` row fields -> a valid value
ROW = {
    "id": st.integers(0, 10**6) | st.text(max_size=6), "thinking_budget": st.integers(4, 30),
    "answer_tokens": st.integers(1, 10), "max_new_tokens": st.integers(1, 10),
    "temperature": st.floats(0, 2), "top_p": st.floats(0, 1, exclude_min=True),
    "top_k": st.integers(1, 50), "seed": st.integers(0, 2**31 - 1),
}


def fields(data, valid: dict, hostile_share: int = 4) -> dict:
  """Some of `valid`'s fields, each with a valid value, or (one time in `hostile_share`) with
  any JSON value at all."""
  names = data.draw(st.lists(st.sampled_from(sorted(valid)), unique=True, max_size=4))
  kinds = st.sampled_from([True] + [False] * (hostile_share - 1))  # uniform, unlike integers
  return {n: data.draw(ANY if data.draw(kinds) else valid[n]) for n in names}


def request_body(data, served_model: str, vocab: int, chat: bool) -> dict:
  """A hostile request body: the model and the prompt valid most of the time."""
  body = fields(data, BODY)
  model = data.draw(st.sampled_from(["served"] * 8 + ["any", "absent"]))
  if model != "absent":
    body["model"] = served_model if model == "served" else data.draw(ANY)
  key = "messages" if chat else "prompt"
  choice = data.draw(st.sampled_from(range(6)))
  if choice == 0:
    body[key] = data.draw(ANY)
  elif choice and chat:
    body[key] = [{"role": "user", "content": data.draw(st.text(min_size=1, max_size=10)
                                                        if choice > 1 else TEXT)}]
  elif choice == 5:  # a batch of prompts
    body[key] = data.draw(st.lists(st.text(min_size=1, max_size=6) |
                                   st.lists(st.integers(0, vocab + 2), min_size=1, max_size=4),
                                   min_size=1, max_size=3))
  elif choice:
    body[key] = data.draw(st.text(min_size=1, max_size=10) if choice > 2 else
                          st.lists(st.integers(0, vocab + 2), min_size=1, max_size=6)
                          if choice > 1 else TEXT)
  return body


def request_row(data, vocab: int, hostile_share: int = 4) -> dict:
  """A hostile `--prompts` row (one field value in `hostile_share` is any JSON value)."""
  row = fields(data, ROW, hostile_share)
  choice = data.draw(st.sampled_from([2] * hostile_share + [0, 1]))
  if choice == 0:
    row[data.draw(st.sampled_from(["prompt", "prompt_ids"]))] = data.draw(ANY)
  elif choice == 1:
    row["prompt"] = data.draw(TEXT)
  else:
    row["prompt_ids"] = data.draw(st.lists(st.integers(0, vocab + 2), min_size=1, max_size=5))
  return row
