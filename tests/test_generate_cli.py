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


# -- hostile request files (issue 25): exit 2 naming the line, before the model loads ----------

@pytest.mark.parametrize("line, message", [
    (b'{"prompt_ids": [1], "top_k": 2147483648, "temperature": 1.0}',
     "request id 1: top_k=2147483648: expected an integer in [1, 2**31)"),
    (b'{"prompt_ids": [1], "thinking_budget": 20.0, "answer_tokens": 2}',
     "line 2: thinking_budget=20.0: expected an integer"),
    (b'{"prompt_ids": [1], "id": "caf\xe9"}', "line 2 is not UTF-8 text (byte 31 of the line"),
    (b'{"prompt": "\\ud800"}', "line 2: a string holds a lone surrogate"),
    (b'{"prompt_ids": [1], "seed": ' + b"7" * 4301 + b"}", "line 2 is not JSON"),
    (b'{"prompt_ids": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
     "line 2: the JSON is nested too deeply"),
    (b'{"prompt_ids": [1], "temperature": 1' + b"0" * 400 + b"}",
     "request id 1: temperature=an integer of 401 digits: expected a finite number"),
    (b'{"prompt_ids": [1], "temperature": 1e39}', "that float32 can hold"),
    (b'{"prompt_ids": [1], "seed": 2147483648}', "seed=2147483648: expected an integer in"),
    (b'{"prompt_ids": [1], "thinking_budget": 3000, "answer_tokens": 4}',
     "1 prompt tokens + up to 3004 generated exceed the model's 256 positions"),
    (b'{"prompt_ids": [1], "max_new_tokens": 1000000000000}',
     "up to 1000000000000 generated exceed the model's 256 positions"),
])
def test_hostile_rows_exit_2_naming_the_line_before_loading(hf_checkpoint, tmp_path, capsys,
                                                            monkeypatch, line, message):
  import z1_jax.infer.load
  _, path = hf_checkpoint("untied-gqa4-theta")  # 256 positions
  monkeypatch.setattr(z1_jax.infer.load, "load_for_decoding", _no_loading)
  req = tmp_path / "req.jsonl"
  req.write_bytes(b'{"prompt_ids": [3]}\n' + line + b"\n")
  assert main(["generate", "--hf", str(path), "--prompts", str(req), "--out",
               str(tmp_path / "o.jsonl"), "--trigger-ids", "5,6,7", "--max-new-tokens",
               "3"]) == 2
  err = capsys.readouterr().err
  assert message in err and "Traceback" not in err and len(err) < 600, err
  assert not (tmp_path / "o.jsonl").exists()


def _no_loading(*args, **kwargs):
  raise AssertionError("the model was loaded before the requests were checked")


@pytest.mark.parametrize("argv, message", [
    (["--thinking-budget", "3000", "--answer-tokens", "4", "--trigger-ids", "5,6,7"],
     "exceed the model's 256 positions"),
    (["--thinking-budget", str(10**12), "--answer-tokens", "4", "--trigger-ids", "5,6,7"],
     "exceed the model's 256 positions"),
    (["--max-new-tokens", "300"], "prompt 0: 2 prompt tokens + up to 300 generated exceed"),
    (["--max-new-tokens", "4", "--top-k", str(2**31), "--temperature", "1"],
     "top_k=2147483648: expected an integer in [1, 2**31)"),
    (["--max-new-tokens", "4", "--seed", str(2**31)], "seed=2147483648"),
    (["--max-new-tokens", "4", "--temperature", "1e300"], "that float32 can hold"),
])
def test_generate_past_the_models_context_or_widths_exits_2_before_loading(
    hf_checkpoint, capsys, monkeypatch, argv, message):
  import z1_jax.infer.load
  _, path = hf_checkpoint("untied-gqa4-theta")
  monkeypatch.setattr(z1_jax.infer.load, "load_for_decoding", _no_loading)
  assert main(["generate", "--hf", str(path), "--prompt-ids", "1,2", *argv]) == 2
  err = capsys.readouterr().err
  assert message in err and "Traceback" not in err


def test_a_top_p_below_float32s_range_keeps_the_best_token(hf_checkpoint, capsys):
  """`--top-p 1e-320` is 0 in float32: it sampled token 0 every time; the best token is always
  kept, so it decodes greedily."""
  _, path = hf_checkpoint("untied-gqa4-theta")
  base = ["generate", "--hf", str(path), "--prompt-ids", "3,4,5", "--max-new-tokens", "6",
          "--eos-ids", "281", "--json"]
  assert main(base) == 0
  assert main([*base, "--temperature", "1", "--top-p", "1e-320", "--seed", "3"]) == 0
  greedy, tiny_p = _rows(capsys)
  assert tiny_p["tokens"] == greedy["tokens"] and set(greedy["tokens"]) != {0}


