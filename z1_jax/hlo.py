"""Reading a compiled XLA program from its optimized HLO text (`compiled.as_text()`).

- `parse(hlo)` -> `Module`: the computations, each a list of `Instr` (name, result type, opcode,
  operand names, attributes) with its ROOT.
- `trip_count(module, caller, instr)`: how many times a `while` loop runs, or None when that
  depends on data. XLA's `known_trip_count` annotation when present (CPU); otherwise read from
  the loop itself (the TPU compiler drops the annotation): the induction variable is the tuple
  element that the condition's ROOT `compare` tests against a constant; its start is that
  element of the loop's initial tuple, its step the constant the body adds to it (or
  subtracts). A collective matmul's loop counts 0, 2, 4, ... below 16: 8 trips, not 16.
  Constants are followed through copies, converts and loop-invariant tuple elements; anything
  else (a bound computed at run time, a condition that is not one comparison) is "depends on
  data".
- `walk(module)`: every instruction the program runs, with how many times per call: a `while`
  body counts once per trip, fusions, calls and both branches of a conditional once per
  execution of their caller.
- `matmul_flops(hlo)`: FLOPs of the program's dots and convolutions (the TPU compiler writes
  most matmuls as convolutions), loops counted per trip, and the Pallas kernels it calls (which
  no cost model can see into): the compiled program's arithmetic, per device. XLA's own
  `compiled.cost_analysis()` counts each loop body once (an 8-trip collective matmul as one
  trip, a 28-layer scan as one layer), so it is not used for this.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Callable, Iterator

_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s+\((.*)\)\s+->\s+(.*)\s+\{\s*$")
_INSTR = re.compile(r"^\s*(ROOT\s+)?%([\w.\-]+)\s+=\s+(.*?)\s+([a-z][a-z0-9\-]*)\((.*)$")
DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
               "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16,
               "f8e4m3fn": 1, "f8e5m2": 1, "s4": 0.5, "u4": 0.5}
_SHAPE = re.compile(r"\b(" + "|".join(sorted(DTYPE_BYTES, key=len, reverse=True)) +
                    r")\[([\d,]*)\]")


@dataclasses.dataclass
class Instr:
  name: str
  type: str  # the result type: "f32[8,16]{1,0}" or a tuple "(bf16[...], u32[])"
  opcode: str
  operands: list[str]  # operand instruction names, in order
  args: str  # the text inside the opcode's parentheses (a constant's literal)
  attrs: str  # everything after them: "index=4, metadata=..."

  def attr(self, key: str) -> str | None:
    m = re.search(rf"\b{key}=(%?[\w.\-]+|\{{[^}}]*\}})", self.attrs)
    return m.group(1) if m else None


@dataclasses.dataclass
class Computation:
  name: str
  header: str
  instrs: list[Instr]
  defs: dict[str, Instr]
  root: Instr | None


@dataclasses.dataclass
class Module:
  computations: dict[str, Computation]
  entry: str


def shapes(text: str) -> list[tuple[str, tuple[int, ...]]]:
  """(dtype, dims) of every array shape in `text` (a shape or a tuple of shapes)."""
  return [(d, tuple(int(x) for x in dims.split(",") if x)) for d, dims in _SHAPE.findall(text)]


def shape_bytes(text: str) -> int:
  return int(sum(DTYPE_BYTES[d] * math.prod(dims) for d, dims in shapes(text)))


def _split_call(rest: str) -> tuple[str, str]:
  """`a, b), attrs` -> ("a, b", "attrs"): the opcode's arguments up to the matching `)`."""
  depth = 1
  for i, ch in enumerate(rest):
    if ch in "({[":
      depth += 1
    elif ch in ")}]":
      depth -= 1
      if depth == 0:
        return rest[:i], rest[i + 1:].lstrip(", ")
  return rest, ""


