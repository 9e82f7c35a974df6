"""The demo's chain task and tokenizer: answers by execution, the Z1 schema, trigger rows, and a
tokenizer that renders the Z1 format and places the trigger the same alone and in a row."""

import collections
import json

import pytest

from z1_jax.data.format import ANSWER_TRIGGER, render_prompt, render_target
from z1_jax.demo.task import (START_MAX, START_MIN, ChainTask, chance_level, count_tokens,
                              distinct_programs, extract_answer, generate, held_out,
                              long_trajectory, program_text, run_program, trace_text)


def test_program_trace_and_answer_by_execution():
  q = program_text(3, [7, -2, 5], max_steps=4)
  assert q == "x=3;x+=7;x-=2;x+=5;print(x%10)\n\n\n\n"  # padded to a 4-statement program
  assert run_program(q) == 3  # 3+7-2+5 = 13
  assert trace_text(3, [7, -2, 5]) == "3+7=0-2=8+5=3"
  assert long_trajectory(58, [1, -1], max_steps=3) == "58+1=9-1=8+0=8\n58+1=9-1=8+0=8"
  assert run_program(program_text(1, [-9, -9], max_steps=2)) == 3  # Python's % stays in 0..9


def test_rows_schema_kinds_and_answers():
  task = ChainTask(direct_max_steps=2)  # the default answers none at once; the option still works
  rows = generate(3000, task, seed=1)
  kinds = collections.Counter(r["kind"] for r in rows)
  assert abs(kinds["direct"] / 3000 - 1 / 3) < 0.03 and abs(kinds["cut"] / 3000 - 0.3) < 0.03
  for r in rows:
    assert set(r) == {"question", "response", "answer", "steps", "kind"}
    json.dumps(r)
    ops = [int(s[3:]) * (1 if s[1] == "+" else -1) for s in r["question"].split(";")[1:-1]]
    start = int(r["question"].split(";")[0][2:])
    assert len(ops) == r["steps"] and task.min_steps <= r["steps"] <= task.max_steps
    assert all(1 <= abs(k) <= task.max_k for k in ops) and START_MIN <= start <= START_MAX
    assert r["answer"] == run_program(r["question"]) == (start + sum(ops)) % 10
    trace = trace_text(start, ops)
    assert extract_answer(r["response"]) == r["answer"]
    if r["kind"] == "direct":
      assert r["steps"] <= task.direct_max_steps and r["response"] == f"answer: {r['answer']}"
    elif r["kind"] == "trace":
      assert r["response"] == f"{trace}\nanswer: {r['answer']}"
    else:  # cut: a prefix of the true trace, the trigger, the true answer
      before, after = r["response"].split(ANSWER_TRIGGER)
      assert trace.startswith(before) and len(before) < len(trace)
      assert after == f"answer: {r['answer']}"
  assert generate(50, task, seed=1) == rows[:50]  # deterministic in the seed
  held = generate(200, task, seed=2, exclude={r["question"] for r in rows})
  assert not {r["question"] for r in held} & {r["question"] for r in rows}


def test_extract_answer_and_chance_level():
  assert extract_answer("3+7=0-" + ANSWER_TRIGGER + "answer: 7") == 7
  assert extract_answer("answer: 1 ... answer: 4") == 4
  assert extract_answer("3+7=0-2=8") is None
  assert chance_level([1, 1, 2, 3]) == 0.5
  answers = [r["answer"] for r in generate(2000, seed=3)]
  assert 0.1 <= chance_level(answers) < 0.14  # + and - keep answers near uniform over 0..9
  with pytest.raises(ValueError):
    ChainTask(direct_max_steps=2, cut_fraction=0.9)  # more cut rows than traced programs


def test_tokenizer_renders_z1_format_and_the_trigger(tmp_path):
  from z1_jax.data.tokenizer import load_tokenizer
  from z1_jax.demo.tokenizer import save_tokenizer, train_tokenizer
  rows = generate(400, ChainTask(direct_max_steps=2), seed=4)
  texts = [render_prompt(r["question"]) + render_target(r["response"]) for r in rows]
  tok = load_tokenizer(str(save_tokenizer(train_tokenizer(texts, vocab_size=320),
                                          tmp_path / "tok")))
  assert len(tok) <= 320
  for special in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):
    assert len(tok(special, add_special_tokens=False)["input_ids"]) == 1
  assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
  for text in texts[:50]:
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
  # statement i and trace step i are 4 tokens each and every program has the same length
  assert len(tok(";x+=7", add_special_tokens=False)["input_ids"]) == 4
  assert len(tok("+7=0", add_special_tokens=False)["input_ids"]) == 4
  assert len({len(tok(r["question"])["input_ids"]) for r in rows}) == 1
  trigger = tok(ANSWER_TRIGGER, add_special_tokens=False)["input_ids"]
  for r in (r for r in rows if r["kind"] == "cut"):
    ids = tok(r["response"], add_special_tokens=False)["input_ids"]
    before = tok(r["response"].split(ANSWER_TRIGGER)[0], add_special_tokens=False)["input_ids"]
    assert ids[len(before):len(before) + len(trigger)] == trigger
  counted = count_tokens(rows[:5], tok)
  assert all(r["token_num_demo"] == len(tok(r["response"])["input_ids"]) for r in counted)


def test_long_recipe_same_programs_long_trajectory_for_every_program():
  task = ChainTask()
  z1, long = generate(600, task, seed=5), generate(600, task, seed=5, recipe="long")
  assert [r["question"] for r in z1] == [r["question"] for r in long]  # same programs
  assert {r["kind"] for r in long} == {"trace", "cut"}  # no program is answered at once
  for r in long:
    ops = [int(s[3:]) * (1 if s[1] == "+" else -1) for s in r["question"].split(";")[1:-1]]
    start = int(r["question"].split(";")[0][2:])
    trajectory = long_trajectory(start, ops, task.max_steps)
    trace = trace_text(start, ops)
    # the trace over every slot of the page (a slot without a statement is `+0`), then the
    # re-check pass: the same again; one length for every program
    page = trace + "".join(f"+0={trace[-1]}" for _ in range(task.max_steps - len(ops)))
    assert trajectory == f"{page}\n{page}"
    assert len(trajectory) == len(long_trajectory(10, [1] * task.max_steps, task.max_steps))
    if r["kind"] == "trace":
      assert r["response"] == f"{trajectory}\nanswer: {r['answer']}"
    else:
      before, after = r["response"].split(ANSWER_TRIGGER)
      assert trajectory.startswith(before) and after == f"answer: {r['answer']}"
  with pytest.raises(ValueError, match="recipe"):
    generate(1, task, recipe="short")


def test_held_out_has_every_statement_count_equally_and_is_disjoint():
  task = ChainTask()
  rows = held_out(40, task, seed=1)
  counts = collections.Counter(r["steps"] for r in rows)
  assert counts == {s: 40 for s in range(task.min_steps, task.max_steps + 1)}
  assert len({r["question"] for r in rows}) == len(rows)
  assert all(r["answer"] == run_program(r["question"]) for r in rows)
  # easy programs are numerous enough to hold 40 out and still train on most of them
  assert distinct_programs(task, 1) == 180 == len({
      r["question"] for r in generate(20000, task, seed=0) if r["steps"] == 1} | {
      r["question"] for r in held_out(90, task, seed=3) if r["steps"] == 1})
  train = generate(3000, task, seed=0, exclude={r["question"] for r in rows})
  assert not {r["question"] for r in train} & {r["question"] for r in rows}
  assert sum(r["steps"] == 1 for r in train) > 400  # 1-statement programs still train
