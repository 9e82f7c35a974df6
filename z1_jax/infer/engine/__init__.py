"""The decode engine: continuous batching over a paged KV cache, per-request budgets.

Public API (`z1 serve`, `generate`, `sweep`, `z1 generate` and `z1 distill` run on it):

  engine = Engine(model, slots=64, max_seq_len=8192, tokenizer=tok, max_total_tokens=65536)
  engine.warmup()                     # compiles every program (else they compile on first use)
  engine.submit(Request(id="a", prompt_ids=[...], thinking_budget=512, answer_tokens=64))
  while engine.has_work():
    for event in engine.step():       # one dispatch: up to `chunk_steps` tokens per row
      ...                             # event.new_tokens, event.phase / trigger_at, event.finished
  engine.run([req, ...])              # every request to its Generation, in order
  engine.sweep([req, ...], budgets)   # every request at every budget, trunks decoded once
  engine.stats()                      # slots, queue, pages used / free / cached, preemptions

What a step costs follows the tokens the rows hold, not the longest they could hold:
- Pages (`pages.py`). The KV cache is a pool of `page_size`-token pages per layer,
  `max_total_tokens` in all (default: 90% of the device memory left after the weights on
  TPU/GPU, 65,536 tokens on CPU). A row takes pages as it grows; `slots` (the rows decoded at
  once) may far exceed `max_total_tokens / max_seq_len`. Pages are reference-counted: a
  sweep's branch shares its trunk's pages (and copies the one partial page it writes into);
  requests with a common prompt prefix share its full pages (a hash chain over prompt pages,
  unheld pages evicted least recently used first), so the n samples of one prompt prefill it
  once.
- Attention (`model/paged.py`): over each row's own pages, in a loop as long as the longest
  live row (XLA, CPU/GPU), or the Pallas ragged paged attention kernel (TPU).
- Scheduling (`scheduler.py`). A step admits queued requests into free slots when their pages
  fit (branches and preempted rows first), prefills at most `prefill_tokens` prompt tokens
  (long prompts in chunks, so admission never stalls decoding for long), gives every decoding
  row the pages for its next chunk (preempting the most recently admitted rows of a shard
  whose pool runs dry: they recompute their context when they return, as vLLM does), then
  decodes up to `chunk_steps` tokens per row, ending early when a row finishes or pauses while
  others wait.
- Programs (`programs.py`): decode chunk, prefill chunk, row writes, page copies; compiled
  once per (slots, table width, sampling variant, log-probabilities) and prefill shape.
- The Shifted Thinking Window and s1 budget forcing are `infer.window` (one definition).
  A replace row's tokens from B-T on are streamed only once they are final (`window.committed`).
- Sampling: per-row temperature / top-k / top-p and keys from (seed, row_id, token index):
  a request's sampled tokens do not depend on its slot, its neighbours or when it entered, and
  its logits are equal to a lone run's up to floating-point rounding (batch shapes change the
  order of the sums: about 1e-5 in fp32), so a greedy token can differ only where the top two
  logits are that close (`tests/test_engine.py` measures the difference).
- Requests (`requests.py`): `Request`, `Generation`, `Event`, and the checks every request
  passes before it is queued (`Engine.validate`, also run by `z1 generate` before loading).

Events. `step()` returns one `Event` per request that produced tokens or finished in that
step: `new_tokens` (final tokens since the last event, `offset` the index of the first),
`phase` ("thinking" or "answer": the phase of new_tokens[0]; the trigger counts as answer),
`trigger_at` (index in new_tokens where the trigger / s1 marker starts, else None; the trigger
is `trigger_len` tokens and may continue into the next event), `finished` (the `Generation`
once done), `error` (a message, e.g. "cancelled"), `logprobs` / `top_logprobs` when asked.
"""

from z1_jax.infer.engine.core import Engine, batch_shards
from z1_jax.infer.engine.requests import (Event, Generation, Request, bucket, check_request,
                                          placement_of, resolve_markers)

__all__ = ["Engine", "Event", "Generation", "Request", "batch_shards", "bucket",
           "check_request", "placement_of", "resolve_markers"]
