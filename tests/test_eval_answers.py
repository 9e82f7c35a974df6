"""Answer extraction and math / multiple-choice scoring on real benchmark data."""

import pytest

from z1_jax.eval.answers import score_math, score_mc
from z1_jax.eval.benchmarks import load_benchmark
from z1_jax.eval.extract import last_boxed, last_code_block, mc_letter
from z1_jax.eval.score import pass_at_k


def test_last_boxed_handles_nesting_and_takes_the_last():
  assert last_boxed(r"first \boxed{1} then \boxed{\frac{1}{2}}") == r"\frac{1}{2}"
  assert last_boxed(r"\boxed{ {a}+{b} }") == "{a}+{b}"
  assert last_boxed("no box here") is None
  assert last_boxed(r"\boxed{unclosed") is None


@pytest.mark.parametrize("text, letter", [
    (r"so the answer is \boxed{C}.", "C"),
    (r"\boxed{\text{B}}", "B"),
    (r"\boxed{(d)}", "D"),
    (r"\boxed{A} hmm, wait, no: \boxed{B}", "B"),
    ("Answer: C", "C"),
    ("answer: b", None),  # a lower-case letter after "answer" is a word ("answer: a lot"), not A-D
    ("The answer is (A).", "A"),
    (r"I think \boxed{42} ... Answer: D", "D"),
    ("I cannot decide between the options.", None),
    ("", None),
])
def test_mc_letter_extraction(text, letter):
  assert mc_letter(text) == letter


def test_mc_scoring():
  assert score_mc("B", r"\boxed{B}") == (True, "B", None)
  assert score_mc("B", "Answer: A") == (False, "A", "wrong_answer")
  assert score_mc("B", "no idea") == (False, None, "no_answer")


def test_code_block_extraction():
  text = "plan\n```python\ndef a(): pass\n```\nbetter:\n```python\ndef b(): return 1\n```\n"
  assert last_code_block(text) == "def b(): return 1\n"
  assert last_code_block("```bash\nls\n```") is None
  assert last_code_block("no code") is None


@pytest.mark.parametrize("benchmark, count", [("aime2024", 30), ("aime2025", 15),
                                              ("math500-mmath", 311)])
def test_offline_math_gold_answers_verify_against_themselves(benchmark, count):
  problems = load_benchmark(benchmark)
  assert len(problems) == count and all(p.kind == "math" for p in problems)
  sample = problems if count <= 30 else problems[::7]
  for p in sample:
    ok, extracted, error = score_math(p.answer, f"Reasoning...\n\\boxed{{{p.answer}}}")
    assert ok, (p.id, p.answer, extracted, error)


def test_math_rejects_wrong_and_missing_answers():
  problems = load_benchmark("aime2024")
  for p in problems[:10]:
    wrong = str(int(p.answer) + 1)
    assert score_math(p.answer, f"\\boxed{{{wrong}}}")[0] is False
    assert score_math(p.answer, f"the answer is {p.answer}") == (False, None, "no_answer")
  # equivalent forms, and only the last box counts
  assert score_math(r"\frac{1}{2}", r"\boxed{0.5}")[0]
  assert score_math(r"\frac{1}{2}", r"\boxed{\dfrac12}")[0]
  assert score_math("3", r"\boxed{3} no wait \boxed{4}")[0] is False
  assert score_math("4", r"\boxed{3} no wait \boxed{4}")[0] is True


def test_pass_at_k_estimator():
  assert pass_at_k(1, 1, 1) == 1.0 and pass_at_k(1, 0, 1) == 0.0
  assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
  assert pass_at_k(10, 3, 5) == pytest.approx(1 - (7 * 6 * 5 * 4 * 3) / (10 * 9 * 8 * 7 * 6))
  assert pass_at_k(5, 4, 2) == 1.0
