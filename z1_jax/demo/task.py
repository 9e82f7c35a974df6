"""The demo's synthetic code-reasoning task: *chain* programs on one value, answered by running
them, in the Z1 dataset schema.

A program sets one value and applies `+k` / `-k` statements, printing the result modulo 10:
  question   x=8;x+=3;x-=2;x+=1;print(x%10)         (real Python; the answer is what it prints)
  trace      8+3=1-2=9+1=0                           (one `op k = value` per statement, mod 10)
Each step depends only on the previous value and the next statement, and only + and - occur
(multiplication skews answers towards 0 and tasks that look up several variables' latest values
stayed near chance in the prototype). Programs end with blank lines up to a fixed length, and a
statement and a trace step are both 4 tokens, so step i of the trace reads statement i at one
fixed distance in every example: a relative-position lookup, which a tiny model learns in a few
hundred steps. Without the padding the distance depends on the program's length and the model
must count statements: a 0.84M-parameter model trained that way (with and without one variable
per statement) learned the format but stayed at chance after 600 steps on this CPU.
Statements add or subtract 1..`max_k` with `max_k` = 3 by default: with 1..9 a trace value is
uniform over 0..9 given either the previous value or the statement alone, so there is no
first-order signal, and the z1-demo model, which had learned to copy every statement, stayed
at chance on the values (loss flat at 0.43 from step 300 to 690, when the run was stopped);
with 1..3 the next value lies near the previous one and it learns the arithmetic from about
step 300. Answers after several steps stay near uniform (chance level about 12%).
Three kinds of rows, the way Z1 mixes short and long reasoning:
  direct  programs of at most `direct_max_steps` statements, answered at once: `answer: 3`
  trace   the whole trace, then the answer line: `8+3=1-2=9+1=0\\nanswer: 0`
  cut     the trace cut at a random point by `ANSWER_TRIGGER`, then the true answer line. A
          model trained from scratch has never seen the trigger (an instruct model has read
          text like it): these rows teach it to answer right after the trigger.
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
# Tokens per statement: `;` `x` `+=` `7` in the program, `+` `7` `=` `0` in the trace. Programs
# are padded with one blank line per token of a missing statement, so every program has the
# same length and statement i sits at the same distance from trace step i in every example.
PAD_PER_STEP = 4


@dataclasses.dataclass(frozen=True)
class ChainTask:
  min_steps: int = 1
  max_steps: int = 8
  direct_max_steps: int = 2  # programs this short are answered without a trace
  cut_fraction: float = 0.3  # of all rows: trace cut by the trigger, then the true answer
  max_k: int = 3  # statements +1..+max_k and -1..-max_k

  def __post_init__(self):
    if not 1 <= self.min_steps <= self.direct_max_steps < self.max_steps:
      raise ValueError(f"{self}: need 1 <= min_steps <= direct_max_steps < max_steps")
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
    return (self.max_steps - self.direct_max_steps) / span


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
    parts.append(f"{'+' if k > 0 else '-'}{abs(k)}={x}")
  return "".join(parts)


def answer_line(answer: int) -> str:
  return f"{ANSWER_PREFIX}{answer}"


def extract_answer(text: str) -> int | None:
  """The last `answer: N` in a generation (after the trigger, for a cut row), else None."""
  found = _ANSWER.findall(text)
  return int(found[-1]) if found else None


def make_row(rng: np.random.Generator, task: ChainTask) -> dict:
  steps = int(rng.integers(task.min_steps, task.max_steps + 1))
  start = int(rng.integers(0, MODULUS))
  ops = [int(k) * (1 if rng.random() < 0.5 else -1)
         for k in rng.integers(1, task.max_k + 1, steps)]
  question = program_text(start, ops, task.max_steps)
  answer = run_program(question)
  if steps <= task.direct_max_steps:
    kind, response = "direct", answer_line(answer)
  else:
    trace = trace_text(start, ops)
    if rng.random() < task.cut_fraction / task.hard_fraction:
      cut = int(rng.integers(0, len(trace)))  # any point: a budget ends mid-step too
      kind, response = "cut", trace[:cut] + ANSWER_TRIGGER + answer_line(answer)
    else:
      kind, response = "trace", f"{trace}\n{answer_line(answer)}"
  return {"question": question, "response": response, "answer": answer, "steps": steps,
          "kind": kind}


def generate(n: int, task: ChainTask = ChainTask(), seed: int = 0,
             exclude: set[str] | frozenset[str] = frozenset()) -> list[dict]:
  """`n` rows, deterministic in `seed`; questions in `exclude` (e.g. training) are skipped."""
  rng = np.random.default_rng(seed)
  rows: list[dict] = []
  while len(rows) < n:
    row = make_row(rng, task)
    if row["question"] not in exclude:
      rows.append(row)
  return rows


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
