"""IMTL-G: the combination with equal projections on every unit gradient."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from j6jax._src import base
from j6jax._src.aggregators import _base

SUM_RTOL = 1e-6
"""``|sum(v)| <= SUM_RTOL * sum(|v|)`` counts as a zero sum."""

RANGE_TOL = 1e-4
"""``d`` with ``|P d| <= RANGE_TOL |d|`` (``P`` the projector onto the range of
``G``) counts as orthogonal to it: then ``v = 0``."""


class IMTLGState(NamedTuple):
  """State of :func:`imtl_g`.

  Attributes:
    count: ``[]`` int32, number of updates so far.
    weights: ``[m]`` float32, the weights of the last update (zeros before
      the first).
  """

  count: jax.Array
  weights: jax.Array


def imtl_g_weights(gramian: base.Gramian) -> base.Weights:
  """IMTL-G weights: equal projections of the update on the unit gradients.

  IMTL-G (Liu et al., 2021) looks for the combination ``d = J^T w`` with
  ``sum(w) = 1`` whose projection on each unit gradient ``J[i] / |J[i]|`` is
  the same. With ``d_i = sqrt(G_ii)`` and ``v = pinv(G) d`` (so that
  ``<J[i], J^T v> = |J[i]|`` whenever ``d`` lies in the range of ``G``), the
  weights are ``v / sum(v)``. The Moore-Penrose pseudo-inverse extends the
  method to linearly dependent gradients (Quinton and Rey, 2024; TorchJD's
  ``IMTLG``, whose convention this follows); when ``sum(v)`` vanishes (a zero
  Jacobian, or gradients such as two opposite ones of equal norm, for which
  no such ``d`` exists) the weights are zero.

  Convention: computed on ``G / trace(G)`` (weights invariant under ``J ->
  s J``) and, for accuracy with gradients of very different norms, through
  the Jacobi-scaled Gramian (see :mod:`j6jax._src.aggregators._base`): the
  rank is decided on the cosine matrix, ``d`` is projected onto the range of
  ``G``, the consistent system is solved with a scaled generalised inverse
  and its smallest-norm solution kept, which is ``pinv(G) d``. A zero sum is
  tested relatively, ``|sum(v)| <= 1e-6 sum(|v|)`` (or ``d`` orthogonal to
  the range of ``G`` to ``1e-4``), in place of TorchJD's absolute ``1e-12``,
  which is not scale invariant.

  .. warning::
    When ``d`` is not in the range of ``G`` (more objectives than independent
    gradients, e.g. two opposite gradients of different norms) no direction
    has equal projections and the pseudo-inverse gives a least-squares
    compromise weighted by the gradients' norms, not an impartial update
    (for ``J = [[1, 0], [-2, 0]]`` the weights are ``[-1, 2]``), exactly as
    in TorchJD.

  Args:
    gramian: ``[m, m]`` Gramian ``J J^T``.

  Returns:
    ``[m]`` weights summing to one, or zeros.

  References:
    Liyang Liu, Yi Li, Zhanghui Kuang, Jing-Hao Xue, Yimin Chen, Wenming Yang,
    Qingmin Liao and Wayne Zhang, `Towards Impartial Multi-task Learning
    <https://openreview.net/forum?id=IMPnRXEWpvr>`_, ICLR 2021.

    Pierre Quinton and Valerian Rey, `Jacobian Descent for Multi-Objective
    Optimization <https://arxiv.org/abs/2406.16232>`_, 2024.
  """
  _base.check_gramian(gramian)
  return _imtl_g(_base.as_float(gramian))


@jax.jit
def _imtl_g(gramian: jax.Array) -> jax.Array:
  g, _ = _base.normalize(gramian)
  m = g.shape[0]
  s = _base.jacobi_scale(g)
  lam, vec = jnp.linalg.eigh(_base.cosines(g))
  keep = lam > _base.RTOL * jnp.max(jnp.abs(lam))
  # Orthogonal projector onto range(G) = S^-1 range(C), from an orthonormal
  # basis (leading left singular vectors; masked columns are exactly zero)
  # either of S^-1 V_kept or of S V_dropped, whose complement it is. Each
  # can lose accuracy when the gradients' norms differ widely; the one that
  # better leaves G unchanged, in cosine units |S (P G - G) S|, is used.
  rank = jnp.sum(keep)
  eye = jnp.eye(m, dtype=g.dtype)
  idx = jnp.arange(m)

  def from_basis(basis, count):
    left = jnp.linalg.svd(basis)[0]
    top = (idx < count).astype(g.dtype)
    return _base.einsum("ik,k,jk->ij", left, top, left)

  kept = from_basis(vec * keep[None, :] / s[:, None], rank)
  dropped = eye - from_basis(s[:, None] * vec * (~keep)[None, :], m - rank)

  def error(p):
    return jnp.max(jnp.abs(s[:, None] * (p @ g - g) * s[None, :]))

  proj = jnp.where(error(kept) <= error(dropped), kept, dropped)
  d = jnp.sqrt(jnp.maximum(jnp.diag(g), 0))
  d_range = proj @ d
  inv = jnp.where(keep, 1 / jnp.where(keep, lam, 1), 0)
  # A solution of G v = d_range (S pinv(C) S is a generalised inverse of G),
  # then the smallest-norm one: that is pinv(G) d.
  v = s * _base.einsum("ik,k,jk,j->i", vec, inv, vec, s * d_range)
  v = proj @ v
  total = jnp.sum(v)
  zero = (
    jnp.sqrt(jnp.sum(d_range**2)) <= RANGE_TOL * jnp.sqrt(jnp.sum(d**2))
  ) | (jnp.abs(total) <= SUM_RTOL * jnp.sum(jnp.abs(v)))
  return jnp.where(zero, 0, base.safe_div(v, total))


def imtl_g(*, num_objectives: int = 2) -> optax.GradientTransformationExtraArgs:
  """IMTL-G as an optax transform, see :func:`imtl_g_weights`.

  Args:
    num_objectives: ``m``, the number of objectives (``init`` cannot see
      it). Under ``optax.inject_hyperparams`` list it in ``static_args``.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update(jacobian,
    state, params=None, **extra_args)`` takes the stacked Jacobian (leaves
    ``[m, *param.shape]``) and returns the update in gradient convention and
    an :class:`IMTLGState`.

  Raises:
    ValueError: if ``num_objectives`` is not a positive int; at trace time if
      the Jacobian does not have ``num_objectives`` objectives.

  References:
    Liyang Liu, Yi Li, Zhanghui Kuang, Jing-Hao Xue, Yimin Chen, Wenming Yang,
    Qingmin Liao and Wayne Zhang, `Towards Impartial Multi-task Learning
    <https://openreview.net/forum?id=IMPnRXEWpvr>`_, ICLR 2021.
  """
  m = _base.check_num_objectives(num_objectives)
  return _base.weighting_transform("imtl_g", m, IMTLGState, imtl_g_weights)
