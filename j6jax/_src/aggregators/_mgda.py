"""MGDA: the min-norm point of the convex hull of the gradients."""

from __future__ import annotations

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from j6jax._src import base
from j6jax._src.aggregators import _base

MGDASolver = Literal["frank_wolfe", "active_set"]
_SOLVERS = ("frank_wolfe", "active_set")


class MGDAState(NamedTuple):
  """State of :func:`mgda`.

  Attributes:
    count: ``[]`` int32, number of updates so far.
    weights: ``[m]`` float32, the weights of the last update (zeros before
      the first).
  """

  count: jax.Array
  weights: jax.Array


@jax.jit
def _frank_wolfe(g: jax.Array, epsilon, max_iters) -> jax.Array:
  m = g.shape[0]
  eps = jnp.asarray(epsilon, g.dtype)

  def cond(carry):
    i, _, done = carry
    return (i < max_iters) & ~done

  def body(carry):
    i, alpha, _ = carry
    g_alpha = g @ alpha
    t = jnp.argmin(g_alpha)  # ties go to the lowest index
    a = g_alpha[t]  # <J^T alpha, J[t]>
    b = alpha @ g_alpha  # |J^T alpha|^2
    c = g[t, t]  # |J[t]|^2
    # Exact line search on the segment [J^T alpha, J[t]]; in the last branch
    # b > a and c > a, so the denominator is positive.
    gamma = jnp.where(
      c <= a, 1.0, jnp.where(b <= a, 0.0, base.safe_div(b - a, b + c - 2 * a))
    ).astype(g.dtype)
    alpha = (1 - gamma) * alpha + gamma * jax.nn.one_hot(t, m, dtype=g.dtype)
    return i + 1, alpha, gamma < eps

  init = (
    jnp.zeros([], jnp.int32),
    jnp.full([m], 1 / m, g.dtype),
    jnp.zeros([], bool),
  )
  return jax.lax.while_loop(cond, body, init)[1]


def mgda_weights(
  gramian: base.Gramian,
  epsilon: float | jax.Array = 1e-3,
  max_iters: int | jax.Array = 100,
  solver: MGDASolver = "frank_wolfe",
) -> base.Weights:
  """MGDA weights: the min-norm convex combination of the gradients.

  MGDA (Desideri, 2012) steps along ``d = J^T w`` with ``w`` minimising
  ``|J^T w|^2 = w^T G w`` over the probability simplex; ``d`` is a common
  descent direction, zero exactly when the point is Pareto-stationary. Two
  solvers:

  - ``"frank_wolfe"`` (default): Algorithm 2 of Sener and Koltun (2018), as
    in TorchJD: start at ``w = 1/m``, move towards the vertex ``e_t`` with
    ``t = argmin (G w)_t`` (ties to the lowest index) with exact line search
    step ``gamma``; stop after the first step with ``gamma < epsilon`` or
    after ``max_iters`` steps (a bounded ``lax.while_loop``, so it never
    hangs). No step divides by zero: identical or zero gradients give
    ``gamma = 1`` (for instance ``[1, 0]`` for two identical rows).
  - ``"active_set"``: the exact minimiser by enumerating the ``2^m``
    supports (see :mod:`j6jax._src.aggregators._base`); ``epsilon`` and
    ``max_iters`` are unused. Among several optimal weight vectors
    (rank-deficient ``G``) the one of smallest ``sum_i |w_i J[i]|^2`` is
    returned, e.g. ``[0.5, 0.5]`` for two identical rows.

  Both run on ``G / trace(G)``, so the weights are invariant under
  ``J -> s J``; a zero Gramian gives ``[1, 0, ..., 0]`` (Frank-Wolfe) or
  ``1/m`` (active set), and a zero update either way.

  Args:
    gramian: ``[m, m]`` Gramian ``J J^T``.
    epsilon: Frank-Wolfe stops once a step ``gamma < epsilon``; positive.
    max_iters: bound on the Frank-Wolfe steps; a positive integer.
    solver: ``"frank_wolfe"`` or ``"active_set"`` (static).

  Returns:
    ``[m]`` non-negative weights summing to one.

  Raises:
    ValueError: on an invalid option or a non-square Gramian.

  References:
    Jean-Antoine Desideri, `Multiple-gradient descent algorithm (MGDA) for
    multiobjective optimization
    <https://doi.org/10.1016/j.crma.2012.03.014>`_, Comptes Rendus
    Mathematique, 2012.

    Ozan Sener and Vladlen Koltun, `Multi-Task Learning as Multi-Objective
    Optimization <https://arxiv.org/abs/1810.04650>`_, NeurIPS 2018.
  """
  _base.check_gramian(gramian)
  _check_options(epsilon, max_iters, solver)
  g, _ = _base.normalize(gramian)
  if solver == "active_set":
    return _base.simplex_qp(g)
  return _frank_wolfe(g, epsilon, max_iters)


def _check_options(epsilon, max_iters, solver) -> None:
  _base.check_positive("epsilon", epsilon)
  _base.check_positive_int("max_iters", max_iters)
  _base.check_choice("solver", solver, _SOLVERS)


def mgda(
  *,
  num_objectives: int = 2,
  epsilon: float | jax.Array = 1e-3,
  max_iters: int | jax.Array = 100,
  solver: MGDASolver = "frank_wolfe",
) -> optax.GradientTransformationExtraArgs:
  """MGDA as an optax transform: the update is ``J^T w``, see
  :func:`mgda_weights`.

  Args:
    num_objectives: ``m``, the number of objectives (``init`` cannot see
      it). Under ``optax.inject_hyperparams`` list it in ``static_args``
      (``solver`` is a string and stays static by itself).
    epsilon: Frank-Wolfe stopping threshold on the step; positive.
    max_iters: bound on the Frank-Wolfe steps; a positive integer.
    solver: ``"frank_wolfe"`` (TorchJD's) or ``"active_set"`` (exact).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update(jacobian,
    state, params=None, **extra_args)`` takes the stacked Jacobian (leaves
    ``[m, *param.shape]``) and returns the update in gradient convention and
    an :class:`MGDAState`.

  Raises:
    ValueError: on an invalid option; at trace time if the Jacobian does not
      have ``num_objectives`` objectives.

  References:
    Jean-Antoine Desideri, `Multiple-gradient descent algorithm (MGDA) for
    multiobjective optimization
    <https://doi.org/10.1016/j.crma.2012.03.014>`_, Comptes Rendus
    Mathematique, 2012.

    Ozan Sener and Vladlen Koltun, `Multi-Task Learning as Multi-Objective
    Optimization <https://arxiv.org/abs/1810.04650>`_, NeurIPS 2018.
  """
  m = _base.check_num_objectives(num_objectives)
  _check_options(epsilon, max_iters, solver)
  return _base.weighting_transform(
    "mgda",
    m,
    MGDAState,
    lambda g: mgda_weights(g, epsilon, max_iters, solver),
  )
