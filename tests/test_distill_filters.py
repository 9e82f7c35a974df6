"""`z1 distill`'s parts that need no model (seconds): the repetition detector on crafted texts,
malformed answers, the filters' order, decontamination on a planted HumanEval prompt and on a
local benchmark file, the sandboxed checks, the config's [decode] pass-through, the problem
reader, the journal and the report's arithmetic."""

import dataclasses
import json
import re
import textwrap

import pytest

from z1_jax.distill import config as config_lib
from z1_jax.distill import filters
from z1_jax.distill.decontam import Index, build_index, decontaminate
from z1_jax.distill.problems import Problem, load_problems

# -- the repetition detector -------------------------------------------------------------------


@pytest.fixture(scope="module")
def qwen():
  from z1_jax.data.tokenizer import load_tokenizer
  return load_tokenizer()


LOOP = ("Let me compute the sum first. " + "Wait, let me check that again: 3 + 4 = 7, so the "
        "total is 7. " * 40 + "So the answer is 7.")
REASONING = textwrap.dedent("""\
    We need the number of ways to climb n stairs taking 1 or 2 steps at a time. Let f(n) be that
    count. The last move is either a single step from n-1 or a double step from n-2, so
    f(n) = f(n-1) + f(n-2), with f(1) = 1 and f(2) = 2. That is the Fibonacci sequence shifted
    by one. Let me check small cases: for n = 3 the ways are 1+1+1, 1+2 and 2+1, three in all,
    and f(3) = f(2) + f(1) = 3, which matches. For n = 4: 1+1+1+1, 1+1+2, 1+2+1, 2+1+1, 2+2,
    five ways, and f(4) = 3 + 2 = 5. Good. Recursion would repeat work, so iterate with two
    variables, keeping only the last two values; that is O(n) time and O(1) memory.
    Edge cases: n = 0 should give 1 (the empty climb) if the caller allows it; negative n is
    invalid, so raise a ValueError. Now the code.
    """)
CODE = textwrap.dedent("""\
    def climb(n: int) -> int:
        if n < 0:
            raise ValueError("n must be >= 0")
        a, b = 1, 1
        for _ in range(n):
            a, b = b, a + b
        return a
    """)


def test_repeated_ngram_share_counts_ngrams_seen_before():
  # 7 trigrams, 3 distinct: 4 of them occurred earlier
  assert filters.repeated_ngram_share([1, 2, 3, 1, 2, 3, 1, 2, 3], 3) == pytest.approx(4 / 7)
  assert filters.repeated_ngram_share([1, 2, 3, 4, 5], 3) == 0.0
  assert filters.repeated_ngram_share([1, 2], 3) == 0.0  # shorter than n


def test_repetition_detector_on_crafted_texts(qwen):
  share = lambda text: filters.repeated_ngram_share(
      qwen.encode(text, add_special_tokens=False), 20)
  assert share(LOOP) > 0.9  # a trajectory stuck in a loop
  assert share(REASONING) == 0.0  # reasoning that reuses phrases ("f(n)", "ways") but moves on
  # the code drafted while thinking, then written out again as the final answer: repeated, but
  # well under the default threshold
  drafted = REASONING + "\n```python\n" + CODE + "```\nFinal answer:\n```python\n" + CODE + "```"
  assert 0.05 < share(drafted) < config_lib.FiltersSection().repetition_max_share
  f = config_lib.FiltersSection()
  ids = qwen.encode(LOOP, add_special_tokens=False)
  assert filters.fate(LOOP, ids, False, f)[0] == "repetition"
  ids = qwen.encode(drafted, add_special_tokens=False)
  assert filters.fate(drafted, ids, False, f)[0] is None


def test_malformed_answers_and_the_filters_order():
  f = config_lib.FiltersSection(answer_pattern=r"answer: (\d+)")
  assert filters.malformed_reason("12+1=3\nanswer: 3", f.answer_pattern) is None
  assert filters.malformed_reason("12+1=3", f.answer_pattern) == \
      "no match of filters.answer_pattern"
  assert filters.malformed_reason("x\ufffd answer: 3", f.answer_pattern) == \
      "replacement character"
  assert filters.malformed_reason("answer: 3<|im_start|>user", "").startswith("control token")
  ok = "12+1=3\nanswer: 3"
  assert filters.fate(ok, [1, 2, 3], False, f) == (None, 0.0)
  assert filters.fate(ok, [1, 2, 3], True, f)[0] == "length_cap"  # counted first
  assert filters.fate(ok, [1, 2, 3], True, dataclasses.replace(f, on_length_cap="keep"))[0] \
      is None
  assert filters.fate(" \n", [1], False, f)[0] == "empty"
  assert filters.fate("12+1=3", [1], False, f)[0] == "malformed"
  assert filters.extract_answer("answer: 3 ... answer: 4 ", f.answer_pattern) == "4"
  assert filters.extract_answer("none here", f.answer_pattern) is None


