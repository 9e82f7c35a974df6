"""`z1 serve`: an OpenAI-compatible HTTP server on the decode engine, with a thinking budget per
request (FastAPI on uvicorn; see `z1_jax/serve/app.py`).

Start-up: flags checked, the chat template checked (`--chat-template`, else the tokenizer's),
model loaded, the engine compiled on its thread while uvicorn already
listens (`GET /health` is 503 until then, 200 after); the address and progress go to stderr.
SIGTERM / SIGINT: stop accepting, let what is in flight finish for `--shutdown-timeout` seconds
(then cancel it), stop the engine, exit 0. On a pod slice every process runs the engine and
process 0 serves HTTP (`runner` broadcasts its requests); the other processes stop when process
0 tells them (their own SIGTERM waits for that).
"""

from __future__ import annotations

import contextlib
import signal
import socket
import sys
import threading
from pathlib import Path

from z1_jax import distributed
from z1_jax.cli_args import (byte_size, float_dtype, mesh_spec, non_negative_int, port,
                             positive_float, positive_int)
from z1_jax.errors import Z1Error

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json")
DEFAULT_MAX_REQUEST_BYTES = 8_000_000  # --max-request-bytes (8MB)


def _log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


_READY = "z1 serve: ready on "  # + the URL: the line a parent process waits for


def ready_url(stderr, log: list[str]) -> str:
  """For a parent running `z1 serve` as a child (a benchmark, a test): reads the child's stderr
  (text lines) into `log` until it says it is ready, then goes on reading it into `log` on a
  daemon thread (a full pipe would stall the server). Returns the server's URL; a child that
  exits first is a Z1Error with the end of what it wrote."""
  for line in stderr:
    log.append(line)
    if line.startswith(_READY):
      threading.Thread(target=lambda: log.extend(stderr), daemon=True).start()
      return line[len(_READY):].strip()
  raise Z1Error("z1 serve exited before it was ready:\n" + "".join(log[-40:]))


def _check_flags(args) -> None:
  if args.default_answer_tokens is not None and args.default_thinking_budget is None:
    raise Z1Error("--default-answer-tokens applies with --default-thinking-budget")
  source = Path(args.hf or args.ckpt).expanduser()
  if args.ckpt and "://" not in args.ckpt and not source.is_dir():
    raise Z1Error(f"--ckpt {args.ckpt}: Orbax checkpoint directory not found")
  if args.tokenizer is None and not _has_tokenizer(source):
    raise Z1Error(f"{source} has no tokenizer: pass --tokenizer DIR (the server tokenizes "
                  "prompts and detokenizes answers)")
  if args.chat_template is not None and not Path(args.chat_template).expanduser().is_file():
    raise Z1Error(f"--chat-template {args.chat_template}: no such file (a Jinja chat template)")


def chat_template(args, tokenizer):
  """The chat prompt's renderer: `--chat-template FILE`, else the tokenizer's own template,
  else Z1's layout; a template that cannot render one user message is refused at start."""
  from z1_jax.serve.protocol import ChatTemplate, ServeError
  text = None
  if args.chat_template is not None:
    path = Path(args.chat_template).expanduser()
    try:
      text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
      raise Z1Error(f"--chat-template {args.chat_template}: cannot read it ({e})") from None
  template = ChatTemplate(tokenizer, text, args.chat_template)
  try:
    template.render([{"role": "user", "content": "hi"}])
  except Exception as e:  # noqa: BLE001 - any failure of the template
    message = e.message if isinstance(e, ServeError) else f"{type(e).__name__}: {e}"
    raise Z1Error(f"chat template ({template.source}) cannot render a user message: "
                  f"{message}") from None
  return template


def _has_tokenizer(path: Path) -> bool:
  return path.is_dir() and any((path / f).exists() for f in _TOKENIZER_FILES)


