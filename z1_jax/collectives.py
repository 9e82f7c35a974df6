"""The collectives a compiled XLA program runs, per device, read from its optimized HLO text.

`collective_bytes(compiled.as_text())` -> `{"all-gather": CollectiveStats, ...}`: for each kind,
how many times it runs per call of the program and how many bytes it moves per device.

Counting rules (the assumptions, stated once):
- An op inside a `while` body counts once per trip (`z1_jax.hlo.trip_count`: XLA's annotation,
  else the loop's induction variable: start, step and bound read from the loop). Both branches
  of a `conditional` count.
- TPU fuses a reduce-scatter into a `kCustom` fusion calling a computation named
  `all-reduce-scatter...` (an all-reduce of the full input followed by its shard); it counts
  as a reduce-scatter of that input, not as an all-reduce.
- Bytes on the wire per device, for a group of n devices (bandwidth-optimal ring algorithms):
  all-gather `result * (n-1)/n`; reduce-scatter `input * (n-1)/n`; all-reduce
  `2 * size * (n-1)/n`; all-to-all `size * (n-1)/n`; collective-permute `size`.
- TPU often lowers an FSDP all-gather or reduce-scatter feeding a matmul into a "collective
  matmul" (`windowed_dot_general` loops of collective-permutes that overlap the matmul): those
  bytes are counted as collective-permutes, which is what runs. Such a loop steps its counter
  by 2 (two permutes each way per trip): 8 trips over 32 devices move one full weight.
"""

from __future__ import annotations

import dataclasses
import math
import re

from z1_jax.hlo import parse, shape_bytes, walk

KINDS = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
_RESULT = re.compile(r",\s*(?=[a-z]+\d*\[)")


@dataclasses.dataclass
class CollectiveStats:
  count: int = 0  # executions per program call
  bytes: float = 0.0  # result bytes (input bytes for reduce-scatter) summed over executions
  wire_bytes: float = 0.0  # per device, ring algorithms (see the module docstring)


def _group_size(text: str, default: int) -> int:
  m = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", text)
  if m:  # mesh['axis_0'=1,'axis_1'=8] {'axis_1'}
    sizes = dict(re.findall(r"'([^']+)'=(\d+)", m.group(1)))
    return math.prod(int(sizes[a]) for a in re.findall(r"'([^']+)'", m.group(2)))
  m = re.search(r"replica_groups=\{\{([\d,]*)\}", text)
  if m:  # {{0,1,2,3},{4,5,6,7}}
    return len(m.group(1).split(","))
  m = re.search(r"replica_groups=\[(\d+),(\d+)\]<=", text)
  if m:  # iota form [groups, size]<=[n]
    return int(m.group(2))
  return default


def _fused_reduce_scatter(ins) -> str | None:
  m = re.search(r"kind=kCustom, calls=%(all-reduce-scatter[\w.\-]*)", ins.attrs)
  return m.group(1) if m else None


def collective_bytes(hlo: str, devices: int = 1,
                     unknown_trips: int | None = None) -> dict[str, CollectiveStats]:
  """Collectives of one call of the compiled program `hlo` (`compiled.as_text()`), per device.
  `devices`: the group size for an op without replica groups (all devices). `unknown_trips`:
  the trips counted for a loop whose count depends on data (the decode chunk, which stops
  when every row is done: 1 gives the collectives per token); by default such a loop is an
  error."""
  module = parse(hlo)
  stats = {k: CollectiveStats() for k in KINDS}
  fused = lambda ins: ins.opcode == "fusion" and _fused_reduce_scatter(ins) is not None
  for _, ins, times in walk(module, unknown_trips, descend=lambda ins: not fused(ins)):
    if fused(ins):  # TPU's fused reduce-scatter: input = the called computation's parameters
      called = module.computations[_fused_reduce_scatter(ins)]
      n = _group_size(" ".join(f"{i.opcode}({i.args}), {i.attrs}" for i in called.instrs),
                      devices)
      size = shape_bytes(called.header.split("->")[0])
      kind, factor = "reduce-scatter", (n - 1) / n
    else:
      kind = ins.opcode.removesuffix("-start")
      if kind not in KINDS:
        continue
      n = _group_size(ins.attrs, devices)
      size = shape_bytes(ins.type)
      if ins.opcode.endswith("-start") and ins.type.startswith("("):
        # async: (operand, result, context scalars...): the result is the second element
        size = shape_bytes(_RESULT.split(ins.type.strip("()"))[1])
      if kind == "reduce-scatter":
        size *= n  # the result is one shard of the input
      factor = {"all-reduce": 2 * (n - 1) / n, "collective-permute": 1.0}.get(
          kind, (n - 1) / max(n, 1))
    s = stats[kind]
    s.count, s.bytes = s.count + times, s.bytes + times * size
    s.wire_bytes += times * size * factor
  return stats