# -- decontamination -----------------------------------------------------------------------------


def _humaneval0():
  from z1_jax.eval.benchmarks import load_benchmark
  return load_benchmark("humaneval")[0]


def test_decontamination_finds_a_planted_humaneval_prompt():
  index = build_index(["humaneval"], {}, 13)
  he = _humaneval0()
  # the prompt re-wrapped (other indentation and line breaks, a question around it)
  planted = "Can you finish this for me?\n" + " ".join(he.tests["prompt"].split()) + "\nThanks"
  problems = [Problem(0, "clean", "x=58;x+=1;x-=1;print(x%10)", "s"),
              Problem(1, "planted", planted, "s"),
              Problem(2, "prose", REASONING, "s")]
  matches = decontaminate(problems, index)
  assert [(m["problem_id"], m["benchmark"], m["benchmark_id"]) for m in matches] == [
      ("planted", "humaneval", "HumanEval/0")]
  assert matches[0]["ngram"].startswith("from typing import list def has close elements")
  assert len(matches[0]["ngram"].split()) == 13
  assert index.loaded == {"humaneval": 164} and index.skipped == {}


def test_hub_only_benchmark_from_a_local_file_or_skipped_with_a_message(tmp_path, capsys,
                                                                       monkeypatch):
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  mbpp = tmp_path / "mbpp.jsonl"
  rows = [{"task_id": 11, "text": "Write a python function to remove first and last occurrence "
           "of a given character from the string.", "code": "", "test_list": []},
          {"task_id": 12, "text": "Write a function to sort a given matrix in ascending order "
           "according to the sum of its rows.", "code": "", "test_list": []}]
  mbpp.write_text("".join(json.dumps(r) + "\n" for r in rows))
  index = build_index(["mbpp", "gpqa-diamond"], {"mbpp": str(mbpp)}, 8)
  assert index.loaded == {"mbpp": 2}
  assert "Idavidrein/gpqa" in index.skipped["gpqa-diamond"]
  err = capsys.readouterr().err
  assert "decontamination against gpqa-diamond skipped" in err
  assert "decontaminate.files.gpqa-diamond=PATH" in err
  found = Index.matches(index, "Please write a function to sort a given matrix in ascending "
                               "order according to the sum of its rows, fast.")
  assert [(m["benchmark"], m["benchmark_id"]) for m in found] == [("mbpp", "12")]


def test_a_benchmarks_template_is_not_indexed():
  index = Index(5)
  template = "read the inputs from stdin solve the problem and write the answer"
  index.add("bench", [(str(i), f"problem {i} about topic{i} is here. {template}")
                      for i in range(10)])
  assert index.matches(f"my own task. {template}") == []  # in every problem: the template
  assert [m["benchmark_id"] for m in index.matches("x problem 3 about topic3 is here")] == ["3"]


# -- sandboxed checks ------------------------------------------------------------------------------


def test_checks_run_in_the_sandbox():
  from z1_jax.distill.checks import Checker
  out = Checker(config_lib.FiltersSection(check="output", answer_pattern=r"answer: (\d+)"),
                workers=2)
  try:
    program = Problem(0, "p", "x=58;x+=1;x+=1;print(x%10)", "s",
                      program="x=58;x+=1;x+=1;print(x%10)")
    broken = Problem(1, "b", "q", "s", program="print(1/0)")
    assert out.submit(program, "58+1=9+1=0\nanswer: 0").result() == (True, None)
    assert out.submit(program, "answer: 7").result() == (False, "wrong_answer")
    assert out.submit(program, "no answer").result() == (False, "no_answer")
    assert out.submit(broken, "answer: 1").result() == (False, "program_runtime_error")
  finally:
    out.close()
  he = _humaneval0()
  tests = Checker(config_lib.FiltersSection(check="tests"), workers=2)
  try:
    p = Problem(0, "he", "q", "s", tests=he.tests)
    right = "Here it is:\n```python\n" + he.tests["prompt"] + he.tests["canonical_solution"] + \
        "```"
    assert tests.submit(p, right).result() == (True, None)
    assert tests.submit(p, "```python\ndef has_close_elements(n, t):\n    return True\n```"
                        ).result() == (False, "wrong_answer")
    assert tests.submit(Problem(1, "none", "q", "s"), "x").result() == (None, None)
  finally:
    tests.close()


