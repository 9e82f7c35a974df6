"""The one place that renders Z1 text: the Qwen2.5 chat prompt and the training target.

Training (Shifted Thinking Window): no think tags; the whole trajectory is the assistant turn.
  prompt = <|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n{question}<|im_end|>\\n
           <|im_start|>assistant\\n
  target = response + <|im_end|>
The offline tokenizer's own chat template is Qwen3's (no default system prompt), so the prompt
is rendered here rather than with `apply_chat_template`.
"""

from __future__ import annotations

import re


IM_START, IM_END = "<|im_start|>", "<|im_end|>"
DEFAULT_SYSTEM_PROMPT = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

# Shifted Thinking Window: placed in the stream when a row reaches its thinking budget; the
# model answers right after it (12 Qwen2.5 tokens; `infer.budget` tokenizes it once).
ANSWER_TRIGGER = "\n\nI overthought it, the final answer should be:\n\n"
# s1 budget forcing (Muennighoff et al.): the answer marker placed when thinking stops, and the
# word that replaces an early end of thinking.
S1_ANSWER_MARKER = "<|im_start|>answer\nFinal Answer:"
S1_WAIT = "Wait"

_THINK_TAGS = re.compile(r"</?think>\n?")


def render_prompt(question: str, system_prompt: str | None = DEFAULT_SYSTEM_PROMPT) -> str:
  """Qwen2.5 chat prompt for one user turn, ending with the open assistant header."""
  system = "" if system_prompt is None else f"{IM_START}system\n{system_prompt}{IM_END}\n"
  return f"{system}{IM_START}user\n{question}{IM_END}\n{IM_START}assistant\n"


def render_target(response: str, strip_think_tags: bool = False) -> str:
  """The supervised continuation: the trajectory and the closing end-of-turn token."""
  if strip_think_tags:
    response = _THINK_TAGS.sub("", response)
  return response + IM_END
