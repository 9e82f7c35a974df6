"""`z1 distill`'s TOML config: typed sections, `section.key=value` overrides, and the `[decode]`
table passed through to the engine.

Sections (every key, its default and its meaning: `configs/distill.toml`):
  [problems]       where the prompt comes from: columns, the prompt template, the system turn
  [generation]     samples per problem, problems per batch (one shard each), the length cap
  [filters]        thresholds of the filters and the optional sandboxed check
  [decontaminate]  the benchmarks, the n-gram size, local files for hub-only benchmarks
  [output]         the token-count column's name, the short / long thresholds of the report
  [decode]         `z1_jax.infer.generate.DecodeOptions` fields, passed through as given:
                   sampling (temperature, top_k, top_p, seed), eos_ids, batch_size (slots), and
                   any option the engine adds later (page_size, max_total_tokens, ...), with no
                   change here. Keys are checked against `dataclasses.fields(DecodeOptions)`.
Unknown keys and wrong types are errors naming the dotted key, before anything loads.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import re
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

from z1_jax.data.format import DEFAULT_SYSTEM_PROMPT
from z1_jax.errors import Z1Error

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "distill.toml"

# Benchmarks decontaminated against by default: every one `z1 sweep` knows, and MBPP.
DECONTAMINATE_ALL = ("humaneval", "mbpp", "livecodebench", "bigcodebench-hard", "math500",
                     "math500-mmath", "gpqa-diamond", "aime2024", "aime2025")

# DecodeOptions fields distill sets itself, and those that apply only with a thinking budget
# (distill decodes as Z1's data step did: plain generation up to the length cap).
DECODE_SET_BY_DISTILL = ("tokenizer", "row_ids")
DECODE_BUDGET_ONLY = ("mode", "placement", "trigger", "trigger_ids", "min_thinking", "wait_ids")
# [decode] keys that decide how fast, not what, is decoded: a resume may change them.
DECODE_RUNTIME = ("batch_size",)


class DistillConfigError(Z1Error):
  """A bad distill config: names the file and the dotted key."""


@dataclasses.dataclass(frozen=True)
class ProblemsSection:
  question_column: str = "question"
  id_column: str = ""  # "": the row's index in the problem set
  source_column: str = ""  # "": the --problems argument names the source of every row
  tests_column: str = ""  # eval.code tests of each problem (a dict or its JSON): check = "tests"
  program_column: str = ""  # check = "output": the program to run ("": the question column)
  split: str = "train"  # of a hub dataset or a saved DatasetDict
  limit: int = 0  # the first N problems; 0: all
  # The user message, `{column}` fields filled from the problem's row. Z1's: the question alone.
  template: str = "{question}"
  system_prompt: str = DEFAULT_SYSTEM_PROMPT


@dataclasses.dataclass(frozen=True)
class GenerationSection:
  samples_per_problem: int = 1
  batch_problems: int = 256  # problems decoded per batch: the unit of shards and of the journal
  max_tokens: int = 8192  # the length cap on a response (Z1: 8,192)


@dataclasses.dataclass(frozen=True)
class FiltersSection:
  on_length_cap: str = "drop"  # rows that reach max_tokens: "drop" or "keep"
  repetition_ngram: int = 20  # n of the repeated n-gram share (filters.repeated_ngram_share)
  repetition_max_share: float = 0.5  # rows above this share are removed; 1.0: off
  answer_pattern: str = ""  # regex the response must match ("": none); group 1 is the answer
  check: str = "none"  # "none", "tests" (run the code against tests), "output" (see checks.py)
  on_fail: str = "drop"  # rows that fail the check: "drop", or "split" (a separate split)
  check_timeout_s: float = 10.0  # wall-clock limit of one sandbox run
  check_workers: int = 0  # sandbox runs at once; 0: the number of CPUs
  allow_unsandboxed: bool = False  # run model code without bubblewrap (limits only): unsafe


@dataclasses.dataclass(frozen=True)
class DecontaminateSection:
  benchmarks: tuple[str, ...] = DECONTAMINATE_ALL  # [] turns decontamination off
  ngram: int = 13  # words (the GPT-3 / lm-eval convention)
  files: dict[str, str] = dataclasses.field(default_factory=dict)  # benchmark -> local file


@dataclasses.dataclass(frozen=True)
class OutputSection:
  # token_num_<tokenizer_name>: "auto" is "qwen" for a tokenizer with Qwen2.5's special ids,
  # else the tokenizer directory's name
  tokenizer_name: str = "auto"
  short_tokens: int = 1024  # the report's short share: token_num <= this
  long_tokens: int = 4096  # the report's long share: token_num >= this


@dataclasses.dataclass(frozen=True)
class DistillConfig:
  problems: ProblemsSection = ProblemsSection()
  generation: GenerationSection = GenerationSection()
  filters: FiltersSection = FiltersSection()
  decontaminate: DecontaminateSection = DecontaminateSection()
  output: OutputSection = OutputSection()
  decode: dict[str, Any] = dataclasses.field(default_factory=dict)
  source: str = "<defaults>"

  def to_json(self) -> dict:
    d = {f.name: dataclasses.asdict(getattr(self, f.name)) for f in _sections()}
    d["decontaminate"]["benchmarks"] = list(self.decontaminate.benchmarks)
    d["decode"] = dict(self.decode)
    return d

  def identity(self) -> dict:
    """What decides the output rows: everything but the runtime keys (`DECODE_RUNTIME`)."""
    d = self.to_json()
    d["decode"] = {k: v for k, v in d["decode"].items() if k not in DECODE_RUNTIME}
    return d

  def decode_options(self, **set_by_distill):
    """The `DecodeOptions` of every batch: the [decode] table plus what distill sets."""
    from z1_jax.infer.generate import DecodeOptions
    return DecodeOptions(**{**self.decode, **set_by_distill})


_CHOICES = {"filters.on_length_cap": ("drop", "keep"), "filters.check": ("none", "tests", "output"),
            "filters.on_fail": ("drop", "split")}
_POSITIVE = ("generation.samples_per_problem", "generation.batch_problems",
             "generation.max_tokens", "filters.repetition_ngram", "filters.check_timeout_s",
             "decontaminate.ngram")
_NON_NEGATIVE = ("problems.limit", "filters.check_workers", "output.short_tokens",
                 "output.long_tokens")


def _sections() -> list[dataclasses.Field]:
  return [f for f in dataclasses.fields(DistillConfig) if f.name not in ("decode", "source")]


def _type_ok(value: Any, kind: Any) -> bool:
  """`value` fits the annotation `kind` (the types these sections and DecodeOptions use)."""
  origin, args = typing.get_origin(kind), typing.get_args(kind)
  if kind is Any or kind is object:
    return True
  if origin in (typing.Union, types.UnionType):
    return any(_type_ok(value, a) for a in args)
  if kind is type(None):
    return value is None
  if kind is bool:
    return isinstance(value, bool)
  if kind is int:
    return isinstance(value, int) and not isinstance(value, bool)
  if kind is float:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if kind is str:
    return isinstance(value, str)
  if origin in (tuple, list, collections.abc.Sequence):
    return isinstance(value, (list, tuple)) and all(_type_ok(v, args[0]) for v in value)
  if origin is dict:
    return isinstance(value, dict) and all(_type_ok(k, args[0]) and _type_ok(v, args[1])
                                           for k, v in value.items())
  return True  # a type this checker does not know: the engine checks it


def _type_name(kind: Any) -> str:
  return getattr(kind, "__name__", None) or str(kind).replace("typing.", "")


def check_decode(table: dict[str, Any], where: str) -> dict[str, Any]:
  """The [decode] table: keys are `DecodeOptions` fields (except those distill sets or that need
  a thinking budget), values of the field's type."""
  from z1_jax.infer.generate import DecodeOptions
  hints = typing.get_type_hints(DecodeOptions)
  fields = [f.name for f in dataclasses.fields(DecodeOptions)]
  allowed = [f for f in fields if f not in DECODE_SET_BY_DISTILL + DECODE_BUDGET_ONLY]
  for key, value in table.items():
    if key in DECODE_SET_BY_DISTILL:
      raise DistillConfigError(f"{where}: decode.{key} is set by distill itself (the teacher's "
                               "tokenizer, row ids from each problem's index)")
    if key in DECODE_BUDGET_ONLY:
      raise DistillConfigError(f"{where}: decode.{key} applies with a thinking budget only; "
                               "distill decodes plainly up to generation.max_tokens, as Z1's "
                               "data step did")
    if key not in fields:
      raise DistillConfigError(f"{where}: unknown key decode.{key}; [decode] takes the fields "
                               f"of DecodeOptions: {', '.join(allowed)}")
    if not _type_ok(value, hints[key]):
      raise DistillConfigError(f"{where}: decode.{key} = {value!r}: expected "
                               f"{_type_name(hints[key])}")
  return dict(table)


