"""Packing invariants (property tests over random example lengths) and policies."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from z1_jax.data.encode import Encoded
from z1_jax.data.pack import fit_lengths, pack, pack_best_fit, select_by_tokens

PAD = 151643


def _encoded(lengths, prompt_lens):
  lengths = np.asarray(lengths)
  offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
  tokens = np.arange(1, offsets[-1] + 1, dtype=np.int32)  # every token unique: order is visible
  return Encoded(tokens, offsets, np.asarray(prompt_lens, np.int32),
                 [f"mem:{i}" for i in range(len(lengths))])


examples = st.lists(st.tuples(st.integers(2, 80), st.integers(1, 40)), min_size=1, max_size=40)


@settings(max_examples=150, deadline=None)
@given(examples=examples, seq_len=st.integers(8, 96), overlong=st.sampled_from(["truncate", "drop"]))
def test_packing_invariants(examples, seq_len, overlong):
  lengths = [n for n, _ in examples]
  prompt_lens = [min(p, n - 1) for n, p in examples]  # every example has >= 1 target token
  enc = _encoded(lengths, prompt_lens)
  packed = pack(enc, seq_len, PAD, overlong)
  used = packed.used
  seen = {}
  for r in range(len(packed)):
    row = packed[r]
    seg, pos, inputs = row["segment_ids"], row["positions"], row["inputs"]
    assert all(len(v) == seq_len for v in row.values())
    assert (inputs[seg == 0] == PAD).all()
    assert (row["loss_mask"][seg == 0] == 0).all()
    for s in range(1, seg.max() + 1):
      where = np.flatnonzero(seg == s)
      assert len(where) and (np.diff(where) == 1).all()  # contiguous
      assert (pos[where] == np.arange(len(where))).all()  # positions restart at 0
      first = int(inputs[where[0]])
      i = int(np.searchsorted(enc.offsets, first - 1, side="right") - 1)  # owning example
      assert i not in seen
      seen[i] = True
      ids = enc.ids(i)[:used[i]]
      assert (inputs[where] == ids).all()  # every token, in order, in one segment
      # targets are the next token of the same example; the last token has no target
      assert (row["targets"][where[:-1]] == ids[1:]).all()
      assert row["loss_mask"][where[-1]] == 0
      # loss exactly on positions whose next token is a response token
      p = int(enc.prompt_lens[i])
      expected = np.zeros(len(where), np.int32)
      expected[p - 1:len(where) - 1] = 1
      assert (row["loss_mask"][where] == expected).all()
    assert seg.max() == 0 or (seg[: (seg > 0).sum()] > 0).all()  # padding only at the end
  kept = [i for i in range(len(lengths)) if used[i] > 0]
  assert sorted(seen) == kept
  for i, n in enumerate(lengths):
    if n <= seq_len:
      assert used[i] == n
    elif overlong == "drop" or prompt_lens[i] >= seq_len:
      assert used[i] == 0
    else:
      assert used[i] == seq_len
  rep = packed.report
  assert rep.kept + rep.dropped == len(lengths)
  assert rep.truncated == sum(1 for i, n in enumerate(lengths) if n > seq_len and used[i] > 0)


def test_overlong_policies_are_counted():
  enc = _encoded([10, 50, 30], [3, 45, 5])
  used, rep = fit_lengths(enc, 40, "truncate")
  assert used.tolist() == [10, 0, 30] and (rep.truncated, rep.dropped) == (0, 1)  # prompt > 40
  used, rep = fit_lengths(_encoded([10, 50], [3, 5]), 40, "truncate")
  assert used.tolist() == [10, 40] and (rep.truncated, rep.dropped) == (1, 0)
  used, rep = fit_lengths(_encoded([10, 50], [3, 5]), 40, "drop")
  assert used.tolist() == [10, 0] and (rep.truncated, rep.dropped) == (0, 1)
  with pytest.raises(ValueError, match="overlong="):
    fit_lengths(enc, 40, "squeeze")


def test_token_budget_selection():
  lengths = np.array([5, 1, 9, 3, 7])
  assert select_by_tokens(lengths, 9, "shortest").tolist() == [0, 1, 3]  # 1+3+5
  assert select_by_tokens(lengths, 16, "longest").tolist() == [2, 4]  # 9+7
  packed = pack(_encoded([5, 3, 9, 4], [1, 1, 1, 1]), 16, PAD, select_tokens=8)
  assert packed.used.tolist() == [0, 3, 0, 4]


def test_best_fit_beats_next_fit_and_is_deterministic():
  rng = np.random.RandomState(0)
  lengths = rng.randint(1, 100, 500)
  rows = pack_best_fit(lengths, 128)
  assert rows == pack_best_fit(lengths, 128)
  efficiency = lengths.sum() / (len(rows) * 128)
  assert efficiency > 0.97