class _Server:
  """uvicorn's server, with SIGTERM/SIGINT turned into a graceful stop and exit 0 (uvicorn
  re-raises the signal after shutting down, which would end the process by the signal)."""

  def __init__(self, app, sock, shutdown_timeout: float):
    import uvicorn

    class Server(uvicorn.Server):
      @contextlib.contextmanager
      def capture_signals(self):
        if threading.current_thread() is not threading.main_thread():
          yield
          return
        old = {s: signal.signal(s, lambda *_: self.handle_exit(s, None))
               for s in (signal.SIGINT, signal.SIGTERM)}
        try:
          yield
        finally:
          for s, h in old.items():
            signal.signal(s, h)

      def handle_exit(self, sig, frame):
        if not self.should_exit:
          _log("z1 serve: stopping: no new connections; waiting for requests in flight")
        super().handle_exit(sig, frame)

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                            timeout_graceful_shutdown=shutdown_timeout)
    self.server, self.sock = Server(config), sock

  def run(self) -> None:
    self.server.run(sockets=[self.sock])


def _context(args, cfg, tokenizer) -> int:
  """The cache positions per slot, and the server-wide defaults checked against them and the
  model's config (before any weight is read)."""
  from z1_jax.infer.budget import marker_ids
  positions = cfg.max_position_embeddings
  if args.max_seq_len is not None and args.max_seq_len > positions:
    raise Z1Error(f"--max-seq-len {args.max_seq_len}: the model has {positions} positions "
                  "(max_position_embeddings in its config); pass at most that")
  max_seq_len = args.max_seq_len or min(4096, positions)
  if args.default_thinking_budget is not None:
    t = max(len(marker_ids(mode, None, None, tokenizer)) for mode in ("z1", "s1"))
    if args.default_thinking_budget <= t:
      raise Z1Error(f"--default-thinking-budget {args.default_thinking_budget}: must exceed "
                    f"the answer trigger's {t} tokens (the longer of the z1 trigger and the "
                    "s1 answer marker)")
    # a one-token prompt, the window (and an appended trigger) and one answer token
    least = 1 + args.default_thinking_budget + t + (args.default_answer_tokens or 1)
    if least > max_seq_len:
      flags = f"--default-thinking-budget {args.default_thinking_budget}"
      if args.default_answer_tokens:
        flags += f" --default-answer-tokens {args.default_answer_tokens}"
      raise Z1Error(f"{flags}: a one-token prompt would need {least} positions with them, and "
                    f"--max-seq-len is {max_seq_len}")
  return max_seq_len


def run_serve(args) -> int:
  distributed.initialize(args.coordinator, args.num_processes, args.process_id)
  _check_flags(args)
  import jax
  from z1_jax.infer.command import read_config
  from z1_jax.infer.engine import Engine
  from z1_jax.infer.generate import resolve_tokenizer
  from z1_jax.infer.load import load_for_decoding
  from z1_jax.model.sharding import mesh_from_spec
  from z1_jax.serve.protocol import Defaults
  from z1_jax.serve.runner import Runner
  source = Path(args.hf or args.ckpt).expanduser()
  name = args.served_model_name or source.name
  lead = jax.process_index() == 0
  tokenizer = resolve_tokenizer(args.tokenizer or source)
  template = chat_template(args, tokenizer)
  max_seq_len = _context(args, read_config(args.hf, args.ckpt), tokenizer)
  sock = None
  if lead:  # bind first: a taken port fails before the model loads
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
      sock.bind((args.host, args.port))
    except OSError as e:
      raise Z1Error(f"--host {args.host} --port {args.port}: cannot listen there ({e})") from None
    sock.listen(2048)
  _log(f"z1 serve: loading {source}...")
  model = load_for_decoding(args.hf, args.ckpt, mesh_from_spec(args.mesh), args.dtype)
  defaults = Defaults(args.default_thinking_budget, args.default_answer_tokens)
  from z1_jax.infer.load import cache_options
  runner = Runner(lambda: Engine(model, slots=args.batch_size, max_seq_len=max_seq_len,
                                 tokenizer=tokenizer, chunk_steps=args.chunk_steps,
                                 **cache_options(args)), log=_log)
  runner.start()
  if not lead:  # a pod's other processes: the engine only, driven by process 0's broadcasts
    # SIGTERM (a slice's shutdown signals every host) waits for process 0's stop: dying at once
    # broke the collective process 0 was in, while it still drained its requests in flight
    signal.signal(signal.SIGTERM, lambda *_: _log("z1 serve: SIGTERM: stopping when process "
                                                  "0 does"))
    runner._thread.join()
    return 0 if runner.failed is None else 1
  from z1_jax.serve.app import create_app
  app = create_app(runner, tokenizer, name, defaults, args.max_queue, args.max_request_bytes,
                   template)
  host, port = sock.getsockname()[:2]
  _log(f"z1 serve: {name!r} on http://{host}:{port}/v1 (ready once GET /health is 200); "
       f"chat prompts from {template.source}")

  def announce():
    runner.ready.wait()
    if runner.failed is None:
      _log(f"{_READY}http://{host}:{port}")
  threading.Thread(target=announce, daemon=True).start()
  _Server(app, sock, args.shutdown_timeout).run()
  runner.stop(timeout=args.shutdown_timeout + 30)
  _log(f"z1 serve: stopped after {runner.served} requests")
  return 0 if runner.failed is None else 1


