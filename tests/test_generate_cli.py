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
  # (thinking_tokens counts the tokens before the trigger)
  assert row["hit_budget"] and row["thinking_tokens"] == 2 and row["answer_tokens"] == 3
  assert row["finish_reason"] == "length"
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
    (["--prompt-ids", "1,999"], "prompt 0: prompt_ids: id 999 is outside"),
    (["--prompt-ids", "1,2", "--temperature", "1e-300"], "--temperature/--top-k/--top-p: "
     "temperature=1e-300"),
    (["--prompt-ids", "1,2", "--mode", "s1", "--thinking-budget", "8", "--answer-tokens", "2",
      "--trigger-ids", "5,6", "--min-thinking", "4"], "min_thinking needs wait ids"),
    (["--prompt-ids", "1,2", "--mode", "s1", "--thinking-budget", "8", "--answer-tokens", "2",
      "--trigger-ids", "5,6", "--wait-ids", "400", "--min-thinking", "4"],
     "wait_ids: id 400 is outside"),
    (["--prompt-ids", "1,2", "--min-thinking", "4"], "--min-thinking applies with --mode s1"),
    (["--prompt-ids", "1,2", "--out", "x.jsonl"], "go together"),
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


def test_generate_prompts_file_equals_the_python_api(hf_checkpoint, tmp_path):
  from z1_jax.infer.engine import Engine, Request
  _, path = hf_checkpoint("untied-gqa4-theta")
  rows = [{"id": "a", "prompt_ids": [3, 4, 5]},
          {"prompt_ids": [7], "thinking_budget": 12, "answer_tokens": 3},
          {"id": 7, "prompt_ids": [9, 10, 11, 12], "max_new_tokens": 5, "temperature": 0.8,
           "seed": 4}]
  req = tmp_path / "req.jsonl"
  req.write_text("".join(json.dumps(r) + "\n" for r in rows))
  out = tmp_path / "out.jsonl"
  argv = ["generate", "--hf", str(path), "--prompts", str(req), "--out", str(out),
          "--thinking-budget", "9", "--answer-tokens", "4", "--trigger-ids", "5,6,7",
          "--eos-ids", "281", "--batch-size", "2", "--no-progress"]
  assert main(argv) == 0
  got = [json.loads(line) for line in out.read_text().splitlines()]
  assert [g["id"] for g in got] == ["a", 1, 7]
  engine = Engine(z1_jax.load_hf(path), slots=2, max_seq_len=64, eos_ids=[281],
                  trigger_ids=[5, 6, 7])
  ref = engine.run([Request("a", [3, 4, 5], thinking_budget=9, answer_tokens=4, row_id=0),
                    Request(1, [7], thinking_budget=12, answer_tokens=3, row_id=1),
                    Request(7, [9, 10, 11, 12], max_new_tokens=5, temperature=0.8, seed=4,
                            row_id=2)])
  for g, r in zip(got, ref):
    assert (g["tokens"], g["thinking_tokens"], g["hit_budget"], g["answer_tokens"],
            g["finish_reason"]) == (r.tokens, r.thinking_tokens, r.hit_budget,
                                    r.answer_tokens, r.finish_reason)
  assert main(argv) == 2  # the output exists: refused without --overwrite
  assert main(argv + ["--overwrite"]) == 0


@pytest.mark.parametrize("line, message", [
    ('{"prompt_ids": [1, 2], "colour": 1}', "line 2: unknown field(s) colour"),
    ('{"prompt_ids": [1, 999]}', "request id 1: prompt_ids: id 999 is outside"),
    ('{"prompt_ids": [1], "thinking_budget": 2, "answer_tokens": 2}',
     "thinking_budget=2 must exceed the trigger length"),
    ('{"prompt": "hi"}', "line 2: `prompt` text needs a tokenizer"),
    ('not json', "line 2 is not JSON"),
])
def test_generate_prompts_file_bad_rows_exit_2_before_loading(hf_checkpoint, tmp_path, capsys,
                                                              line, message):
  _, path = hf_checkpoint("untied-gqa4-theta")
  req = tmp_path / "req.jsonl"
  req.write_text('{"prompt_ids": [3]}\n' + line + "\n")
  assert main(["generate", "--hf", str(path), "--prompts", str(req), "--out",
               str(tmp_path / "o.jsonl"), "--trigger-ids", "5,6,7", "--max-new-tokens",
               "3"]) == 2
  assert message in capsys.readouterr().err
  assert not (tmp_path / "o.jsonl").exists()


def test_generate_reads_a_file_uri_checkpoint(hf_checkpoint, tmp_path, capsys):
  from z1_jax.checkpoint.orbax_io import save_params
  _, path = hf_checkpoint("untied-gqa4-theta")
  save_params(z1_jax.load_hf(path), tmp_path / "ck")
  argv = ["--prompt-ids", "3,4,5", "--max-new-tokens", "6", "--eos-ids", "281", "--json"]
  assert main(["generate", "--ckpt", f"file://{tmp_path / 'ck'}", *argv]) == 0
  assert main(["generate", "--hf", str(path), *argv]) == 0
  from_uri, from_hf = _rows(capsys)
  assert from_uri["tokens"] == from_hf["tokens"]


def test_generate_refuses_an_fsdp_decode_mesh(hf_checkpoint, tmp_path, capsys):
  _, path = hf_checkpoint("untied-gqa4-theta")
  assert main(["generate", "--hf", str(path), "--prompt-ids", "3,4", "--max-new-tokens", "2",
               "--mesh", "2,2,2"]) == 2
  err = capsys.readouterr().err
  assert "--mesh 2,2,2: decoding with fsdp > 1 would all-gather every weight" in err
  assert "4,1,2 or 2,1,4" in err


def test_decoding_dtype_is_bfloat16_on_accelerators_and_float32_on_cpu(monkeypatch):
  import jax

  from z1_jax.infer.load import decode_dtype
  assert decode_dtype(None) == "float32" and decode_dtype("bfloat16") == "bfloat16"
  for backend in ("tpu", "gpu"):
    monkeypatch.setattr(jax, "default_backend", lambda b=backend: b)
    assert decode_dtype(None) == "bfloat16" and decode_dtype("float32") == "float32"
