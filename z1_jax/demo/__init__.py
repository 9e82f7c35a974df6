"""`z1 demo`: the whole Z1 loop on a CPU, on a synthetic task this package generates.

`task` (the chain programs and their traces), `tokenizer` (a small BPE trained on the task with
the Qwen chat special tokens), `run` (the pipeline). `run_demo` is imported lazily, so the task
and tokenizer modules load without JAX.
"""


def __getattr__(name):
  if name == "run_demo":
    from z1_jax.demo.run import run_demo
    return run_demo
  raise AttributeError(f"module 'z1_jax.demo' has no attribute {name!r}")
