"""Goodput of one `z1 train` attempt, as MaxText reports it: the share of wall time spent in
productive steps, and the badput by cause.

Causes: `startup` (config, mesh, model load or restore, until the step is compiled), `data`
(tokenizing and packing, and waiting for batches during the loop), `compilation` (the train
step's ahead-of-time compile: small on a second start with the persistent cache),
`checkpointing` (time the loop spends in saves, and the final wait for them), `eval` (held-out
losses), `restarts` (step time of work an earlier attempt did after its last checkpoint, which
this attempt computes again; read from the metrics lines that the resume drops), `other` (the
rest: logging, the host waiting behind the device at the end). Goodput = productive / (wall +
restarts).
"""

from __future__ import annotations

import time

CAUSES = ("startup", "data", "compilation", "checkpointing", "eval", "restarts", "other")


class Goodput:

  def __init__(self):
    self.start = time.perf_counter()
    self.seconds = {c: 0.0 for c in CAUSES}
    self.productive = 0.0

  def add(self, cause: str, seconds: float) -> None:
    self.seconds[cause] += seconds

  def report(self, steps: int, first_step: int) -> dict:
    wall = time.perf_counter() - self.start
    known = self.productive + sum(v for c, v in self.seconds.items() if c not in
                                  ("other", "restarts"))
    badput = dict(self.seconds, other=max(wall - known, 0.0))
    total = wall + badput["restarts"]
    return {"event": "goodput", "steps": f"{first_step + 1}..{first_step + steps}",
            "wall_s": round(wall, 3), "productive_s": round(self.productive, 3),
            "goodput": round(self.productive / total, 4) if total > 0 else 0.0,
            "badput_s": {c: round(v, 3) for c, v in badput.items()}}