# -- config ------------------------------------------------------------------------------------


def test_config_refuses_bad_keys_and_types_before_any_work(tmp_path):
  path = tmp_path / "c.toml"
  for text, message in [
      ("[decode]\nmode = 's1'\n", "decode.mode applies with a thinking budget only"),
      ("[decode]\nrow_ids = [1]\n", "decode.row_ids is set by distill itself"),
      ("[decode]\nnope = 1\n", "unknown key decode.nope"),
      ("[decode]\ntop_k = 'x'\n", "decode.top_k = 'x': expected int | None"),
      ("[filters]\ncheck = 'output'\n", "needs filters.answer_pattern"),
      ("[filters]\ncheck = 'tests'\n", "needs problems.tests_column"),
      ("[filters]\non_fail = 'split'\n", "needs a check"),
      ("[generation]\nsamples_per_problem = 2\n", "set decode.temperature > 0"),
      ("[generation]\nmax_tokens = 0\n", "generation.max_tokens = 0: expected a value > 0"),
      ("[problems]\ntemplate = '{question'\n", "problems.template"),
      ("[decontaminate]\nbenchmarks = ['nope']\n", "unknown ['nope']"),
      ("[nope]\nx = 1\n", "unknown section [nope]")]:
    path.write_text(text)
    with pytest.raises(config_lib.DistillConfigError, match=re.escape(message)):
      config_lib.load_config(str(path))
  with pytest.raises(FileNotFoundError, match="decontaminate.files.mbpp"):
    config_lib.load_config(None, ["decontaminate.files.mbpp=/no/such/file.jsonl"])


def test_decode_table_passes_new_engine_options_through(monkeypatch):
  """A field the engine adds to DecodeOptions later works in [decode] without a change here."""
  from z1_jax.infer import generate

  @dataclasses.dataclass(frozen=True)
  class Extended(generate.DecodeOptions):
    page_size: int | None = None

  monkeypatch.setattr(generate, "DecodeOptions", Extended)
  cfg = config_lib.load_config(None, ["decode.page_size=32", "decode.batch_size=16"])
  opts = cfg.decode_options(row_ids=[3])
  assert isinstance(opts, Extended) and opts.page_size == 32 and opts.batch_size == 16
  assert opts.temperature == 0.7 and list(opts.row_ids) == [3]  # configs/distill.toml's
  assert "batch_size" not in cfg.identity()["decode"]  # how fast, not what: a resume may change it
  assert cfg.identity()["decode"]["page_size"] == 32
  with pytest.raises(config_lib.DistillConfigError, match="decode.page_size = 'x'"):
    config_lib.load_config(None, ["decode.page_size='x'"])


# -- problems --------------------------------------------------------------------------------------


