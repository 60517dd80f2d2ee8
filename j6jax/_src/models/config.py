"""The static description of a Llama-family decoder.

A :class:`LlamaConfig` holds every architectural number the forward pass
needs. It is a frozen (hashable) dataclass, so it can be a static argument of
``jax.jit`` and live inside the static part of a pytree. The loaders build it
from a checkpoint's own metadata (GGUF key-values or a Hugging Face
``config.json``), never from defaults guessed from the model's name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  """Architecture of a Llama-family decoder.

  Axis letters used in the model docstrings: ``B`` batch, ``T`` input tokens,
  ``S`` sequence after soft-prompt insertion (``T + n_soft``), ``d`` model
  width, ``V`` vocabulary, ``L`` layers, ``H`` query heads, ``G`` key/value
  heads, ``D`` head width, ``F`` MLP width.

  Attributes:
    vocab_size: ``V``, rows of the token embedding.
    d_model: ``d``, width of the residual stream.
    n_layers: ``L``, number of decoder blocks.
    n_heads: ``H``, query heads per block.
    n_kv_heads: ``G``, key/value heads (grouped-query attention); must divide
      ``n_heads``.
    head_dim: ``D``, width of one head (even, for rotary embeddings).
    d_ff: ``F``, hidden width of the SwiGLU MLP.
    rope_theta: base of the rotary inverse frequencies, read from the
      checkpoint.
    rms_eps: epsilon of every RMSNorm.
    tie_embeddings: when true the output projection is the token embedding
      (``logits = x @ E^T``) and the weights hold no ``lm_head``.
    max_positions: context length the checkpoint declares (informative; the
      model does not truncate).
    bos_token_id: id of the beginning-of-sequence token, or ``None``.
    eos_token_ids: ids that end a generation (may be empty).
    pad_token_id: id used to fill finished generations, or ``None``.
  """

  vocab_size: int
  d_model: int
  n_layers: int
  n_heads: int
  n_kv_heads: int
  head_dim: int
  d_ff: int
  rope_theta: float = 10000.0
  rms_eps: float = 1e-5
  tie_embeddings: bool = True
  max_positions: int = 2048
  bos_token_id: int | None = None
  eos_token_ids: tuple[int, ...] = ()
  pad_token_id: int | None = None

  def __post_init__(self):
    for name in (
      "vocab_size",
      "d_model",
      "n_layers",
      "n_heads",
      "n_kv_heads",
      "head_dim",
      "d_ff",
    ):
      value = getattr(self, name)
      if not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, but got {value!r}.")
    if self.n_heads % self.n_kv_heads:
      raise ValueError(
        f"n_kv_heads must divide n_heads, but got n_heads={self.n_heads} and "
        f"n_kv_heads={self.n_kv_heads}."
      )
    if self.head_dim % 2:
      raise ValueError(
        f"head_dim must be even for rotary embeddings, got {self.head_dim}."
      )
    if not self.rope_theta > 0:
      raise ValueError(f"rope_theta must be > 0, got {self.rope_theta!r}.")
    object.__setattr__(self, "eos_token_ids", tuple(self.eos_token_ids))

  @property
  def group_size(self) -> int:
    """Query heads per key/value head, ``H // G``."""
    return self.n_heads // self.n_kv_heads

  def to_dict(self) -> dict[str, Any]:
    """A JSON-ready dict that :meth:`from_dict` reads back."""
    out = dataclasses.asdict(self)
    out["eos_token_ids"] = list(self.eos_token_ids)
    return out

  @classmethod
  def from_dict(cls, values: Mapping[str, Any]) -> LlamaConfig:
    """Builds a config from :meth:`to_dict` output; unknown keys fail."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
      raise ValueError(
        f"Unknown LlamaConfig fields {unknown}; known: {sorted(names)}."
      )
    return cls(**dict(values))
