"""The one prompt format used for training and evaluation, and tokenisation.

Plain format: the context is ``"Q: <question>\\nA:"`` and the continuation
``" <answer>"`` (the answer with its leading space). Chat format: the
context is the model's chat template applied to the question as a user turn,
with the generation prompt, and the continuation is the answer itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

PromptStyle = Literal["plain", "chat"]
PLAIN_TEMPLATE = "Q: {question}\nA:"


def context_and_continuation(
  question: str,
  answer: str,
  *,
  style: PromptStyle = "plain",
  chat_template: Callable[[str], str] | None = None,
) -> tuple[str, str]:
  """The context string and the continuation string for one answer.

  Args:
    question: the question text.
    answer: one answer text.
    style: ``"plain"`` or ``"chat"``.
    chat_template: for ``"chat"``, a function from the user message to the
      templated prompt ending with the assistant's generation prompt (e.g.
      a tokenizer's chat template).

  Raises:
    ValueError: an unknown style, or ``"chat"`` without a template.
  """
  if style == "plain":
    return PLAIN_TEMPLATE.format(question=question), " " + answer.strip()
  if style == "chat":
    if chat_template is None:
      raise ValueError("style='chat' needs a chat_template function.")
    return chat_template(question), answer.strip()
  raise ValueError(f"style must be 'plain' or 'chat', but got {style!r}.")


def encode_pair(
  encode: Callable[[str], Sequence[int]],
  context: str,
  continuation: str,
  *,
  move_whitespace: bool = True,
) -> tuple[list[int], list[int]]:
  """Token ids of a context and its continuation, split at the right place.

  Trailing whitespace of the context moves to the front of the continuation
  (``"A: " + "Paris"`` is scored as ``"A:" + " Paris"``), and each part is
  encoded on its own, so the continuation's tokens are exactly the answer's
  tokens with its leading space and never empty (CASES.md, C13).

  Args:
    encode: text -> token ids, without special tokens.
    context: the prompt text.
    continuation: the answer text.
    move_whitespace: apply the whitespace rule (off for chat templates,
      whose trailing newline belongs to the template).

  Returns:
    ``(context_ids, continuation_ids)``.

  Raises:
    ValueError: if the continuation encodes to no tokens.
  """
  stripped = context.rstrip() if move_whitespace else context
  moved = context[len(stripped) :]
  continuation = moved + continuation
  ctx = list(encode(stripped))
  cont = list(encode(continuation))
  if not cont:
    raise ValueError(
      f"The continuation {continuation!r} encodes to no tokens; an answer "
      "must have at least one token."
    )
  return ctx, cont
