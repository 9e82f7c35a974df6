"""The demo's synthetic code-reasoning task: *chain* programs on one value, answered by running
them, in the Z1 dataset schema.

A program sets one value and applies `+k` / `-k` statements, printing the result modulo 10:
  question   x=58;x+=1;x-=1;x-=1;print(x%10)        (real Python; the answer is what it prints)
  trace      58+1=9-1=8-1=7                          (one `op k = value` per statement, mod 10)
Each step depends only on the previous value and the next statement, and only + and - occur
(multiplication skews answers towards 0 and tasks that look up several variables' latest values
stayed near chance in the prototype). Programs end with blank lines up to a fixed length, and a
statement and a trace step are both 4 tokens, so step i of the trace reads statement i at one
fixed distance in every example: a relative-position lookup, which a tiny model learns in a few
hundred steps. Without the padding the distance depends on the program's length and the model
must count statements: a 0.84M-parameter model trained that way (with and without one variable
per statement) learned the format but stayed at chance after 600 steps on this CPU.
Statements add or subtract 1..`max_k` with `max_k` = 1 by default (each step is +1 or -1).
With 1..9 a trace value is uniform over 0..9 given either the previous value or the statement
alone, so there is no first-order signal, and a 0.89M-parameter model that had learned to copy
every statement stayed at chance on the values (loss flat at 0.43 from step 300 to 690). With
1..3 the 0.89M model reached 48% after 600 steps and the z1-demo preset (0.17M) 20% after 400:
both copied every sign and operand and got the sums off by one. With +-1 the z1-demo preset
traces all of 60 held-out programs right after 300 steps (27% after 150).
Start values have two digits (10..99; the trace then works modulo 10), so even the
1-statement programs are numerous (180) and `held_out` can hold out the same number of programs
for every statement count without evaluating on training programs.
Two recipes over the same programs (the demo trains one model on each):
  z1      a trace whose length follows the statement count: `58+1=9-1=8\nanswer: 8`
          (`direct_max_steps` > 0 answers programs that short at once, `answer: 8`, as Z1 does
          for easy problems; the default is 0 because the earlier 0.89M model, on +-1..3,
          answering 1- and 2-statement programs at once got 0% and 10% of held-out ones right
          after 400 steps, while it traced 3..6-statement programs 100% right)
  long    every program, easy or hard, gets a long trajectory, as R1-style distilled models
          reason: the trace walks every slot of a 6-statement page, checking a slot that holds
          no statement as `+0` (`58+1=9-1=8+0=8+0=8+0=8+0=8`), then a re-check pass (the same
          trace again), then the answer: the same length for every program, as an R1-style
          model spends as long on an easy problem as on a hard one. (The page keeps every step
          at one fixed distance from its statement and the answer at one fixed distance from
          the last value; see above for why that matters to a tiny model.)
Rows of either recipe may instead be *cut*: the thinking cut at a random point by
`ANSWER_TRIGGER`, then the true answer line (`cut_fraction` of all rows, in both recipes: a
model trained from scratch has never seen the trigger, and without these rows neither model
could answer at all when a budget cuts it). Kinds: `direct`, `trace`, `cut`.
Every row carries `question`, `response` and `token_num_demo` (the response's length in the
demo tokenizer, the role `token_num_qwen` plays in Z1-Code-Reasoning-107K), plus `answer`
(from running the program), `steps` and `kind`.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import io
import re

import numpy as np

from z1_jax.data.format import ANSWER_TRIGGER

MODULUS = 10
ANSWER_PREFIX = "answer: "
_ANSWER = re.compile(re.escape(ANSWER_PREFIX) + r"(\d+)")
KINDS = ("direct", "trace", "cut")
RECIPES = ("z1", "long")
# Two-digit start values: 90 of them, so even 1-statement programs (180) are numerous enough
# to hold some out; the trace starts with the start value, then works modulo 10.
START_MIN, START_MAX = 10, 99
# Tokens per statement: `;` `x` `+=` `7` in the program, `+` `7` `=` `0` in the trace. Programs
# are padded with one blank line per token of a missing statement, so every program has the
# same length and statement i sits at the same distance from trace step i in every example.
PAD_PER_STEP = 4


@dataclasses.dataclass(frozen=True)
class ChainTask:
  min_steps: int = 1
  max_steps: int = 6
  # Programs this short are answered without a trace. 0: every program gets its trace (its
  # length follows the statement count); see the module docstring for why.
  direct_max_steps: int = 0
  cut_fraction: float = 0.3  # of all rows: trace cut by the trigger, then the true answer
  max_k: int = 1  # statements +1..+max_k and -1..-max_k

  def __post_init__(self):
    if not (1 <= self.min_steps < self.max_steps and 0 <= self.direct_max_steps < self.max_steps):
      raise ValueError(f"{self}: need 1 <= min_steps < max_steps, 0 <= direct_max_steps < "
                       "max_steps")
    if not 1 <= self.max_k < MODULUS:
      raise ValueError(f"max_k={self.max_k}: expected 1..{MODULUS - 1}")
    hard = self.hard_fraction
    if not 0 <= self.cut_fraction <= hard:
      raise ValueError(f"cut_fraction={self.cut_fraction}: must lie in [0, {hard:.3f}], the "
                       "fraction of programs long enough to get a trace")

  @property
  def hard_fraction(self) -> float:
    """Fraction of programs longer than `direct_max_steps` (step counts are uniform)."""
    span = self.max_steps - self.min_steps + 1
    return (self.max_steps - max(self.direct_max_steps, self.min_steps - 1)) / span


def program_text(start: int, ops: list[int], max_steps: int) -> str:
  """`x=3;x+=7;x-=2;print(x%10)`, then blank lines up to the length of a `max_steps` program."""
  body = "".join(f";x+={k}" if k > 0 else f";x-={-k}" for k in ops)
  return f"x={start}{body};print(x%{MODULUS})" + "\n" * (PAD_PER_STEP * (max_steps - len(ops)))


def run_program(question: str) -> int:
  """Executes a task program (our own generated code) and returns the integer it prints."""
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    exec(compile(question, "<chain>", "exec"), {"__builtins__": {"print": print}})  # noqa: S102
  return int(out.getvalue().strip())


def trace_text(start: int, ops: list[int]) -> str:
  """`3+7=0-2=8`: the start value, then per statement `op k = value` (modulo 10)."""
  parts, x = [str(start)], start
  for k in ops:
    x = (x + k) % MODULUS
    parts.append(f"{'-' if k < 0 else '+'}{abs(k)}={x}")
  return "".join(parts)


def answer_line(answer: int) -> str:
  return f"{ANSWER_PREFIX}{answer}"


def extract_answer(text: str) -> int | None:
  """The last `answer: N` in a generation (after the trigger, for a cut row), else None."""
  found = _ANSWER.findall(text)
  return int(found[-1]) if found else None


def sample_program(rng: np.random.Generator, task: ChainTask,
                   steps: int | None = None) -> tuple[int, list[int]]:
  """(start, ops): a two-digit start value and `steps` statements (uniform when None)."""
  if steps is None:
    steps = int(rng.integers(task.min_steps, task.max_steps + 1))
  start = int(rng.integers(START_MIN, START_MAX + 1))
  ops = [int(k) * (1 if rng.random() < 0.5 else -1)
         for k in rng.integers(1, task.max_k + 1, steps)]
  return start, ops


def long_trajectory(start: int, ops: list[int], max_steps: int) -> str:
  """The long recipe's thinking: the trace over every slot of a `max_steps` program, a slot
  without a statement checked as `+0` (the value again), then a re-check pass: the same trace
  again. Its length is the same for every program, and step i of the re-check sits at one fixed
  distance from step i of the first pass and from statement i."""
  page = trace_text(start, ops + [0] * (max_steps - len(ops)))
  return f"{page}\n{page}"


def response_for(start: int, ops: list[int], answer: int, recipe: str, task: ChainTask,
                 rng: np.random.Generator) -> tuple[str, str]:
  """(kind, response) for one program under `recipe` (see the module docstring)."""
  if recipe not in RECIPES:
    raise ValueError(f"recipe {recipe!r}: expected one of {', '.join(RECIPES)}")
  if recipe == "z1":
    if len(ops) <= task.direct_max_steps:
      return "direct", answer_line(answer)
    thinking, cut_p = trace_text(start, ops), task.cut_fraction / task.hard_fraction
  else:
    thinking, cut_p = long_trajectory(start, ops, task.max_steps), task.cut_fraction
  if rng.random() < cut_p:
    cut = int(rng.integers(0, len(thinking)))  # any point: a budget ends mid-step too
    return "cut", thinking[:cut] + ANSWER_TRIGGER + answer_line(answer)
  return "trace", f"{thinking}\n{answer_line(answer)}"


def make_row(rng: np.random.Generator, task: ChainTask, recipe: str = "z1",
             steps: int | None = None) -> dict:
  start, ops = sample_program(rng, task, steps)
  question = program_text(start, ops, task.max_steps)
  answer = run_program(question)
  kind, response = response_for(start, ops, answer, recipe, task, rng)
  return {"question": question, "response": response, "answer": answer, "steps": len(ops),
          "kind": kind}


def generate(n: int, task: ChainTask = ChainTask(), seed: int = 0,
             exclude: set[str] | frozenset[str] = frozenset(), recipe: str = "z1") -> list[dict]:
  """`n` rows, deterministic in `seed`; questions in `exclude` (e.g. held-out) are skipped.
  The programs depend on `seed` only, not on `recipe`: both recipes see the same programs."""
  if recipe not in RECIPES:
    raise ValueError(f"recipe {recipe!r}: expected one of {', '.join(RECIPES)}")
  programs = np.random.default_rng(seed)
  responses = np.random.default_rng([seed, RECIPES.index(recipe)])
  rows: list[dict] = []
  while len(rows) < n:
    start, ops = sample_program(programs, task)
    question = program_text(start, ops, task.max_steps)
    if question in exclude:
      continue
    answer = run_program(question)
    kind, response = response_for(start, ops, answer, recipe, task, responses)
    rows.append({"question": question, "response": response, "answer": answer,
                 "steps": len(ops), "kind": kind})
  return rows


def held_out(per_step: int, task: ChainTask = ChainTask(), seed: int = 1) -> list[dict]:
  """Evaluation programs: `per_step` distinct programs for every statement count from
  `min_steps` to `max_steps` (question, answer, steps; no response), in statement-count order."""
  rng = np.random.default_rng(seed)
  rows: list[dict] = []
  for steps in range(task.min_steps, task.max_steps + 1):
    seen: set[str] = set()
    while len(seen) < per_step:
      start, ops = sample_program(rng, task, steps)
      question = program_text(start, ops, task.max_steps)
      if question not in seen:
        seen.add(question)
        rows.append({"question": question, "answer": run_program(question), "steps": steps})
  return rows


def distinct_programs(task: ChainTask, steps: int) -> int:
  """How many different programs have `steps` statements."""
  return (START_MAX - START_MIN + 1) * (2 * task.max_k) ** steps


def eval_rows(rows: list[dict]) -> list[dict]:
  """The evaluation view of rows: question and answer only (responses are not shown)."""
  return [{"question": r["question"], "answer": r["answer"], "steps": r["steps"]} for r in rows]


def chance_level(answers: list[int]) -> float:
  """Accuracy of the best constant guess on these answers (the most frequent one)."""
  if not answers:
    raise ValueError("chance_level of no answers")
  return max(collections.Counter(answers).values()) / len(answers)


def count_tokens(rows: list[dict], tokenizer) -> list[dict]:
  """Adds `token_num_demo`: the response's length in `tokenizer` (no special tokens)."""
  ids = tokenizer([r["response"] for r in rows], add_special_tokens=False)["input_ids"]
  return [{**r, "token_num_demo": len(x)} for r, x in zip(rows, ids)]