def _build(raw: dict[str, Any], where: str) -> DistillConfig:
  sections = {f.name: f for f in _sections()}
  kwargs: dict[str, Any] = {}
  for name, body in raw.items():
    if name != "decode" and name not in sections:
      raise DistillConfigError(f"{where}: unknown section [{name}]; known: "
                               f"{', '.join([*sections, 'decode'])}")
    if not isinstance(body, dict):
      raise DistillConfigError(f"{where}: {name} must be a table ([{name}]), got {body!r}")
    if name == "decode":
      kwargs["decode"] = check_decode(body, where)
      continue
    cls = sections[name].default.__class__
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in body.items():
      if key not in hints:
        raise DistillConfigError(f"{where}: unknown key {name}.{key}; known in [{name}]: "
                                 f"{', '.join(hints)}")
      if not _type_ok(value, hints[key]):
        raise DistillConfigError(f"{where}: {name}.{key} = {value!r}: expected "
                                 f"{_type_name(hints[key])}")
      values[key] = tuple(value) if isinstance(value, list) else value
      if hints[key] is float:
        values[key] = float(value)
    kwargs[name] = cls(**values)
  cfg = DistillConfig(**kwargs, source=where)
  _validate(cfg)
  return cfg


def _validate(cfg: DistillConfig) -> None:
  from z1_jax.config import check_keys
  where = cfg.source
  check_keys(cfg, where, _CHOICES, _POSITIVE, _NON_NEGATIVE, DistillConfigError)
  f = cfg.filters
  if not 0 <= f.repetition_max_share <= 1:
    raise DistillConfigError(f"{where}: filters.repetition_max_share = "
                             f"{f.repetition_max_share}: expected 0..1 (1: off)")
  try:
    pattern = re.compile(f.answer_pattern)
  except re.error as e:
    raise DistillConfigError(f"{where}: filters.answer_pattern = {f.answer_pattern!r}: not a "
                             f"regular expression ({e})") from None
  if f.check == "tests" and not cfg.problems.tests_column:
    raise DistillConfigError(f"{where}: filters.check = \"tests\" needs problems.tests_column "
                             "(the column holding each problem's tests)")
  if f.check == "output" and not f.answer_pattern:
    raise DistillConfigError(f"{where}: filters.check = \"output\" needs filters.answer_pattern "
                             "(a regex whose group 1 is the answer, e.g. 'answer: (\\d+)')")
  if f.check == "output" and pattern.groups < 1:
    raise DistillConfigError(f"{where}: filters.answer_pattern = {f.answer_pattern!r}: "
                             "check = \"output\" needs a group around the answer")
  if f.on_fail == "split" and f.check == "none":
    raise DistillConfigError(f"{where}: filters.on_fail = \"split\" needs a check "
                             "(filters.check = \"tests\" or \"output\")")
  n, decode = cfg.generation.samples_per_problem, cfg.decode
  if n > 1 and not decode.get("temperature"):
    raise DistillConfigError(f"{where}: generation.samples_per_problem = {n} with greedy "
                             "decoding gives identical samples: set decode.temperature > 0")
  unknown = [b for b in cfg.decontaminate.benchmarks if b not in DECONTAMINATE_ALL]
  if unknown:
    raise DistillConfigError(f"{where}: decontaminate.benchmarks: unknown {unknown}; known: "
                             f"{', '.join(DECONTAMINATE_ALL)}")
  for name, path in cfg.decontaminate.files.items():
    if name not in cfg.decontaminate.benchmarks:
      raise DistillConfigError(f"{where}: decontaminate.files.{name}: {name} is not among "
                               "decontaminate.benchmarks")
    if not Path(path).expanduser().is_file():
      raise FileNotFoundError(f"{where}: decontaminate.files.{name} = {path}: file not found")
  o = cfg.output
  if o.tokenizer_name != "auto" and not re.fullmatch(r"[A-Za-z0-9_]+", o.tokenizer_name):
    raise DistillConfigError(f"{where}: output.tokenizer_name = {o.tokenizer_name!r}: expected "
                             "letters, digits and _ (it names the column token_num_<name>)")
  try:
    cfg.problems.template.format_map(_AnyField())
  except (ValueError, IndexError) as e:
    raise DistillConfigError(f"{where}: problems.template = {cfg.problems.template!r}: not a "
                             f"format string of {{column}} fields ({e})") from None


