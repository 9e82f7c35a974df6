"""The collectives a compiled XLA program runs, per device, read from its optimized HLO text.

`collective_bytes(compiled.as_text())` -> `{"all-gather": CollectiveStats, ...}`: for each kind,
how many times it runs per call of the program and how many bytes it moves per device.

Counting rules (the assumptions, stated once):
- An op inside a `while` body counts once per trip: the trip count is XLA's `known_trip_count`
  when the compiler annotated it (CPU), else the constant the loop condition compares the
  induction variable with (`i < N`, starting at 0, step 1: what `lax.scan`/`fori_loop` emit;
  the TPU compiler drops the annotation). Both branches of a `conditional` count.
- TPU fuses a reduce-scatter into a `kCustom` fusion calling a computation named
  `all-reduce-scatter...` (an all-reduce of the full input followed by its shard); it counts
  as a reduce-scatter of that input, not as an all-reduce.
- Bytes on the wire per device, for a group of n devices (bandwidth-optimal ring algorithms):
  all-gather `result * (n-1)/n`; reduce-scatter `input * (n-1)/n`; all-reduce
  `2 * size * (n-1)/n`; all-to-all `size * (n-1)/n`; collective-permute `size`.
- TPU often lowers an FSDP all-gather or reduce-scatter feeding a matmul into a "collective
  matmul" (`windowed_dot_general` loops of collective-permutes that overlap the matmul): those
  bytes are counted as collective-permutes, which is what runs.
"""

from __future__ import annotations

import dataclasses
import math
import re

KINDS = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
                "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16,
                "f8e4m3fn": 1, "f8e5m2": 1, "s4": 0.5, "u4": 0.5}
_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s+\((.*)\)\s+->\s+(.*)\s+\{\s*$")
_SHAPE = re.compile(r"\b(" + "|".join(sorted(_DTYPE_BYTES, key=len, reverse=True)) +
                    r")\[([\d,]*)\]")
_OP = re.compile(r"^\s*(?:ROOT\s+)?%[\w.\-]+\s+=\s+(.*?)\s+(" + "|".join(KINDS) +
                 r")(?:-start)?\(")


@dataclasses.dataclass
class CollectiveStats:
  count: int = 0  # executions per program call
  bytes: float = 0.0  # result bytes (input bytes for reduce-scatter) summed over executions
  wire_bytes: float = 0.0  # per device, ring algorithms (see the module docstring)


def shape_bytes(text: str) -> int:
  """Bytes of every array shape in `text` (a shape or a tuple of shapes)."""
  return int(sum(_DTYPE_BYTES[d] * math.prod(int(x) for x in dims.split(",") if x)
                 for d, dims in _SHAPE.findall(text)))


def _group_size(line: str, default: int) -> int:
  m = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", line)
  if m:  # mesh['axis_0'=1,'axis_1'=8] {'axis_1'}
    sizes = dict(re.findall(r"'([^']+)'=(\d+)", m.group(1)))
    return math.prod(int(sizes[a]) for a in re.findall(r"'([^']+)'", m.group(2)))
  m = re.search(r"replica_groups=\{\{([\d,]*)\}", line)
  if m:  # {{0,1,2,3},{4,5,6,7}}
    return len(m.group(1).split(","))
  m = re.search(r"replica_groups=\[(\d+),(\d+)\]<=", line)
  if m:  # iota form [groups, size]<=[n]
    return int(m.group(2))
  return default


def _computations(hlo: str) -> tuple[dict[str, list[str]], dict[str, str], str]:
  bodies, headers, entry, name = {}, {}, None, None
  for line in hlo.splitlines():
    m = _HEADER.match(line)
    if m:
      name = m.group(2)
      bodies[name], headers[name] = [], line
      if m.group(1):
        entry = name
    elif name is not None:
      if line.rstrip() == "}":
        name = None
      else:
        bodies[name].append(line)
  if entry is None:
    raise ValueError("no ENTRY computation in this HLO text")
  return bodies, headers, entry


def _trip_count(line: str, bodies: dict[str, list[str]], condition: str,
                unknown: int | None = None) -> int:
  m = re.search(r'"known_trip_count":\{"n":"(\d+)"\}', line)
  if m:
    return int(m.group(1))
  constants = {}
  for cl in bodies.get(condition, []):
    c = re.match(r"\s*%([\w.\-]+)\s+=\s+[su](?:8|16|32|64)\[\][^=]*constant\((\d+)\)", cl)
    if c:
      constants[c.group(1)] = int(c.group(2))
  for cl in bodies.get(condition, []):
    if "compare(" in cl and "direction=LT" in cl:
      for ref in re.findall(r"%([\w.\-]+)", cl.split("compare(", 1)[1]):
        if ref in constants:
          return constants[ref]
  if unknown is not None:
    return unknown
  raise ValueError(f"cannot tell the trip count of the while loop with condition %{condition} "
                   "(a data-dependent loop: pass unknown_trips)")


def collective_bytes(hlo: str, devices: int = 1,
                     unknown_trips: int | None = None) -> dict[str, CollectiveStats]:
  """Collectives of one call of the compiled program `hlo` (`compiled.as_text()`), per device.
  `devices`: the group size for an op without replica groups (all devices). `unknown_trips`:
  the trips counted for a loop whose count depends on data (the decode chunk, which stops
  when every row is done: 1 gives the collectives per token); by default such a loop is an
  error."""
  bodies, headers, entry = _computations(hlo)
  stats = {k: CollectiveStats() for k in KINDS}

  def visit(name: str, times: int, depth: int = 0) -> None:
    if depth > 64:
      raise ValueError(f"HLO call graph deeper than 64 at %{name}")
    for line in bodies[name]:
      w = re.search(r"\bwhile\(.*condition=%([\w.\-]+), body=%([\w.\-]+)", line)
      if w:
        visit(w.group(2), times * _trip_count(line, bodies, w.group(1), unknown_trips),
              depth + 1)
        continue
      f = re.search(r"kind=kCustom, calls=%(all-reduce-scatter[\w.\-]*)", line)
      if f:  # TPU's fused reduce-scatter: input = the called computation's parameters
        n = _group_size(" ".join(bodies[f.group(1)]), devices)
        size = shape_bytes(headers[f.group(1)].split("->")[0])
        s = stats["reduce-scatter"]
        s.count, s.bytes = s.count + times, s.bytes + times * size
        s.wire_bytes += times * size * (n - 1) / n
        continue
      op = _OP.match(line)
      if op:
        kind, n = op.group(2), _group_size(line, devices)
        size = shape_bytes(op.group(1))
        if "-start(" in line and op.group(1).startswith("("):
          # async: (operand, result, context scalars...): the result is the second element
          size = shape_bytes(re.split(r",\s*(?=[a-z]+\d*\[)", op.group(1).strip("()"))[1])
        if kind == "reduce-scatter":
          size *= n  # the result is one shard of the input
        factor = {"all-reduce": 2 * (n - 1) / n, "collective-permute": 1.0}.get(
            kind, (n - 1) / max(n, 1))
        s = stats[kind]
        s.count, s.bytes = s.count + times, s.bytes + times * size
        s.wire_bytes += times * size * factor
        continue
      for callee in re.findall(r"(?:calls|branch_computations=\{|true_computation|"
                               r"false_computation)=?%([\w.\-]+)", line):
        if callee in bodies:
          visit(callee, times, depth + 1)

  visit(entry, 1)
  return stats