def parse(hlo: str) -> Module:
  comps: dict[str, Computation] = {}
  entry = current = None
  for line in hlo.splitlines():
    m = _HEADER.match(line)
    if m:
      current = Computation(m.group(2), line, [], {}, None)
      comps[current.name] = current
      if m.group(1):
        entry = current.name
      continue
    if current is None:
      continue
    if line.rstrip() == "}":
      current = None
      continue
    m = _INSTR.match(line)
    if not m:
      continue  # a continuation line (a string attribute broken over lines)
    args, attrs = _split_call(m.group(5))
    ins = Instr(m.group(2), m.group(3), m.group(4), re.findall(r"%([\w.\-]+)", args), args,
                attrs)
    current.instrs.append(ins)
    current.defs[ins.name] = ins
    if m.group(1):
      current.root = ins
  if entry is None:
    raise ValueError("no ENTRY computation in this HLO text")
  return Module(comps, entry)


# -- while loops ------------------------------------------------------------------------------

_FOLLOW = ("copy", "convert", "bitcast", "reshape", "copy-done", "copy-start")


def _index(ins: Instr) -> int | None:
  value = ins.attr("index")
  return int(value) if value is not None and value.isdigit() else None


def _constant(comp: Computation, name: str, element: Callable[[int], int | None]) -> int | None:
  """The integer value of `name` in `comp` if it is a constant (through copies and converts),
  or a loop-invariant element of the loop's tuple (`element(index)`); else None."""
  for _ in range(64):
    ins = comp.defs.get(name)
    if ins is None:
      return None
    if ins.opcode == "constant":
      try:
        return int(ins.args.strip())
      except ValueError:
        return None
    if ins.opcode in _FOLLOW and ins.operands:
      name = ins.operands[0]
      continue
    if ins.opcode == "get-tuple-element" and ins.operands and (
        comp.defs.get(ins.operands[0]) is not None and
        comp.defs[ins.operands[0]].opcode == "parameter"):
      index = _index(ins)
      return None if index is None else element(index)
    return None
  return None


def _element_of(comp: Computation, name: str) -> int | None:
  """k when `name` is `get-tuple-element(parameter), index=k` in `comp`."""
  ins = comp.defs.get(name)
  while ins is not None and ins.opcode in _FOLLOW and ins.operands:
    ins = comp.defs.get(ins.operands[0])
  if ins is None or ins.opcode != "get-tuple-element" or not ins.operands:
    return None
  source = comp.defs.get(ins.operands[0])
  return _index(ins) if source is not None and source.opcode == "parameter" else None


