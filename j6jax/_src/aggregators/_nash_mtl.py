"""Nash-MTL: the Nash bargaining solution between the objectives."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from j6jax._src import base
from j6jax._src.aggregators import _base

TARGET = 1e-6
"""Newton stops once ``max_i |alpha_i (G alpha)_i - 1| <= TARGET``."""

CAP = 1e12
"""Newton stops (not converged) once an ``alpha_i`` of the trace-normalised
problem exceeds this: the iterates diverge when no solution exists."""


class NashMTLState(NamedTuple):
  """State of :func:`nash_mtl`.

  Attributes:
    count: ``[]`` int32, number of updates so far.
    weights: ``[m]`` float32, the weights of the last update, after the
      ``max_norm`` clipping (zeros before the first update).
    alpha: ``[m]`` float32, the last solution of ``alpha_i (G alpha)_i = 1``
      (before clipping; zeros if that solve did not converge).
    residual: ``[]`` float32, ``max_i |alpha_i (G alpha)_i - 1|`` of the last
      solve (1 before the first).
    converged: ``[]`` bool, whether the last solve reached ``residual <=
      tol``.
  """

  count: jax.Array
  weights: jax.Array
  alpha: jax.Array
  residual: jax.Array
  converged: jax.Array


class _Solution(NamedTuple):
  alpha: jax.Array  # [m], original units; zeros unless converged
  residual: jax.Array  # []
  converged: jax.Array  # [] bool


@jax.jit
def _solve(gramian: jax.Array, max_iters, tol) -> _Solution:
  """Damped Newton on ``alpha^T G alpha / 2 - sum_i log(alpha_i)``."""
  g, trace = _base.normalize(gramian)
  m = g.shape[0]
  eye = jnp.eye(m, dtype=g.dtype)
  tiny = jnp.finfo(g.dtype).tiny

  def residual(a):
    return a * (g @ a) - 1

  def cond(carry):
    i, a, r = carry
    return (i < max_iters) & (jnp.max(jnp.abs(r)) > TARGET) & (jnp.max(a) < CAP)

  def body(carry):
    i, a, r = carry
    # Newton system scaled by diag(a): (I + D G D) y = r, step -a * y. The
    # matrix is >= I, and the step 1 / (1 + lambda) keeps every a_i > 0.
    y = jnp.linalg.solve(eye + a[:, None] * g * a[None, :], r)
    lam = jnp.sqrt(jnp.maximum(r @ y, 0))
    a = jnp.maximum(a * (1 - y / (1 + lam)), tiny)
    return i + 1, a, residual(a)

  a0 = 1 / jnp.sqrt(jnp.maximum(jnp.diag(g), 1e-6))
  _, a, r = jax.lax.while_loop(
    cond, body, (jnp.zeros([], jnp.int32), a0, residual(a0))
  )
  res = jnp.max(jnp.abs(r))
  converged = (res <= jnp.asarray(tol, g.dtype)) & jnp.all(jnp.isfinite(a))
  alpha = jnp.where(converged, base.safe_div(a, jnp.sqrt(trace)), 0)
  return _Solution(alpha, jnp.where(jnp.isfinite(res), res, 1.0), converged)


def _clip(gramian: jax.Array, alpha: jax.Array, max_norm) -> jax.Array:
  if max_norm is None:
    return alpha
  g = _base.as_float(gramian)
  norm = jnp.sqrt(jnp.maximum(_base.einsum("i,ij,j->", alpha, g, alpha), 0))
  limit = jnp.asarray(max_norm, g.dtype)
  return jnp.where(norm > limit, alpha * base.safe_div(limit, norm), alpha)


def _check_options(max_norm, max_iters, tol) -> None:
  if max_norm is not None:
    _base.check_positive("max_norm", max_norm)
  _base.check_positive_int("max_iters", max_iters)
  _base.check_positive("tol", tol)


def nash_mtl_weights(
  gramian: base.Gramian,
  max_norm: float | jax.Array | None = None,
  max_iters: int | jax.Array = 100,
  tol: float | jax.Array = 1e-3,
) -> base.Weights:
  """Nash-MTL weights: ``alpha > 0`` with ``alpha_i (G alpha)_i = 1``.

  Nash-MTL (Navon et al., 2022) treats the objectives as players bargaining
  over a direction ``d = J^T alpha``; the Nash bargaining solution satisfies
  ``<J[i], d> = 1 / alpha_i``, i.e. ``alpha_i (G alpha)_i = 1`` for every
  ``i`` with ``alpha > 0``. Then ``|d|^2 = m`` whatever the scale of ``J``:
  ``alpha`` scales like ``1 / |J|`` and the update is invariant under
  ``J -> s J``, ``s > 0``. With ``max_norm``, ``alpha`` is scaled down so
  that ``|d| <= max_norm`` (as TorchJD's ``NashMTL``, whose default is
  ``max_norm = 1``; here the default is no clipping).

  Solver: the equations are the stationarity conditions of the strictly
  convex, self-concordant ``alpha^T G alpha / 2 - sum_i log(alpha_i)``,
  minimised by damped Newton (step ``1 / (1 + lambda)`` with ``lambda`` the
  Newton decrement, which keeps ``alpha > 0`` and converges globally, then
  quadratically) on ``G / trace(G)``, starting from ``1 / sqrt(G_ii)``,
  within a bounded ``lax.while_loop`` of at most ``max_iters`` steps. This
  replaces the original's sequence of cvxpy programs (``optim_niter = 20``
  in TorchJD), which may stop inaccurate.

  Non-convergence: a positive solution exists exactly when no non-zero
  ``w >= 0`` has ``J^T w = 0`` (Gordan's alternative), that is when the
  point is not Pareto-stationary. For a zero, zero-row, opposite or
  otherwise Pareto-stationary Jacobian the iterates diverge. When the final
  residual ``max_i |alpha_i (G alpha)_i - 1|`` exceeds ``tol`` the weights
  are **zero** (no direction improves every objective, or the solver ran
  out of steps); :func:`nash_mtl` reports the residual and a ``converged``
  flag in its state.

  Args:
    gramian: ``[m, m]`` Gramian ``J J^T``.
    max_norm: optional positive bound on ``|J^T alpha|``.
    max_iters: bound on the Newton steps; a positive integer.
    tol: largest residual accepted as converged; positive.

  Returns:
    ``[m]`` positive weights, or zeros when not converged.

  Raises:
    ValueError: on an invalid option.

  References:
    Aviv Navon, Aviv Shamsian, Idan Achituve, Haggai Maron, Kenji Kawaguchi,
    Gal Chechik and Ethan Fetaya, `Multi-Task Learning as a Bargaining Game
    <https://arxiv.org/abs/2202.01017>`_, ICML 2022.
  """
  _base.check_gramian(gramian)
  _check_options(max_norm, max_iters, tol)
  return _clip(gramian, _solve(gramian, max_iters, tol).alpha, max_norm)


def nash_mtl(
  *,
  num_objectives: int = 2,
  max_norm: float | jax.Array | None = None,
  update_weights_every: int | jax.Array = 1,
  max_iters: int | jax.Array = 100,
  tol: float | jax.Array = 1e-3,
) -> optax.GradientTransformationExtraArgs:
  """Nash-MTL as an optax transform, see :func:`nash_mtl_weights`.

  The state keeps the last solution: with ``update_weights_every = k > 1``
  the equations are solved on steps ``0, k, 2k, ...`` only, and in between
  the stored ``alpha`` (in the units of the Jacobian it was solved for) is
  reused and clipped against the current Jacobian, as TorchJD does. Each
  solve records its residual and ``converged`` flag in the state; a solve
  that does not converge gives zero weights (see :func:`nash_mtl_weights`).

  Args:
    num_objectives: ``m``, the number of objectives (``init`` cannot see
      it). Under ``optax.inject_hyperparams`` list it in ``static_args``
      (``max_norm=None`` stays static by itself).
    max_norm: optional positive bound on the norm of the update.
    update_weights_every: solve every this many steps; a positive integer.
    max_iters: bound on the Newton steps of each solve.
    tol: largest residual accepted as converged.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update(jacobian,
    state, params=None, **extra_args)`` takes the stacked Jacobian (leaves
    ``[m, *param.shape]``) and returns the update in gradient convention and
    a :class:`NashMTLState`.

  Raises:
    ValueError: on an invalid option; at trace time if the Jacobian does not
      have ``num_objectives`` objectives.

  References:
    Aviv Navon, Aviv Shamsian, Idan Achituve, Haggai Maron, Kenji Kawaguchi,
    Gal Chechik and Ethan Fetaya, `Multi-Task Learning as a Bargaining Game
    <https://arxiv.org/abs/2202.01017>`_, ICML 2022.
  """
  m = _base.check_num_objectives(num_objectives)
  _check_options(max_norm, max_iters, tol)
  _base.check_positive_int("update_weights_every", update_weights_every)

  def init_fn(params):
    del params
    return NashMTLState(
      **_base.init_count_weights(m),
      alpha=jnp.zeros([m], jnp.float32),
      residual=jnp.ones([], jnp.float32),
      converged=jnp.zeros([], bool),
    )

  def update_fn(jacobian, state, params=None, **extra_args):
    del extra_args
    _base.check_objectives("nash_mtl", jacobian, params, m)
    g = base.gramian(jacobian)

    def fresh():
      sol = _solve(g, max_iters, tol)
      return _Solution(
        sol.alpha.astype(jnp.float32),
        sol.residual.astype(jnp.float32),
        sol.converged,
      )

    def reuse():
      return _Solution(state.alpha, state.residual, state.converged)

    recompute = state.count % update_weights_every == 0
    sol = jax.lax.cond(recompute, fresh, reuse)
    weights = _clip(g, sol.alpha.astype(g.dtype), max_norm)
    new_state = NashMTLState(
      count=optax.safe_increment(state.count),
      weights=weights.astype(jnp.float32),
      alpha=sol.alpha,
      residual=sol.residual,
      converged=sol.converged,
    )
    return base.combine(jacobian, weights), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