class _AnyField(dict):
  def __missing__(self, key):
    return ""


def load_config(path: str | None, overrides: list[str] = ()) -> DistillConfig:
  """Reads the TOML config (None: `configs/distill.toml`) and applies `section.key=value`
  overrides in order (`decontaminate.files.NAME=PATH` sets one file)."""
  from z1_jax.config import parse_override
  p = Path(path).expanduser() if path is not None else DEFAULT_CONFIG
  where = str(path) if path is not None else str(DEFAULT_CONFIG)
  if not p.is_file():
    raise DistillConfigError(f"--config {where}: file not found")
  try:
    raw = tomllib.loads(p.read_text())
  except tomllib.TOMLDecodeError as e:
    raise DistillConfigError(f"{where}: not valid TOML: {e}") from None
  for text in overrides:
    if text.startswith("decontaminate.files."):
      dotted, _, value = text.partition("=")
      raw.setdefault("decontaminate", {}).setdefault("files", {})[
          dotted[len("decontaminate.files."):]] = value
      continue
    section, key, value = parse_override(text)
    if not isinstance(raw.setdefault(section, {}), dict):
      raise DistillConfigError(f"override {text!r}: {section} is not a section")
    raw[section][key] = value
  if overrides:
    where = f"{where} (with overrides)"
  return _build(raw, where)
