"""Aligned-MTL: aligning the gradients' principal components."""

from __future__ import annotations

import functools
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from j6jax._src import base
from j6jax._src.aggregators import _base

ScaleMode = Literal["min", "median", "rmse"]
_SCALE_MODES = ("min", "median", "rmse")


class AlignedMTLState(NamedTuple):
  """State of :func:`aligned_mtl`.

  Attributes:
    count: ``[]`` int32, number of updates so far.
    weights: ``[m]`` float32, the weights of the last update (zeros before
      the first).
  """

  count: jax.Array
  weights: jax.Array


def aligned_mtl_weights(
  gramian: base.Gramian, scale_mode: ScaleMode = "min"
) -> base.Weights:
  """Aligned-MTL weights: the mean after balancing the singular values.

  Aligned-MTL (Senushkin et al., 2023, Algorithm 1) replaces ``J`` by the
  matrix with the same singular vectors and all non-zero singular values
  equal to a common ``sigma``, and takes the mean of its rows. On the
  Gramian ``G = V diag(lambda) V^T`` (rank ``r``) this is ``w = B 1/m`` with
  ``B = sigma V_r diag(lambda_r^(-1/2)) V_r^T``, where ``sigma^2`` is the
  smallest non-zero eigenvalue (``"min"``, default), the lower median of the
  non-zero eigenvalues (``"median"``, as ``torch.median``) or their mean
  (``"rmse"``), following TorchJD's ``AlignedMTL``.

  Convention: computed on ``G / trace(G)``, so ``B`` and the weights are
  invariant under ``J -> s J``. The rank is decided on the cosine matrix of
  the gradients (eigenvalues below ``1e-5`` of the largest count as zero,
  ``_base.RTOL``, a float32 tolerance that is independent of the gradients'
  norms); TorchJD counts eigenvalues of ``G`` itself above ``m * eps`` of
  its (float64) dtype times the largest. The method is discontinuous where
  the rank changes. A zero Gramian gives ``B = I`` (weights ``1/m``).

  Args:
    gramian: ``[m, m]`` Gramian ``J J^T``.
    scale_mode: ``"min"``, ``"median"`` or ``"rmse"`` (static).

  Returns:
    ``[m]`` weights.

  Raises:
    ValueError: on an invalid ``scale_mode``.

  References:
    Dmitry Senushkin, Nikolay Patakin, Arseny Kuznetsov and Anton Konushin,
    `Independent Component Alignment for Multi-Task Learning
    <https://arxiv.org/abs/2305.19000>`_, CVPR 2023.
  """
  _base.check_gramian(gramian)
  _base.check_choice("scale_mode", scale_mode, _SCALE_MODES)
  return _aligned_mtl(_base.as_float(gramian), scale_mode)


@functools.partial(jax.jit, static_argnums=1)
def _aligned_mtl(gramian: jax.Array, scale_mode: str) -> jax.Array:
  m = gramian.shape[0]
  g, _ = _base.normalize(gramian)
  lam, vec = jnp.linalg.eigh(g)  # ascending
  lam = jnp.maximum(lam, jnp.finfo(g.dtype).tiny)
  # The rank is decided on the cosine matrix (robust to gradients of very
  # different norms); the kept eigenvalues are the largest ``rank`` ones.
  rank = _base.numerical_rank(g)
  keep = jnp.arange(m) >= m - rank
  kept = jnp.where(keep, lam, 0)
  if scale_mode == "min":
    scale = jnp.min(jnp.where(keep, lam, jnp.inf))
  elif scale_mode == "median":
    # The dropped eigenvalues are the m - rank smallest ones.
    scale = lam[(m - rank) + (rank - 1) // 2]
  else:
    scale = base.safe_div(jnp.sum(kept), rank)
  inv_sqrt = jnp.where(keep, 1 / jnp.sqrt(lam), 0)
  u0 = jnp.full([m], 1 / m, g.dtype)
  balanced = jnp.sqrt(jnp.where(rank > 0, scale, 0)) * _base.einsum(
    "ik,k,jk,j->i", vec, inv_sqrt, vec, u0
  )
  return jnp.where(rank > 0, balanced, u0)


def aligned_mtl(
  *, num_objectives: int = 2, scale_mode: ScaleMode = "min"
) -> optax.GradientTransformationExtraArgs:
  """Aligned-MTL as an optax transform, see :func:`aligned_mtl_weights`.

  Args:
    num_objectives: ``m``, the number of objectives (``init`` cannot see
      it). Under ``optax.inject_hyperparams`` list it in ``static_args``.
    scale_mode: ``"min"``, ``"median"`` or ``"rmse"``.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update(jacobian,
    state, params=None, **extra_args)`` takes the stacked Jacobian (leaves
    ``[m, *param.shape]``) and returns the update in gradient convention and
    an :class:`AlignedMTLState`.

  Raises:
    ValueError: on an invalid option; at trace time if the Jacobian does not
      have ``num_objectives`` objectives.

  References:
    Dmitry Senushkin, Nikolay Patakin, Arseny Kuznetsov and Anton Konushin,
    `Independent Component Alignment for Multi-Task Learning
    <https://arxiv.org/abs/2305.19000>`_, CVPR 2023.
  """
  m = _base.check_num_objectives(num_objectives)
  _base.check_choice("scale_mode", scale_mode, _SCALE_MODES)
  return _base.weighting_transform(
    "aligned_mtl",
    m,
    AlignedMTLState,
    lambda g: aligned_mtl_weights(g, scale_mode),
  )
