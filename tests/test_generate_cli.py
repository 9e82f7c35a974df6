"""`z1 generate`: ids in and JSON out, text with a tokenizer, and bad invocations."""

import json

import pytest

import z1_jax
from z1_jax.cli import main


def _rows(capsys):
  return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_generate_ids_json_equals_python_api(hf_checkpoint, capsys):
  _, path = hf_checkpoint("untied-gqa4-theta")
  assert main(["generate", "--hf", str(path), "--prompt-ids", "3,4,5", "--prompt-ids", "7",
               "--thinking-budget", "10", "--answer-tokens", "4", "--trigger-ids", "5,6,7",
               "--eos-ids", "281", "--json"]) == 0
  rows = _rows(capsys)
  ref = z1_jax.generate(z1_jax.load_hf(path), [[3, 4, 5], [7]], thinking_budget=10,
                        answer_tokens=4, trigger_ids=[5, 6, 7], eos_ids=[281])
  assert [r["tokens"] for r in rows] == [g.tokens for g in ref]
  assert [r["hit_budget"] for r in rows] == [g.hit_budget for g in ref]
  assert all(r["text"] is None for r in rows)  # no tokenizer in the directory: ids only


def test_generate_text_with_the_default_trigger(tmp_path, capsys):
  from z1_jax.data.tokenizer import load_tokenizer
  model = z1_jax.create_model(z1_jax.get_preset("tiny"))
  z1_jax.save_hf(model, tmp_path / "m", dtype="float32", tokenizer=load_tokenizer())
  assert main(["generate", "--hf", str(tmp_path / "m"), "--prompt", "def add(a, b):",
               "--thinking-budget", "14", "--answer-tokens", "3", "--json"]) == 0
  (row,) = _rows(capsys)
  # a random model does not end by itself: window of 14 = 2 tokens + the 12-token trigger
  assert row["hit_budget"] and row["thinking_tokens"] == 14 and row["answer_tokens"] == 3
  assert row["tokens"][2:14] == [271, 40, 916, 60565, 432, 11, 279, 1590, 4226, 1265, 387, 1447]
  assert "I overthought it, the final answer should be:" in row["text"]


@pytest.mark.parametrize("argv, message", [
    (["--prompt-ids", "1,2", "--thinking-budget", "20"], "go together"),
    (["--prompt-ids", "1,2", "--max-new-tokens", "4", "--thinking-budget", "20",
      "--answer-tokens", "3"], "exclude each other"),
    (["--prompt", "hello"], "--prompt needs a tokenizer"),
    (["--prompt-ids", "1,2", "--trigger-ids", "1"], "--trigger-ids applies with"),
    (["--prompt-ids", "1,2", "--thinking-budget", "3", "--answer-tokens", "2",
      "--trigger-ids", "5,6,7"], "must exceed the trigger length"),
    (["--prompt-ids", "1,999"], "prompt 0: id 999 is outside"),
])
def test_generate_bad_invocations_exit_2(hf_checkpoint, capsys, argv, message):
  _, path = hf_checkpoint("untied-gqa4-theta")
  assert main(["generate", "--hf", str(path), *argv]) == 2
  err = capsys.readouterr().err
  assert message in err and "Traceback" not in err


@pytest.mark.parametrize("argv", [["--top-p", "1.5"], ["--temperature", "-1"],
                                  ["--prompt-ids", "1,x"]])
def test_generate_bad_values_refused_while_parsing(capsys, argv):
  with pytest.raises(SystemExit) as e:
    main(["generate", "--ckpt", "/nonexistent", *(argv if "--prompt-ids" in argv else
                                                   ["--prompt-ids", "1", *argv])])
  assert e.value.code == 2
  assert argv[-1] in capsys.readouterr().err


def test_generate_from_a_scanned_orbax_checkpoint(hf_checkpoint, tmp_path, capsys):
  from z1_jax.checkpoint.orbax_io import save_params
  _, path = hf_checkpoint("untied-gqa4-theta")
  save_params(z1_jax.load_hf(path, scan_layers=True), tmp_path / "ck")
  argv = ["--prompt-ids", "3,4,5", "--max-new-tokens", "6", "--eos-ids", "281", "--json"]
  assert main(["generate", "--ckpt", str(tmp_path / "ck"), *argv]) == 0
  assert main(["generate", "--hf", str(path), *argv]) == 0
  from_ckpt, from_hf = _rows(capsys)
  assert from_ckpt["tokens"] == from_hf["tokens"] and len(from_hf["tokens"]) == 6
