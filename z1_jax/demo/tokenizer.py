"""A small byte-level BPE tokenizer trained on the demo task, saved as a HF tokenizer directory.

Digits and operators stay single tokens (the GPT-2 pre-tokenizer splits them apart, digits are
split one by one, newlines stand alone), so a trace step `+7=0` is four tokens the model computes
one at a time; words (the system prompt, the answer trigger) and `+=` / `-=` merge into single
tokens. It carries the Qwen chat special tokens, so `z1_jax.data` renders and tokenizes the Z1
format unchanged.
The 7B path keeps the Qwen tokenizer; this one exists because a tiny model trained from scratch
on a 151k vocabulary would spend the CPU budget on its embedding table.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from z1_jax.data.format import IM_END, IM_START
from z1_jax.data.tokenizer import ENDOFTEXT

SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)  # ids 0, 1, 2


def train_tokenizer(texts: Iterable[str], vocab_size: int = 384):
  """A `PreTrainedTokenizerFast` trained on `texts` (byte-level: any text encodes)."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  from transformers import PreTrainedTokenizerFast

  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      # Each newline alone: the trigger (which starts and ends with "\n\n") then tokenizes the
      # same alone (as the decoder places it) and inside a training row.
      pre_tokenizers.Split("\n", behavior="isolated"),
      pre_tokenizers.Digits(individual_digits=True),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
  ])
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  tok.train_from_iterator(texts, trainer=trainer)
  return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=None, eos_token=IM_END,
                                 pad_token=ENDOFTEXT, unk_token=None,
                                 additional_special_tokens=[IM_START])


def save_tokenizer(tokenizer, out: str | os.PathLike) -> Path:
  out = Path(out)
  tokenizer.save_pretrained(out)
  return out