def add_parser(sub) -> None:
  from z1_jax.infer.load import DTYPE_HELP, MESH_HELP, add_cache_args
  p = sub.add_parser("serve", help="OpenAI-compatible HTTP server with a thinking budget per "
                     "request (continuous batching on the decode engine)")
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument("--hf", help="HF checkpoint directory (default: none; one of --hf/--ckpt is "
                   "required)")
  src.add_argument("--ckpt", help="Orbax checkpoint: a z1 train run, a checkpoint root or one "
                   "step directory (default: none)")
  p.add_argument("--host", default="127.0.0.1", help="address to listen on")
  p.add_argument("--port", type=port, default=8000, help="port; 0 picks a free one")
  p.add_argument("--served-model-name", default=None,
                 help="the `model` clients must name (default: the checkpoint directory's name)")
  p.add_argument("--batch-size", type=positive_int, default=8,
                 help="engine slots: the most rows decoded at once (may far exceed "
                      "--max-total-tokens / --max-seq-len: rows take KV pages as they grow)")
  p.add_argument("--max-seq-len", type=positive_int, default=None,
                 help="the longest request: prompt + generated tokens (default: the model's "
                      "maximum, at most 4096); the KV cache is --max-total-tokens")
  p.add_argument("--default-thinking-budget", type=positive_int, default=None,
                 help="thinking budget B for requests without thinking_token_budget "
                      "(default: none, such requests decode without a budget)")
  p.add_argument("--default-answer-tokens", type=positive_int, default=None,
                 help="answer allowance A for budgeted requests without answer_tokens or "
                      "max_tokens (default: none, such requests answer in what the context "
                      "leaves)")
  p.add_argument("--max-request-bytes", type=byte_size, default=DEFAULT_MAX_REQUEST_BYTES,
                 help="largest request body accepted, in bytes or with a unit (500KB, 8MB); "
                      "a larger one gets 413 (default 8MB)")
  p.add_argument("--max-queue", type=non_negative_int, default=64,
                 help="requests waiting beyond the busy slots; more get 429 with Retry-After")
  p.add_argument("--chunk-steps", type=positive_int, default=16,
                 help="decode steps per engine dispatch (stream granularity)")
  p.add_argument("--shutdown-timeout", type=positive_float, default=30.0,
                 help="seconds in-flight requests may take to finish after SIGTERM before "
                      "they are cancelled")
  p.add_argument("--mesh", type=mesh_spec, default=None, help=MESH_HELP)
  add_cache_args(p)
  p.add_argument("--dtype", type=float_dtype, default=None, help=DTYPE_HELP)
  p.add_argument("--tokenizer", default=None,
                 help="tokenizer directory (default: the model directory's)")
  p.add_argument("--chat-template", default=None, metavar="FILE",
                 help="Jinja chat template for /v1/chat/completions (default: the tokenizer's "
                      "own chat_template; Z1's Qwen2.5 layout when it has none)")
  distributed.add_args(p)
  p.set_defaults(fn=run_serve)
