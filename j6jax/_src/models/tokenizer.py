"""Tokenisation through Hugging Face ``tokenizers``, without PyTorch.

:class:`Tokenizer` wraps a ``tokenizers.Tokenizer`` together with the special
tokens and the chat template of a checkpoint. It is built either from a
``tokenizer.json`` (Hugging Face directories, and the on-disk cache) or from
the vocabulary, merges and token types stored in a GGUF file's metadata. Chat
templates are rendered with ``jinja2`` in a sandbox, the way Hugging Face
renders them (blocks trimmed, loop controls enabled), and the rendered text is
then encoded without adding special tokens.

Only byte-level BPE vocabularies (``tokenizer.ggml.model == "gpt2"``, as in
SmolLM2, GPT-2 and Llama 3) can be built from GGUF metadata; for a
SentencePiece vocabulary load a Hugging Face directory with its
``tokenizer.json`` instead.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, processors

# GGUF token types (llama.cpp's numbering).
TOKEN_NORMAL = 1
TOKEN_CONTROL = 3
TOKEN_USER_DEFINED = 4

# Pre-tokenizer split used by Llama 3 style vocabularies (at most three
# digits per piece, letters with one leading non-letter).
_LLAMA3_SPLIT = (
  r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# `tokenizer.ggml.pre` values whose vocabularies use the plain GPT-2 byte-level
# split (SmolLM2 writes "smollm"; its vocabulary has no multi-digit tokens).
_GPT2_STYLE = frozenset({None, "", "default", "gpt2", "gpt-2", "smollm"})
_LLAMA3_STYLE = frozenset({"llama3", "llama-bpe", "llama-v3"})

_META_FILE = "j6jax_tokenizer.json"


def byte_alphabet() -> dict[int, str]:
  """The printable stand-in character of every byte in byte-level BPE.

  Printable Latin-1 bytes stand for themselves; the other 68 bytes (controls,
  space, soft hyphen, ...) map to code points 256, 257, ... in byte order.
  """
  printable = [
    *range(ord("!"), ord("~") + 1),
    *range(ord("\xa1"), ord("\xac") + 1),
    *range(ord("\xae"), ord("\xff") + 1),
  ]
  table = {b: chr(b) for b in printable}
  extra = 0
  for b in range(256):
    if b not in table:
      table[b] = chr(256 + extra)
      extra += 1
  return table


class Tokenizer:
  """A ``tokenizers.Tokenizer`` with special tokens and a chat template.

  Attributes:
    backend: the wrapped ``tokenizers.Tokenizer``.
    bos_token: the beginning-of-sequence token string, or ``None``.
    eos_token: the end-of-sequence token string, or ``None``.
    pad_token: the padding token string, or ``None``.
    chat_template: a Jinja2 chat template, or ``None``.
  """

  def __init__(
    self,
    backend: tokenizers.Tokenizer,
    *,
    bos_token: str | None = None,
    eos_token: str | None = None,
    pad_token: str | None = None,
    chat_template: str | None = None,
  ):
    self.backend = backend
    self.bos_token = bos_token
    self.eos_token = eos_token
    self.pad_token = pad_token
    self.chat_template = chat_template

  def __repr__(self) -> str:
    return (
      f"Tokenizer(vocab_size={self.vocab_size}, bos={self.bos_token!r}, "
      f"eos={self.eos_token!r}, chat_template={self.chat_template is not None})"
    )

  @property
  def vocab_size(self) -> int:
    """Number of ids, added tokens included."""
    return self.backend.get_vocab_size(with_added_tokens=True)

  def _id(self, token: str | None) -> int | None:
    return None if token is None else self.backend.token_to_id(token)

  @property
  def bos_token_id(self) -> int | None:
    """Id of :attr:`bos_token` (``None`` if there is none)."""
    return self._id(self.bos_token)

  @property
  def eos_token_id(self) -> int | None:
    """Id of :attr:`eos_token` (``None`` if there is none)."""
    return self._id(self.eos_token)

  @property
  def pad_token_id(self) -> int | None:
    """Id of :attr:`pad_token`, else of :attr:`eos_token`, else ``None``."""
    pad = self._id(self.pad_token)
    return self.eos_token_id if pad is None else pad

  def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
    """Token ids of ``text``.

    Args:
      text: the string to encode (special tokens in it are kept whole).
      add_special_tokens: apply the tokenizer's post-processor (e.g. a BOS
        token when the checkpoint asks for one).

    Returns:
      A list of ints.
    """
    return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

  def decode(
    self, ids: Sequence[int], skip_special_tokens: bool = False
  ) -> str:
    """The text of ``ids`` (a list or a 1-D array)."""
    ids = [int(i) for i in np.asarray(ids).reshape(-1)]
    return self.backend.decode(ids, skip_special_tokens=skip_special_tokens)

  def render_chat(
    self,
    messages: Sequence[Mapping[str, Any]],
    add_generation_prompt: bool = False,
    **kwargs: Any,
  ) -> str:
    """The chat template rendered for ``messages``.

    Args:
      messages: dicts with ``"role"`` and ``"content"``.
      add_generation_prompt: end with the header of an assistant turn.
      **kwargs: extra template variables (e.g. ``tools``).

    Returns:
      The prompt string.

    Raises:
      ValueError: if the tokenizer has no chat template.
      ImportError: if ``jinja2`` is not installed.
    """
    if self.chat_template is None:
      raise ValueError("This tokenizer has no chat template.")
    variables = {
      "bos_token": self.bos_token or "",
      "eos_token": self.eos_token or "",
      "pad_token": self.pad_token or "",
      **kwargs,
    }
    return _render(
      self.chat_template,
      messages=list(messages),
      add_generation_prompt=add_generation_prompt,
      **variables,
    )

  def apply_chat_template(
    self,
    messages: Sequence[Mapping[str, Any]],
    add_generation_prompt: bool = False,
    **kwargs: Any,
  ) -> list[int]:
    """Token ids of the rendered chat (no extra special tokens added)."""
    text = self.render_chat(messages, add_generation_prompt, **kwargs)
    return self.encode(text, add_special_tokens=False)

  def pad_batch(
    self,
    sequences: Sequence[Sequence[int]],
    padding_side: str = "right",
    length: int | None = None,
  ) -> tuple[np.ndarray, np.ndarray]:
    """Pads id lists into a batch.

    Args:
      sequences: ``B`` lists of ids.
      padding_side: ``"right"`` or ``"left"``.
      length: ``T``; default the longest sequence.

    Returns:
      ``(tokens, mask)``, both ``[B, T]`` int32; padding uses
      :attr:`pad_token_id` (0 if there is none) and has mask 0.
    """
    if padding_side not in ("left", "right"):
      raise ValueError(
        f"padding_side must be 'left' or 'right', got {padding_side!r}."
      )
    T = max(len(s) for s in sequences) if length is None else length
    pad = self.pad_token_id or 0
    tokens = np.full((len(sequences), T), pad, np.int32)
    mask = np.zeros((len(sequences), T), np.int32)
    for b, ids in enumerate(sequences):
      if len(ids) > T:
        raise ValueError(f"Sequence {b} has {len(ids)} ids, more than {T}.")
      span = (
        slice(0, len(ids))
        if padding_side == "right"
        else slice(T - len(ids), T)
      )
      tokens[b, span] = ids
      mask[b, span] = 1
    return tokens, mask

  def save(self, directory: str | os.PathLike) -> None:
    """Writes ``tokenizer.json`` and the special tokens to ``directory``."""
    os.makedirs(directory, exist_ok=True)
    self.backend.save(os.path.join(directory, "tokenizer.json"))
    meta = {
      "bos_token": self.bos_token,
      "eos_token": self.eos_token,
      "pad_token": self.pad_token,
      "chat_template": self.chat_template,
    }
    with open(os.path.join(directory, _META_FILE), "w") as f:
      json.dump(meta, f, ensure_ascii=False, indent=1)

  @classmethod
  def load(cls, directory: str | os.PathLike) -> Tokenizer:
    """Reads a tokenizer written by :meth:`save`."""
    backend = tokenizers.Tokenizer.from_file(
      os.path.join(directory, "tokenizer.json")
    )
    with open(os.path.join(directory, _META_FILE)) as f:
      meta = json.load(f)
    return cls(backend, **meta)

  @classmethod
  def from_hf_dir(cls, directory: str | os.PathLike) -> Tokenizer:
    """Reads a Hugging Face model directory's tokenizer files.

    Uses ``tokenizer.json`` and, when present, ``tokenizer_config.json``,
    ``special_tokens_map.json``, ``chat_template.jinja`` or
    ``chat_template.json``.

    Raises:
      FileNotFoundError: if ``tokenizer.json`` is missing.
    """
    path = os.path.join(directory, "tokenizer.json")
    if not os.path.isfile(path):
      raise FileNotFoundError(f"No tokenizer.json in {directory}.")
    backend = tokenizers.Tokenizer.from_file(path)
    config = _read_json(os.path.join(directory, "tokenizer_config.json"))
    special = _read_json(os.path.join(directory, "special_tokens_map.json"))
    template = config.get("chat_template")
    jinja = os.path.join(directory, "chat_template.jinja")
    if os.path.isfile(jinja):
      with open(jinja) as f:
        template = f.read()
    elif template is None:
      template = _read_json(os.path.join(directory, "chat_template.json")).get(
        "chat_template"
      )
    if isinstance(template, list):  # named templates: take the default
      named = {t["name"]: t["template"] for t in template}
      template = named.get("default", next(iter(named.values()), None))

    def token(name):
      value = config.get(name, special.get(name))
      return value.get("content") if isinstance(value, dict) else value

    return cls(
      backend,
      bos_token=token("bos_token"),
      eos_token=token("eos_token"),
      pad_token=token("pad_token"),
      chat_template=template,
    )

  @classmethod
  def from_gguf_metadata(
    cls, metadata: Mapping[str, Any], source: str = "GGUF file"
  ) -> Tokenizer:
    """Builds the tokenizer a GGUF file's ``tokenizer.*`` metadata describes.

    Args:
      metadata: GGUF key-values as Python values (lists for arrays).
      source: the file name, for error messages.

    Raises:
      NotImplementedError: for a vocabulary that is not byte-level BPE, or a
        pre-tokenizer this module does not know.
      ValueError: if the vocabulary or merges are missing.
    """
    kind = metadata.get("tokenizer.ggml.model")
    if kind != "gpt2":
      raise NotImplementedError(
        f"{source}: tokenizer.ggml.model {kind!r} is not supported; only "
        "byte-level BPE ('gpt2') vocabularies can be built from GGUF "
        "metadata. Load a Hugging Face directory with tokenizer.json instead."
      )
    pre = metadata.get("tokenizer.ggml.pre")
    if pre not in _GPT2_STYLE | _LLAMA3_STYLE:
      raise NotImplementedError(
        f"{source}: pre-tokenizer tokenizer.ggml.pre={pre!r} is not supported "
        f"(known: {sorted(p for p in _GPT2_STYLE | _LLAMA3_STYLE if p)})."
      )
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges"):
      if key not in metadata:
        raise ValueError(f"{source}: the metadata has no {key!r}.")
    tokens = list(metadata["tokenizer.ggml.tokens"])
    types = list(metadata.get("tokenizer.ggml.token_type") or [])
    backend = _byte_level_bpe(
      tokens,
      list(metadata["tokenizer.ggml.merges"]),
      types,
      llama3_split=pre in _LLAMA3_STYLE,
    )

    def token(key):
      index = metadata.get(f"tokenizer.ggml.{key}")
      return None if index is None else tokens[int(index)]

    bos = token("bos_token_id")
    if metadata.get("tokenizer.ggml.add_bos_token") and bos is not None:
      backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A",
        pair=f"{bos} $A {bos} $B",
        special_tokens=[(bos, tokens.index(bos))],
      )
    return cls(
      backend,
      bos_token=bos,
      eos_token=token("eos_token_id"),
      pad_token=token("padding_token_id"),
      chat_template=metadata.get("tokenizer.chat_template"),
    )


def _read_json(path):
  if not os.path.isfile(path):
    return {}
  with open(path) as f:
    return json.load(f)


def _byte_level_bpe(tokens, merges, types, llama3_split):
  """A byte-level BPE ``tokenizers.Tokenizer`` from GGUF vocabulary lists."""
  table = byte_alphabet()
  alphabet = set(table.values())

  def spelled(token):
    # Byte-level vocabularies write every token in the stand-in alphabet;
    # respell the rare one stored as raw text.
    if set(token) <= alphabet:
      return token
    return "".join(table[b] for b in token.encode("utf-8"))

  vocab = {}
  for index, token in enumerate(tokens):
    vocab.setdefault(spelled(token), index)
  pairs = [tuple(m.split(" ", 1)) for m in merges]
  backend = tokenizers.Tokenizer(
    models.BPE(vocab=vocab, merges=pairs, fuse_unk=False)
  )
  if llama3_split:
    backend.pre_tokenizer = pre_tokenizers.Sequence(
      [
        pre_tokenizers.Split(
          tokenizers.Regex(_LLAMA3_SPLIT), behavior="isolated"
        ),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
      ]
    )
  else:
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(
      add_prefix_space=False, use_regex=True
    )
  backend.decoder = decoders.ByteLevel()
  special, plain = [], []
  for token, kind in zip(tokens, types, strict=False):
    if kind == TOKEN_CONTROL and set(token) <= alphabet:
      special.append(
        tokenizers.AddedToken(token, special=True, normalized=False)
      )
    elif kind == TOKEN_USER_DEFINED:
      plain.append(
        tokenizers.AddedToken(token, special=False, normalized=False)
      )
  if special:
    backend.add_special_tokens(special)
  if plain:
    backend.add_tokens(plain)
  return backend


def _render(template: str, **variables: Any) -> str:
  try:
    import jinja2
    import jinja2.sandbox
  except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
      "Rendering a chat template needs jinja2 (pip install jinja2)."
    ) from e

  def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)

  def tojson(value, indent=None):
    return json.dumps(value, ensure_ascii=False, indent=indent)

  env = jinja2.sandbox.ImmutableSandboxedEnvironment(
    trim_blocks=True,
    lstrip_blocks=True,
    extensions=["jinja2.ext.loopcontrols"],
  )
  env.filters["tojson"] = tojson
  env.globals["raise_exception"] = raise_exception
  return env.from_string(template).render(**variables)
