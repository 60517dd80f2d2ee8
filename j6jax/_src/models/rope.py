"""Rotary position embeddings, with tables always built in float32 or wider.

The inverse frequencies and the angles ``position * inv_freq`` are computed in
float32 (float64 when the parameters are float64), never in the parameter
dtype: rounding the inverse frequencies to bfloat16 moves the phase by up to a
radian at position 2047 (shared case C16). Only the rotated activations are
cast back to the activation dtype.

Convention: the "rotate half" layout of Hugging Face Llama checkpoints. A head
vector ``x`` of width ``D`` is split into halves ``x1 = x[:D/2]`` and
``x2 = x[D/2:]``; pair ``i`` is ``(x1[i], x2[i])`` and is rotated by the angle
``position * inv_freq[i]``. GGUF files store q/k weights in the interleaved
layout instead; the GGUF loader undoes that permutation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike, DTypeLike


def table_dtype(param_dtype: DTypeLike) -> jnp.dtype:
  """The dtype of rotary tables for parameters of ``param_dtype``.

  float32 for bfloat16, float16 and float32 parameters; float64 for float64.
  """
  return jnp.promote_types(param_dtype, jnp.float32)


def inverse_frequencies(
  head_dim: int, theta: float, dtype: DTypeLike = jnp.float32
) -> np.ndarray:
  """Rotary inverse frequencies ``theta ** (-2 i / D)``.

  Args:
    head_dim: ``D``, the (even) head width.
    theta: the rotary base (e.g. ``1e4``; SmolLM2 uses ``1e5``).
    dtype: float32 or float64; lower precisions are promoted to float32.

  Returns:
    A numpy array ``[D // 2]`` in ``table_dtype(dtype)``.
  """
  dt = np.dtype(table_dtype(dtype))
  exponents = np.arange(0, head_dim, 2, dtype=dt) / dt.type(head_dim)
  return (dt.type(1) / np.power(dt.type(theta), exponents)).astype(dt)


def rope_tables(
  positions: ArrayLike,
  head_dim: int,
  theta: float,
  dtype: DTypeLike = jnp.float32,
) -> tuple[jax.Array, jax.Array]:
  """Cosine and sine tables for the given positions.

  Args:
    positions: integer positions of any shape ``P``.
    head_dim: ``D``, the head width.
    theta: the rotary base.
    dtype: the parameter dtype; the tables are built in
      ``table_dtype(dtype)`` (float32 for bfloat16 parameters).

  Returns:
    ``(cos, sin)``, each ``[*P, D // 2]`` in ``table_dtype(dtype)``.
  """
  dt = table_dtype(dtype)
  inv_freq = jnp.asarray(inverse_frequencies(head_dim, theta, dt))
  angles = jnp.asarray(positions).astype(dt)[..., None] * inv_freq
  return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Rotates head vectors by their positions' angles.

  Args:
    x: ``[B, S, N, D]`` queries or keys (``N`` heads).
    cos: ``[B, S, D // 2]`` from :func:`rope_tables`.
    sin: ``[B, S, D // 2]``.

  Returns:
    ``[B, S, N, D]`` in the dtype of ``x``; the rotation itself runs in the
    tables' dtype.
  """
  dt = jnp.promote_types(x.dtype, cos.dtype)
  x1, x2 = jnp.split(x.astype(dt), 2, axis=-1)
  c = cos[:, :, None, :]
  s = sin[:, :, None, :]
  rotated = jnp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)
  return rotated.astype(x.dtype)
