"""Inference: the compiled decode loop with the Shifted Thinking Window, and the budget sweep.

`loop` (prefill + one while_loop over a donated KV cache), `sampling` (greedy / temperature /
top-k / top-p), `budget` (trigger placement and ids), `generate` (the public `generate` and
`sweep`), `decode` (single prefill / decode steps, used by the forward benchmark).
"""