def test_problems_from_jsonl_parquet_and_saved_datasets_with_a_template(tmp_path):
  import datasets
  import pyarrow as pa
  import pyarrow.parquet as pq
  rows = [{"pid": "a", "text": "Add 1 and 2.", "lang": "python"},
          {"pid": "b", "text": "Sort [3, 1].", "lang": "python"}]
  (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet")
  datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
  cfg = config_lib.ProblemsSection(question_column="text", id_column="pid",
                                   template="In {lang}: {text}")
  for name in ("p.jsonl", "p.parquet", "saved"):
    ps = load_problems(str(tmp_path / name), cfg)
    assert [(p.index, p.id, p.question) for p in ps] == [(0, "a", "In python: Add 1 and 2."),
                                                         (1, "b", "In python: Sort [3, 1].")]
    assert ps[0].source == str(tmp_path / name)
  assert len(load_problems(str(tmp_path / "p.jsonl"),
                           dataclasses.replace(cfg, limit=1))) == 1
  (tmp_path / "dup.jsonl").write_text(json.dumps(rows[0]) + "\n" + json.dumps(rows[0]) + "\n")
  with pytest.raises(ValueError, match=r"dup.jsonl: row 1: id 'a' already used"):
    load_problems(str(tmp_path / "dup.jsonl"), cfg)
  with pytest.raises(ValueError, match=r"p.jsonl: row 0: missing column 'question'"):
    load_problems(str(tmp_path / "p.jsonl"), config_lib.ProblemsSection())
  with pytest.raises(ValueError, match=r"names \{nope\}, not a column"):
    load_problems(str(tmp_path / "p.jsonl"), dataclasses.replace(cfg, template="{nope}"))


# -- journal and report ----------------------------------------------------------------------------


def test_journal_drops_a_torn_last_line(tmp_path):
  from z1_jax.distill.run import Journal
  path = tmp_path / "journal.jsonl"
  path.write_text(json.dumps({"batch": 0, "rows": []}) + "\n" + '{"batch": 1, "ro')
  j = Journal(path)
  assert list(j.records) == [0]
  assert path.read_text() == json.dumps({"batch": 0, "rows": []}) + "\n"  # truncated
  j.add({"batch": 1, "rows": []})
  assert list(Journal(path).records) == [0, 1]


def _row(problem, fate, tokens, hit_cap=False, passed=None, error=None):
  return {"id": str(problem), "problem": problem, "sample": 0, "generated": tokens,
          "hit_cap": hit_cap, "token_num": tokens, "repeated_share": 0.0, "fate": fate,
          "passed": passed, "check_error": error}


def test_report_counts_each_filter_and_the_lengths():
  from z1_jax.distill.report import build, markdown
  cfg = config_lib.load_config(None, ["filters.check='output'", "filters.answer_pattern='(x)'",
                                      "filters.on_fail='split'", "output.short_tokens=16",
                                      "output.long_tokens=64"])
  records = [{"batch": 1, "rows": [_row(4, "kept", 100, passed=True),
                                   _row(5, "failed", 30, passed=False, error="wrong_answer"),
                                   _row(6, "repetition", 200)],
              "files": {}, "decode_s": 1.0, "generated_tokens": 330},
             {"batch": 0, "rows": [_row(0, "kept", 10, passed=True),
                                   _row(1, "length_cap", 256, hit_cap=True),
                                   _row(2, "kept", 40, passed=True),
                                   {**_row(3, "prompt_too_long", 0), "token_num": None}],
              "files": {}, "decode_s": 3.0, "generated_tokens": 306}]
  decontam = {"ngram": 13, "loaded": {"humaneval": 164}, "skipped": {"mbpp": "offline"},
              "matches": [{"problem_index": 7, "problem_id": "7", "benchmark": "humaneval",
                           "benchmark_id": "HumanEval/0", "ngram": "a b c"}]}
  r = build(records, decontam, problems=8, cfg=cfg, teacher="t", source="s",
            token_column="token_num_qwen")
  stages = {s["stage"]: (s.get("removed"), s["left"]) for s in r["funnel"]}
  assert stages["problems"] == (None, 8) and stages["decontamination"] == (1, 7)
  assert stages["prompt_too_long"] == (1, 6) and stages["decoded"] == (None, 6)
  assert stages["length_cap"] == (1, 5) and stages["repetition"] == (1, 4)
  assert stages["failed_split"] == (1, 3) and r["kept"] == 3 and r["failed_split"] == 1
  ln = r["lengths"]  # kept: 10, 40, 100
  assert ln["mean"] == 50 and ln["median"] == 40 and (ln["min"], ln["max"]) == (10, 100)
  assert ln["short_share"] == pytest.approx(1 / 3) and ln["long_share"] == pytest.approx(1 / 3)
  # quarter-octave bins from the one holding 10 to the one holding 100
  assert ln["histogram"]["edges"] == [10, 11, 13, 16, 19, 23, 27, 32, 38, 45, 54, 64, 76, 91, 108]
  assert ln["histogram"]["counts"] == [1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]
  assert r["check"] == {"kind": "output", "checked": 4, "passed": 3, "unchecked": 0,
                        "errors": {"wrong_answer": 1}}
  assert r["throughput"]["rows_per_s"] == 1.5 and r["throughput"]["tokens_per_s"] == 159
  assert r["hit_length_cap"] == {"rows": 1, "kept": 0} and r["prompt_too_long"] == [3]
  md = markdown(r)
  assert "Mean (Z1's MTL): 50 tokens" in md and "| failed_split | 1 | 3 rows |" in md
  assert "| 38-44 | 1 |" in md and "| 11-12 |" not in md  # non-empty bins only
  assert "| 7 | humaneval | HumanEval/0 | a b c |" in md and "skipped mbpp: offline" in md