def _trips(start: int, step: int, bound: int, direction: str) -> int | None:
  if direction == "LT" and step > 0:
    return max(0, -(-(bound - start) // step))
  if direction == "LE" and step > 0:
    return max(0, (bound - start) // step + 1)
  if direction == "GT" and step < 0:
    return max(0, -(-(start - bound) // -step))
  if direction == "GE" and step < 0:
    return max(0, (start - bound) // -step + 1)
  if direction == "NE" and step and (bound - start) % step == 0 and (bound - start) // step >= 0:
    return (bound - start) // step
  return None


_FLIP = {"LT": "GT", "GT": "LT", "LE": "GE", "GE": "LE", "NE": "NE"}


def trip_count(module: Module, caller: Computation, loop: Instr) -> int | None:
  """Trips of the `while` instruction `loop` (an instruction of `caller`); None when the count
  depends on data (see the module docstring for what is read)."""
  m = re.search(r'"known_trip_count":\{"n":"(\d+)"\}', loop.attrs)
  if m:
    return int(m.group(1))
  cond = module.computations.get((loop.attr("condition") or "").lstrip("%"))
  body = module.computations.get((loop.attr("body") or "").lstrip("%"))
  if cond is None or body is None or cond.root is None or body.root is None:
    return None
  compare = cond.root
  direction = re.search(r"direction=(\w+)", compare.attrs)
  if compare.opcode != "compare" or not direction or len(compare.operands) != 2:
    return None
  init = caller.defs.get(loop.operands[0]) if loop.operands else None
  outputs = body.root.operands if body.root.opcode == "tuple" else []

  def initial(index: int) -> int | None:
    if init is None or init.opcode != "tuple" or index >= len(init.operands):
      return None
    return _constant(caller, init.operands[index], lambda _: None)

  def invariant(index: int) -> int | None:  # an element the body passes through unchanged
    if index >= len(outputs) or _element_of(body, outputs[index]) != index:
      return None
    return initial(index)

  a, b = compare.operands
  direction = direction.group(1)
  k = _element_of(cond, a)
  bound = _constant(cond, b, invariant)
  if k is None or bound is None:
    k, bound, direction = _element_of(cond, b), _constant(cond, a, invariant), _FLIP.get(
        direction, "")
  if k is None or bound is None or k >= len(outputs):
    return None
  start = initial(k)
  update = body.defs.get(outputs[k])
  if start is None or update is None or len(update.operands) != 2:
    return None
  x, y = update.operands
  step = None
  if update.opcode == "add":
    if _element_of(body, x) == k:
      step = _constant(body, y, invariant)
    elif _element_of(body, y) == k:
      step = _constant(body, x, invariant)
  elif update.opcode == "subtract" and _element_of(body, x) == k:
    c = _constant(body, y, invariant)
    step = None if c is None else -c
  if step is None:
    return None
  return _trips(start, step, bound, direction)


# -- walking the program ----------------------------------------------------------------------

def _callees(ins: Instr) -> list[str]:
  names = []
  for key in ("calls", "true_computation", "false_computation"):
    value = ins.attr(key)
    if value:
      names.append(value.lstrip("%"))
  branches = ins.attr("branch_computations")
  if branches:
    names += re.findall(r"%([\w.\-]+)", branches)
  if ins.opcode == "call" and ins.attr("to_apply"):
    names.append(ins.attr("to_apply").lstrip("%"))
  return names


def walk(module: Module, unknown_trips: int | None = None,
         descend: Callable[[Instr], bool] = lambda ins: True
         ) -> Iterator[tuple[Computation, Instr, int]]:
  """(computation, instruction, executions per program call) of every instruction reached from
  the entry: `while` bodies per trip, called computations (fusions, calls, conditional
  branches) per execution of their caller, unless `descend(instr)` says not to. A loop whose
  trip count depends on data counts `unknown_trips` trips, or is a ValueError when that is None.
  """
  def visit(comp: Computation, times: int, depth: int):
    if depth > 64:
      raise ValueError(f"HLO call graph deeper than 64 at %{comp.name}")
    for ins in comp.instrs:
      yield comp, ins, times
      if ins.opcode == "while":
        trips = trip_count(module, comp, ins)
        if trips is None:
          if unknown_trips is None:
            raise ValueError(f"cannot tell the trip count of the while loop %{ins.name} (its "
                             f"condition {ins.attr('condition')} depends on data: pass "
                             "unknown_trips)")
          trips = unknown_trips
        body = module.computations[ins.attr("body").lstrip("%")]
        yield from visit(body, times * trips, depth + 1)
      elif descend(ins) and not ins.opcode.endswith(("-done", "-update")):  # async: once
        for callee in _callees(ins):
          if callee in module.computations:
            yield from visit(module.computations[callee], times, depth + 1)

  yield from visit(module.computations[module.entry], 1, 0)


# -- arithmetic -------------------------------------------------------------------------------

def _operand_dims(comp: Computation, name: str) -> tuple[int, ...] | None:
  ins = comp.defs.get(name)
  if ins is None:
    return None
  found = shapes(ins.type)
  return found[0][1] if len(found) == 1 else None


def dot_flops(comp: Computation, ins: Instr) -> float:
  """2 x result elements x contracted size."""
  lhs = _operand_dims(comp, ins.operands[0])
  result = shapes(ins.type)
  if lhs is None or len(result) != 1:
    return 0.0
  contracting = re.findall(r"\d+", ins.attr("lhs_contracting_dims") or "")
  return 2.0 * math.prod(result[0][1]) * math.prod(lhs[int(i)] for i in contracting)


def _window(ins: Instr, spatial: int) -> list[dict[str, int]]:
  dims = [dict(size=1, pad_lo=0, stride=1, lhs_dilate=1, rhs_dilate=1) for _ in range(spatial)]
  m = re.search(r"window=\{([^}]*)\}", ins.attrs)
  for part in (m.group(1).split() if m else []):
    key, _, value = part.partition("=")
    values = value.split("x")
    if key == "pad":
      for d, v in zip(dims, values):
        d["pad_lo"] = int(v.split("_")[0])
    elif key in ("size", "stride", "lhs_dilate", "rhs_dilate"):
      for d, v in zip(dims, values):
        d[key] = int(v)
  return dims


def _valid_pairs(input_size: int, output_size: int, w: dict[str, int]) -> int:
  """(output position, window position) pairs that read a real input element (not padding):
  XLA's count for a convolution's FLOPs along one spatial dimension."""
  import numpy as np
  out = np.arange(output_size)
  total = 0
  for k in range(w["size"]):
    u = out * w["stride"] - w["pad_lo"] + k * w["rhs_dilate"]
    ok = (u % w["lhs_dilate"] == 0) & (u >= 0) & (u // w["lhs_dilate"] < input_size)
    total += int(ok.sum())
  return total


def convolution_flops(comp: Computation, ins: Instr) -> float:
  """2 x batch x output features x input features per group x valid window positions."""
  lhs = _operand_dims(comp, ins.operands[0])
  result = shapes(ins.type)
  labels = re.search(r"dim_labels=([0-9a-z]+)_([0-9a-z]+)->([0-9a-z]+)", ins.attrs)
  if lhs is None or len(result) != 1 or not labels:
    return 0.0
  lhs_labels, _, out_labels = labels.groups()
  out = result[0][1]
  spatial = sorted(c for c in lhs_labels if c.isdigit())
  window = _window(ins, len(spatial))
  feature_groups = int(ins.attr("feature_group_count") or 1)
  batch_groups = int(ins.attr("batch_group_count") or 1)
  pairs = math.prod(_valid_pairs(lhs[lhs_labels.index(c)], out[out_labels.index(c)], window[i])
                    for i, c in enumerate(spatial))
  batch = lhs[lhs_labels.index("b")] // batch_groups
  return (2.0 * batch * out[out_labels.index("f")] * (lhs[lhs_labels.index("f")] //
                                                       feature_groups) * pairs)


@dataclasses.dataclass
class PallasCall:
  count: int  # executions per program call
  operands: list[tuple[str, tuple[int, ...]]]  # (dtype, dims) of each array operand


@dataclasses.dataclass
class Arithmetic:
  """What one call of a compiled program computes, per device."""
  matmul_flops: float = 0.0  # dots and convolutions, loops per trip
  pallas: dict[str, PallasCall] = dataclasses.field(default_factory=dict)  # by kernel name


def arithmetic(hlo: str | Module, unknown_trips: int | None = None) -> Arithmetic:
  """Matmul FLOPs of the program and the Pallas kernels it runs (`tpu_custom_call`, named by
  their instruction: splash attention's `splash_mqa_fwd...`, `..._dq...`, `..._dkv...`), each
  with its executions per call and operand shapes; their FLOPs are the caller's to estimate."""
  module = parse(hlo) if isinstance(hlo, str) else hlo
  out = Arithmetic()
  for comp, ins, times in walk(module, unknown_trips):
    if ins.opcode == "dot":
      out.matmul_flops += times * dot_flops(comp, ins)
    elif ins.opcode == "convolution":
      out.matmul_flops += times * convolution_flops(comp, ins)
    elif ins.opcode == "custom-call" and 'custom_call_target="tpu_custom_call"' in ins.attrs:
      kind = re.sub(r"\.\d+$", "", ins.name)
      if kind not in out.pallas:
        operands = [found[0] for found in (shapes(comp.defs[o].type) for o in ins.operands
                                           if o in comp.defs) if len(found) == 1]
        out.pallas[kind] = PallasCall(0, operands)
      out.pallas[kind].count += times
  return out
