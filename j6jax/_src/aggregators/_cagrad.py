"""CAGrad: the best worst-case improvement in a ball around the mean."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from j6jax._src import base
from j6jax._src.aggregators import _base

BISECTION_STEPS = 40
"""Bisection steps on ``|J^T w|`` (the bracket shrinks by ``2^-40``)."""

STATIONARY_TOL = 1e-6
"""``|J^T w|^2 <= STATIONARY_TOL (sum_i w_i |J[i]|)^2`` counts as
Pareto-stationary: the combination cancels to 1e-3 of its parts."""


class CAGradState(NamedTuple):
  """State of :func:`cagrad`.

  Attributes:
    count: ``[]`` int32, number of updates so far.
    weights: ``[m]`` float32, the weights of the last update (zeros before
      the first).
  """

  count: jax.Array
  weights: jax.Array


def cagrad_weights(
  gramian: base.Gramian, c: float | jax.Array = 0.5
) -> base.Weights:
  """CAGrad weights: maximise the worst improvement near the mean gradient.

  CAGrad (Liu et al., 2021, Algorithm 1) looks for the direction ``d`` in
  the ball ``|d - g0| <= c |g0|`` around the mean gradient ``g0 = J^T 1/m``
  that maximises the smallest first-order improvement ``min_i <J[i], d>``.
  By duality ``d = g0 + (c |g0| / |g_w|) g_w`` with ``g_w = J^T w`` and
  ``w`` minimising ``<g_w, g0> + c |g0| |g_w|`` over the simplex, so the
  weights are ``1/m + (c |g0| / |g_w|) w``. No rescaling by ``1 / (1 + c)``
  is applied (TorchJD's convention); ``c = 0`` gives the mean.

  Solver: the inner problem is not quadratic, but its minimiser also
  minimises ``|g_w + s g0|^2`` (the projection of ``-s g0`` onto the convex
  hull of the gradients) for the ``s = |g_w| / (c |g0|)`` at which the two
  first-order conditions coincide. j6jax solves those simplex QPs exactly
  (active-set enumeration, see :mod:`j6jax._src.aggregators._base`) and
  finds the fixed point ``t = |g_w(t)|`` by a bisection of
  ``BISECTION_STEPS`` steps, all on ``G / trace(G)``: the weights are
  invariant under ``J -> s J`` for every ``s > 0`` (TorchJD instead solves
  the cone program with Clarabel and treats a Jacobian whose squared
  Frobenius norm is below ``norm_eps = 1e-4`` as zero).

  Degenerate case: if the optimal ``g_w`` vanishes (the gradients are
  Pareto-stationary, ``0`` is in their convex hull, and the best worst-case
  improvement is zero) the formula is undefined: every ``d`` of the ball with
  ``J d >= 0`` is optimal. j6jax returns the one closest to ``g0``, the
  projection of ``g0`` onto the dual cone ``{x : J x >= 0}``, i.e. the weights
  of :func:`dualproj_weights` (it lies in the ball, since the ball meets the
  cone exactly when the optimal value is zero; should rounding put it outside,
  it is pulled back along the segment to ``g0``, onto the ball's point closest
  to the cone). TorchJD returns zero weights there, which is not in the ball
  when ``c < 1``. Numerically, ``g_w`` counts as zero when it cancels to
  ``1e-3`` of its parts, ``|g_w| <= 1e-3 sum_i w_i |J[i]|``
  (``STATIONARY_TOL``: computed from a float32 Gramian, ``|g_w|^2`` carries an
  error of about ``1e-7 (sum_i w_i |J[i]|)^2``); TorchJD's float64 test,
  ``|g_w| < 1e-4 |J|_F``, is in units of the whole Jacobian, so it also fires
  on legitimate answers dominated by one short gradient. A zero Jacobian gives
  weights ``1/m`` (and a zero update).

  Args:
    gramian: ``[m, m]`` Gramian ``J J^T``.
    c: radius of the ball relative to ``|g0|``; non-negative. The paper
      uses ``c`` in ``[0.1, 0.9]``.

  Returns:
    ``[m]`` weights.

  Raises:
    ValueError: if ``c < 0``.

  References:
    Bo Liu, Xingchao Liu, Xiaojie Jin, Peter Stone and Qiang Liu,
    `Conflict-Averse Gradient Descent for Multi-task Learning
    <https://arxiv.org/abs/2110.14048>`_, NeurIPS 2021.
  """
  _base.check_gramian(gramian)
  _base.check_nonnegative("c", c)
  return _cagrad(_base.as_float(gramian), c)


@jax.jit
def _cagrad(gramian: jax.Array, c: jax.Array) -> jax.Array:
  m = gramian.shape[0]
  g, _ = _base.normalize(gramian)
  c = jnp.asarray(c, g.dtype)
  u0 = jnp.full([m], 1 / m, g.dtype)
  b = g @ u0  # J g0
  radius = c * jnp.sqrt(jnp.maximum(u0 @ b, 0))  # c |g0|
  safe_radius = jnp.where(radius > 0, radius, 1)
  candidates = _base.SimplexCandidates(g)

  def solve(t):
    return candidates.solve((t / safe_radius) * b)

  def norm(w):
    return jnp.sqrt(jnp.maximum(_base.einsum("i,ij,j->", w, g, w), 0))

  def bisect(_, bracket):
    lo, hi = bracket
    mid = 0.5 * (lo + hi)
    above = norm(solve(mid)) > mid
    return jnp.where(above, mid, lo), jnp.where(above, hi, mid)

  # |g_w| never exceeds the largest gradient norm, so the fixed point of
  # t -> |g_w(t)| lies in [0, max_i |J[i]|].
  top = jnp.sqrt(jnp.max(jnp.diag(g)))
  lo, hi = jax.lax.fori_loop(
    0, BISECTION_STEPS, bisect, (jnp.zeros_like(top), top)
  )
  w = solve(0.5 * (lo + hi))
  gw = norm(w)
  weights = u0 + base.safe_div(radius, gw) * w
  parts = w @ jnp.sqrt(jnp.maximum(jnp.diag(g), 0))  # sum_i w_i |J[i]|
  stationary = gw**2 <= STATIONARY_TOL * parts**2
  # The dual-cone point closest to g0, pulled back onto the ball if rounding
  # put it outside (the ball then only just misses the cone).
  closest = _base.project_dual_cone(g, u0[None])[0]
  step = closest - u0
  dist = jnp.sqrt(jnp.maximum(_base.einsum("i,ij,j->", step, g, step), 0))
  closest = u0 + jnp.minimum(1, base.safe_div(radius, dist)) * step
  weights = jnp.where(stationary, closest, weights)
  return jnp.where(c == 0, u0, weights)


def cagrad(
  c: float | jax.Array = 0.5, *, num_objectives: int = 2
) -> optax.GradientTransformationExtraArgs:
  """CAGrad as an optax transform, see :func:`cagrad_weights`.

  Args:
    c: radius of the ball around the mean gradient, relative to its norm;
      non-negative. A number, so it can be scheduled with
      ``optax.inject_hyperparams``.
    num_objectives: ``m``, the number of objectives (``init`` cannot see
      it). Under ``optax.inject_hyperparams`` list it in ``static_args``.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update(jacobian,
    state, params=None, **extra_args)`` takes the stacked Jacobian (leaves
    ``[m, *param.shape]``) and returns the update in gradient convention and
    a :class:`CAGradState`.

  Raises:
    ValueError: if ``c < 0`` or ``num_objectives`` is not a positive int; at
      trace time if the Jacobian does not have ``num_objectives`` objectives.

  References:
    Bo Liu, Xingchao Liu, Xiaojie Jin, Peter Stone and Qiang Liu,
    `Conflict-Averse Gradient Descent for Multi-task Learning
    <https://arxiv.org/abs/2110.14048>`_, NeurIPS 2021.
  """
  m = _base.check_num_objectives(num_objectives)
  _base.check_nonnegative("c", c)
  return _base.weighting_transform(
    "cagrad", m, CAGradState, lambda g: cagrad_weights(g, c)
  )
