"""Initial values for the prompt parameters ``w`` and ``h``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from j6jax._src.models.config import LlamaConfig
from j6jax._src.models.llama import check_layers


def init_prompt(
  config: Any,
  *,
  n_soft: int | None = 0,
  layers: Sequence[int] = (),
  key: jax.Array | None = None,
  init_text: str | None = None,
  tokenizer: Any = None,
  weights: Any = None,
  scale: float = 0.02,
  dtype: Any = jnp.float32,
) -> dict[str, jax.Array]:
  """Prompt parameters ``{"w": [n_soft, d], "h": [len(layers), d]}``.

  ``h`` starts at zero, so the untouched model is the starting point. ``w``
  is either the token embeddings of ``init_text`` (repeated or cut to
  ``n_soft`` rows) or small random vectors (``scale * normal``). Both entries
  are always present (``w`` may have zero rows), so the two groups exist for
  J6.

  Args:
    config: a :class:`LlamaConfig`, or a loaded model (anything with
      ``config``, ``weights`` and ``tokenizer`` attributes, whose weights and
      tokenizer are then used for ``init_text``).
    n_soft: rows of ``w``; ``None`` with ``init_text`` takes one row per
      token of the text.
    layers: 0-based decoder layers after which ``h`` rows are added; pass the
      same tuple as ``h_layers`` to ``forward``.
    key: PRNG key for the random ``w`` (needed when ``n_soft > 0`` and no
      ``init_text``).
    init_text: text whose token embeddings initialise ``w``.
    tokenizer: encodes ``init_text`` (default: the model's).
    weights: supplies the embedding for ``init_text`` (default: the
      model's).
    scale: standard deviation of the random ``w``.
    dtype: dtype of the parameters (float32 by default, whatever the model
      dtype; they are cast inside the forward pass).

  Returns:
    A dict with ``"w"`` ``[n_soft, d]`` and ``"h"`` ``[len(layers), d]``.

  Examples:
    >>> import jax
    >>> from j6jax.models import LlamaConfig, init_prompt
    >>> config = LlamaConfig(
    ...     vocab_size=10, d_model=8, n_layers=2, n_heads=2, n_kv_heads=1,
    ...     head_dim=4, d_ff=16)
    >>> key = jax.random.key(0)
    >>> prompt = init_prompt(config, n_soft=3, layers=(1,), key=key)
    >>> prompt["w"].shape, prompt["h"].shape, float(abs(prompt["h"]).max())
    ((3, 8), (1, 8), 0.0)
  """
  if not isinstance(config, LlamaConfig):
    tokenizer = tokenizer if tokenizer is not None else config.tokenizer
    weights = weights if weights is not None else config.weights
    config = config.config
  d = config.d_model
  layers = check_layers(config, layers)
  h = jnp.zeros((len(layers), d), dtype)
  if init_text is not None:
    if tokenizer is None or weights is None:
      raise ValueError("init_text needs a tokenizer and the model weights.")
    ids = tokenizer.encode(init_text, add_special_tokens=False)
    if not ids:
      raise ValueError(f"init_text {init_text!r} encodes to no tokens.")
    n = len(ids) if n_soft is None else int(n_soft)
    rows = np.resize(np.asarray(ids, np.int32), n)
    w = jnp.take(jnp.asarray(weights["embed"]), rows, axis=0).astype(dtype)
    return {"w": w, "h": h}
  n = int(n_soft or 0)
  if n < 0:
    raise ValueError(f"n_soft must be >= 0, got {n}.")
  if n and key is None:
    raise ValueError("A random w needs a PRNG key (or pass init_text).")
  if n:
    w = scale * jax.random.normal(key, (n, d), jnp.float32)
  else:
    w = jnp.zeros((0, d), jnp.float32)
  return {"w": w.astype(dtype), "h": h}
