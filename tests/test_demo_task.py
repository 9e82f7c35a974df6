"""The demo's chain task and tokenizer: answers by execution, the Z1 schema, trigger rows, and a
tokenizer that renders the Z1 format and places the trigger the same alone and in a row."""

import collections
import json

import pytest

from z1_jax.data.format import ANSWER_TRIGGER, render_prompt, render_target
from z1_jax.demo.task import (ChainTask, chance_level, count_tokens, extract_answer, generate,
                              program_text, run_program, trace_text)


def test_program_trace_and_answer_by_execution():
  q = program_text(3, [7, -2, 5], max_steps=4)
  assert q == "x=3;x+=7;x-=2;x+=5;print(x%10)\n\n\n\n"  # padded to a 4-statement program
  assert run_program(q) == 3  # 3+7-2+5 = 13
  assert trace_text(3, [7, -2, 5]) == "3+7=0-2=8+5=3"
  assert run_program(program_text(1, [-9, -9], max_steps=2)) == 3  # Python's % stays in 0..9


def test_rows_schema_kinds_and_answers():
  task = ChainTask()
  rows = generate(3000, task, seed=1)
  kinds = collections.Counter(r["kind"] for r in rows)
  assert abs(kinds["direct"] / 3000 - 0.25) < 0.03 and abs(kinds["cut"] / 3000 - 0.3) < 0.03
  for r in rows:
    assert set(r) == {"question", "response", "answer", "steps", "kind"}
    json.dumps(r)
    ops = [int(s[3:]) * (1 if s[1] == "+" else -1) for s in r["question"].split(";")[1:-1]]
    start = int(r["question"].split(";")[0][2:])
    assert len(ops) == r["steps"] and task.min_steps <= r["steps"] <= task.max_steps
    assert all(1 <= abs(k) <= task.max_k for k in ops)
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
  held_out = generate(200, task, seed=2, exclude={r["question"] for r in rows})
  assert not {r["question"] for r in held_out} & {r["question"] for r in rows}


def test_extract_answer_and_chance_level():
  assert extract_answer("3+7=0-" + ANSWER_TRIGGER + "answer: 7") == 7
  assert extract_answer("answer: 1 ... answer: 4") == 4
  assert extract_answer("3+7=0-2=8") is None
  assert chance_level([1, 1, 2, 3]) == 0.5
  answers = [r["answer"] for r in generate(2000, seed=3)]
  assert 0.1 <= chance_level(answers) < 0.14  # + and - keep answers near uniform over 0..9
  with pytest.raises(ValueError):
    ChainTask(cut_fraction=0.9)


def test_tokenizer_renders_z1_format_and_the_trigger(tmp_path):
  from z1_jax.data.tokenizer import load_tokenizer
  from z1_jax.demo.tokenizer import save_tokenizer, train_tokenizer
  rows = generate(400, seed=4)
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