def test_rows_without_a_seed_keep_their_own_streams(hf_checkpoint, tmp_path):
  """Documented: a row without `seed` uses --seed and its own row index, so identical rows
  sample apart, and a rerun repeats them."""
  _, path = hf_checkpoint("untied-gqa4-theta")
  req = tmp_path / "req.jsonl"
  req.write_text('{"prompt_ids": [3, 4]}\n' * 3)
  argv = ["generate", "--hf", str(path), "--prompts", str(req), "--max-new-tokens", "8",
          "--temperature", "1", "--eos-ids", "281", "--no-progress", "--overwrite"]
  outs = []
  for name in ("a.jsonl", "b.jsonl"):
    assert main([*argv, "--out", str(tmp_path / name)]) == 0
    outs.append([json.loads(x)["tokens"] for x in (tmp_path / name).read_text().splitlines()])
  assert outs[0] == outs[1] and len({tuple(t) for t in outs[0]}) == 3


def _hostile_file(data, vocab: int, hostile_share: int = 4) -> bytes:
  from hypothesis import strategies as st

  from json_strategies import request_row
  lines = []
  for _ in range(data.draw(st.integers(1, 3))):
    if data.draw(st.sampled_from([True] + [False] * (3 * hostile_share))):
      lines.append(data.draw(st.binary(max_size=30)).replace(b"\n", b" "))
    else:
      lines.append(json.dumps(request_row(data, vocab, hostile_share)).encode())
  return b"\n".join(lines) + b"\n"


def test_the_row_parser_returns_only_what_the_engine_can_hold(hf_checkpoint, tmp_path,
                                                              monkeypatch):
  """`z1 generate --prompts`' checks before loading (`_plan`) on hostile files: a Z1Error, or
  requests whose every number fits the width the engine stores it in and whose length fits
  the model's positions."""
  from hypothesis import HealthCheck, given, settings, strategies as st

  from z1_jax.cli import build_parser
  from z1_jax.data.tokenizer import offline_tokenizer_dir
  from z1_jax.errors import Z1Error
  from z1_jax.infer.command import _check_flags, _plan
  import z1_jax.infer.generate
  from z1_jax.data.tokenizer import load_tokenizer
  _, path = hf_checkpoint("untied-gqa4-theta")
  req = tmp_path / "req.jsonl"
  tok = load_tokenizer()  # loaded once (the command loads it per run)
  monkeypatch.setattr(z1_jax.infer.generate, "resolve_tokenizer", lambda _: tok)

  @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
  @given(data=st.data())
  def check(data):
    req.write_bytes(_hostile_file(data, 320))
    args = build_parser().parse_args([
        "generate", "--hf", str(path), "--prompts", str(req), "--out", str(tmp_path / "o"),
        "--trigger-ids", "5,6,7", "--eos-ids", "281", "--max-new-tokens", "8",
        "--answer-tokens", "3", "--tokenizer", str(offline_tokenizer_dir())])
    try:
      _check_flags(args)
      _, _, requests, max_len = _plan(args)
    except Z1Error as e:
      assert str(e).startswith(f"--prompts {req}") or str(e).startswith("request id ")
      return
    for r in requests:
      for name in ("top_k", "seed", "thinking_budget", "answer_tokens", "max_new_tokens"):
        value = getattr(r, name)
        assert value is None or (type(value) is int and 0 <= value < 2**31), (name, value)
      assert 0 <= r.temperature < 3.5e38 and (r.top_p is None or 0 < r.top_p <= 1)
      assert all(type(i) is int and 0 <= i < 320 for i in r.prompt_ids)
      stop = r.max_new_tokens or r.thinking_budget + r.answer_tokens
      assert len(r.prompt_ids) + stop <= min(256, max_len)

  check()


def test_hostile_request_files_exit_0_or_2(hf_checkpoint, tmp_path, capsys):
  """End to end, a few files: the command only ever exits 0 (every row decoded) or 2."""
  from hypothesis import HealthCheck, given, settings, strategies as st
  _, path = hf_checkpoint("untied-gqa4-theta")
  req, out = tmp_path / "req.jsonl", tmp_path / "out.jsonl"

  codes = []

  @settings(max_examples=6, deadline=None, derandomize=True,
            suppress_health_check=list(HealthCheck))
  @given(data=st.data())
  def check(data):
    text = _hostile_file(data, 320, hostile_share=12)  # most files decode
    req.write_bytes(text)
    code = main(["generate", "--hf", str(path), "--prompts", str(req), "--out", str(out),
                 "--trigger-ids", "5,6,7", "--eos-ids", "281", "--max-new-tokens", "8",
                 "--answer-tokens", "3", "--temperature", "0.7", "--batch-size", "4",
                 "--no-progress", "--overwrite"])
    err = capsys.readouterr().err
    assert code in (0, 2), err
    codes.append((code, err[-150:]))
    if code == 0:
      rows = [x for x in text.split(b"\n") if x.strip()]
      assert len(out.read_text().splitlines()) == len(rows)

  check()
  assert {0, 2} <= {c for c, _ in codes}, codes
