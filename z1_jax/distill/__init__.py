"""`z1 distill`: a teacher on z1-jax's engine turns problems into a Z1-style trajectory set.

  config.py     the TOML config (sections, overrides, the [decode] pass-through)
  problems.py   reading the problems and filling the prompt template
  filters.py    length cap, empty / malformed answers, the repetition detector
  checks.py     the optional sandboxed check (tests, or a program's printed output)
  decontam.py   n-gram decontamination against the evaluation benchmarks
  hosts.py      what process 0 tells the others (the distributed key-value store)
  run.py        the loop: batches, shards, journal, resume, many hosts
  report.py     report.json / report.md / lengths.png
  proof.py      the CPU proof on the demo's task (teacher -> set -> student)
  command.py    the `z1 distill` options
"""
