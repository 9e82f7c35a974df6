"""Inference: one decoder, the engine, with the Shifted Thinking Window and the budget sweep.

`engine` (continuous batching over slots: `Engine`, `Request`, `Event`, `Generation`),
`window` (the per-row state machine: the Shifted Thinking Window and s1 budget forcing, one
definition), `sampling` (greedy / temperature / top-k / top-p per row, position-derived keys),
`budget` (trigger placement, ids and the trigger-length rule), `generate` (the public
`generate` and `sweep` on the engine), `command` (`z1 generate`), `aot` (compiling the engine's
programs for a TPU slice without chips), `load` (a checkpoint laid out for decoding).
"""
