"""`GET /metrics` of `z1 serve`: Prometheus' text format (`prometheus_client`), under vLLM's
metric names where vLLM has one, so its dashboards and alerts read z1 serve as they are.

From the engine's state, read at each scrape (`stats()`, the runner's copy of
`engine.stats()`): `vllm:num_requests_running` / `vllm:num_requests_waiting` (engine rows
decoding, requests queued in the engine), `vllm:kv_cache_usage_perc` (KV pages in use, 0-1),
`vllm:num_preemptions_total`, `vllm:prefix_cache_queries_total` / `vllm:prefix_cache_hits_total`
(prompt tokens looked up in the prefix cache / found there, since the engine started) and
their ratio `z1:prefix_cache_hit_rate`.

From what the server answered, counted when a choice finishes (so their changes equal the sums
of the responses' `usage`): `vllm:prompt_tokens_total` (each prompt once per request),
`vllm:generation_tokens_total`, `vllm:request_success_total{finished_reason}` (per choice),
`z1:reasoning_tokens_total`, `z1:thinking_budget_hits_total` (choices whose budget ran out and
got the trigger). Histograms: `vllm:time_to_first_token_seconds` (request arrival to a choice's
first token), `vllm:inter_token_latency_seconds` (per token after a choice's first event: the
time since its previous event over the tokens this one brought, since a dispatch brings up to
`--chunk-steps` tokens at once) and `vllm:e2e_request_latency_seconds` (per request).
Every series has vLLM's `model_name` label.
"""

from __future__ import annotations

from typing import Callable

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

prometheus_client.disable_created_metrics()  # no `_created` series (as vLLM)

# vLLM's buckets, with finer ones at the low end for TPU decoding (milliseconds per token)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5,
               0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
               120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)


class _Engine:
  """The engine's gauges and counters, read from `stats()` when scraped."""

  def __init__(self, model: str, stats: Callable[[], dict]):
    self.model, self.stats = model, stats

  def collect(self):
    s = self.stats()

    def family(kind, name, doc, value):
      m = kind(name, doc, labels=["model_name"])
      m.add_metric([self.model], value)
      return m

    yield family(GaugeMetricFamily, "vllm:num_requests_running",
                 "Requests decoding in the engine's rows.", s["active"])
    yield family(GaugeMetricFamily, "vllm:num_requests_waiting",
                 "Requests queued in the engine for a row or pages.", s["queued"])
    yield family(GaugeMetricFamily, "vllm:kv_cache_usage_perc",
                 "Fraction of the KV cache's pages in use (1 = full).",
                 s["pages_used"] / s["pages_total"] if s["pages_total"] else 0.0)
    yield family(CounterMetricFamily, "vllm:num_preemptions",
                 "Rows preempted for pages (they recompute their context later).",
                 s["preemptions"])
    yield family(CounterMetricFamily, "vllm:prefix_cache_queries",
                 "Prompt tokens looked up in the prefix cache.", s["prefix_cache_query_tokens"])
    yield family(CounterMetricFamily, "vllm:prefix_cache_hits",
                 "Prompt tokens found in the prefix cache.", s["prefix_cache_hit_tokens"])
    yield family(GaugeMetricFamily, "z1:prefix_cache_hit_rate",
                 "Prompt tokens found in the prefix cache over those looked up, since the "
                 "engine started.", s["prefix_cache_hit_rate"])


class Metrics:
  """One server's metrics in their own registry (`text()` is the `/metrics` body)."""

  def __init__(self, model: str, stats: Callable[[], dict]):
    self.registry = r = CollectorRegistry()
    label = ["model_name"]

    def counter(name, doc):
      return Counter(name, doc, label, registry=r).labels(model)

    def histogram(name, doc, buckets):
      return Histogram(name, doc, label, buckets=buckets, registry=r).labels(model)

    self.prompt_tokens = counter("vllm:prompt_tokens", "Prompt tokens of answered requests.")
    self.generation_tokens = counter("vllm:generation_tokens",
                                     "Generated tokens of finished choices.")
    self.reasoning_tokens = counter("z1:reasoning_tokens",
                                    "Generated tokens before the answer trigger (usage's "
                                    "reasoning_tokens).")
    self.budget_hits = counter("z1:thinking_budget_hits",
                               "Choices whose thinking budget ran out (the trigger placed).")
    self._success = Counter("vllm:request_success", "Finished choices by finish reason.",
                            label + ["finished_reason"], registry=r)
    self._model = model
    self.ttft = histogram("vllm:time_to_first_token_seconds",
                          "Request arrival to a choice's first generated token.", TTFT_BUCKETS)
    self.itl = histogram("vllm:inter_token_latency_seconds",
                         "Time per generated token after a choice's first event.", ITL_BUCKETS)
    self.e2e = histogram("vllm:e2e_request_latency_seconds",
                         "Request arrival to its last choice's end.", E2E_BUCKETS)
    r.register(_Engine(model, stats))

  def tokens(self, count: int, since_arrival: float, since_last: float | None) -> None:
    """A choice's event brought `count` tokens (`since_last` None: its first event)."""
    if count <= 0:
      return
    if since_last is None:
      self.ttft.observe(since_arrival)
    else:
      for _ in range(count):
        self.itl.observe(since_last / count)

  def finished(self, split, prompt_tokens: int) -> None:
    """A choice finished (`prompt_tokens`: its prompt's, or 0 when another choice counts
    them)."""
    self.prompt_tokens.inc(prompt_tokens)
    self.generation_tokens.inc(split.completion_tokens)
    self.reasoning_tokens.inc(split.reasoning_tokens)
    if split.hit_budget:
      self.budget_hits.inc()
    self._success.labels(self._model, split.finish_reason).inc()

  def text(self) -> bytes:
    return generate_latest(self.registry)
