"""A loaded model: config, frozen weights and tokenizer in one pytree."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike, DTypeLike

from j6jax._src.models import generate as generate_lib
from j6jax._src.models import llama
from j6jax._src.models.config import LlamaConfig
from j6jax._src.models.tokenizer import Tokenizer


@functools.partial(
  jax.tree_util.register_dataclass,
  data_fields=["weights"],
  meta_fields=["config", "tokenizer"],
)
@dataclasses.dataclass(frozen=True, eq=False)
class LlamaModel:
  """A Llama-family decoder ready to run.

  A pytree whose only leaves are the weights: pass it as an argument to a
  jitted function and the weights are traced inputs (not constants baked
  into the program), while ``config`` and ``tokenizer`` are static.

  Attributes:
    config: the architecture.
    weights: the frozen weights (layout in :mod:`j6jax._src.models.llama`).
    tokenizer: the matching :class:`Tokenizer`, or ``None``.
  """

  config: LlamaConfig
  weights: dict[str, Any]
  tokenizer: Tokenizer | None = None

  @property
  def dtype(self) -> jnp.dtype:
    """The parameter and activation dtype."""
    return llama.compute_dtype(self.weights)

  def astype(self, dtype: DTypeLike) -> LlamaModel:
    """The same model with weights cast to ``dtype``."""
    weights = jax.tree.map(lambda w: jnp.asarray(w, dtype), self.weights)
    return dataclasses.replace(self, weights=weights)

  def __call__(self, tokens: ArrayLike, **kwargs: Any) -> jax.Array:
    """``forward(self.config, self.weights, tokens, **kwargs)``: logits."""
    return llama.forward(self.config, self.weights, tokens, **kwargs)

  def generate(self, tokens: ArrayLike, **kwargs: Any) -> jax.Array:
    """``generate(self.config, self.weights, tokens, **kwargs)``: new ids."""
    return generate_lib.generate(self.config, self.weights, tokens, **kwargs)
