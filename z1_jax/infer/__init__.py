"""Inference: the compiled decode loop with the Shifted Thinking Window, and the budget sweep.

`loop` (prefill + one while_loop over a donated KV cache, the per-row state machine),
`sampling` (greedy / temperature / top-k / top-p, position-derived keys), `budget` (trigger
placement and ids), `generate` (the public `generate` and `sweep`), `command` (`z1 generate`),
`aot` (compiling the decode programs for a TPU slice without chips), `decode` (single prefill
/ decode steps, used by the forward benchmark).
"""
