"""Shared machinery of the baseline aggregators.

Every baseline is a *Gramian weighting*: a pure function from the ``[m, m]``
Gramian ``G = J J^T`` to ``[m]`` weights ``w``, the update being
``w @ J = sum_i w_i J[i]`` (computed leaf by leaf by :func:`base.combine`).
This module holds what the methods share:

- checks of factory options, with messages that name the option, the
  constraint and the value; they skip traced values, so that numeric options
  stay usable under ``optax.inject_hyperparams``;
- :func:`normalize`, the trace normalisation that makes the solvers scale
  free (their weights do not depend on the scale of ``J``);
- exact solvers of the small quadratic programs by active-set enumeration:
  :func:`project_dual_cone` (UPGrad, DualProj) and :func:`simplex_qp`
  (MGDA's min-norm point, CAGrad's inner problem);
- :func:`weighting_transform`, the optax wrapper shared by the stateless
  methods, and :func:`check_objectives`.

Rank decisions. Gradients of very different norms make ``G`` graded (a
gradient 1000 times shorter than another contributes an eigenvalue 1e6 times
smaller), which a cut-off relative to the largest eigenvalue would mistake
for linear dependence. Every linear solve and rank decision is therefore made
on the Jacobi-scaled Gramian ``C = S G S`` with ``S = diag(1 / |J[i]|)`` (the
matrix of cosines; ``S_ii = 1`` for a zero gradient), whose eigenvalues below
``RTOL = 1e-5`` times the largest count as zero: an angular criterion,
independent of the gradients' norms. Gradients within about ``4.5e-3`` rad
of linear dependence are thus treated as dependent. That is the float32
limit: the rounding of a float32 Gramian grows with the number of parameters
(an exactly rank-deficient Jacobian with 2e4 columns shows spurious cosine
eigenvalues near 3e-6).

Active-set enumeration. A convex quadratic program with ``m`` bound
constraints has an optimum whose set of active constraints is one of the
``2^m`` subsets of ``{0, ..., m-1}``. For each subset (static, since ``m`` is
static) the equality-constrained problem is a linear system, solved here with
a Jacobi-scaled symmetric pseudo-inverse (which also covers rank-deficient
Gramians: the systems are consistent, so any generalised inverse solves
them). A candidate is kept if it satisfies the KKT conditions (primal and
dual feasibility and stationarity) up to a relative violation of ``KKT_TOL``
and is about as feasible as the best candidate (``TIER``); among those, the
one with the smallest objective wins, and among near ties (within
``TIE_TOL``) the one of smallest norm in the scaled variables
``v_i |J[i]|``, i.e. the smallest ``sum_i |v_i J[i]|^2`` (within one active
set the scaled pseudo-inverse already returns that one). This only matters
when the optimal weights are not unique (rank-deficient ``G``): the
aggregated update is unique anyway. If no candidate passes (only possible
through rounding), the least violating one is used. The work is ``O(2^m
m^3)``, meant for the small ``m`` (a handful of objectives) of
multi-objective optimisation; every answer is finite.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from j6jax._src import base

RTOL = 1e-5
"""Eigenvalues of a Jacobi-scaled matrix below ``RTOL * max |eigenvalue|``
count as zero (pseudo-inverses, ranks). In float32 the cosine matrix of an
exactly rank-deficient Jacobian has spurious eigenvalues around ``1e-7``."""

KKT_TOL = 1e-4
"""Relative KKT violation up to which an active-set candidate is optimal."""

TIER = 1e-6
"""Candidates compete only if their violation is below ``max(TIER, 10 v)``
with ``v`` the smallest violation (and below ``KKT_TOL``)."""

TIE_TOL = 1e-6
"""Relative objective window within which competing candidates are tied."""

HIGHEST = base.HIGHEST


def einsum(spec: str, *operands: jax.Array) -> jax.Array:
  """``jnp.einsum`` at the highest matmul precision (float32 on TPU too)."""
  return jnp.einsum(spec, *operands, precision=HIGHEST)


# ----------------------------------------------------------------- validation


def _is_traced(value: Any) -> bool:
  return isinstance(value, jax.core.Tracer)


def check_num_objectives(value: Any) -> int:
  """Returns ``value`` as an int after checking it is a positive Python int.

  Raises:
    ValueError: if it is not an int (for instance an array, which is what
      ``optax.inject_hyperparams`` makes of it unless it is listed in
      ``static_args``) or not positive.
  """
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise ValueError(
      "num_objectives must be a Python int (under optax.inject_hyperparams "
      "list it in static_args), but got "
      f"{value!r} of type {type(value).__name__}."
    )
  if value < 1:
    raise ValueError(f"num_objectives must be at least 1, but got {value}.")
  return int(value)


def _scalar(name: str, value: Any) -> float | None:
  """The value as a float, or None when traced; rejects non-scalars."""
  if _is_traced(value):
    return None
  arr = np.asarray(value)
  if arr.shape != () or not np.issubdtype(arr.dtype, np.number):
    raise ValueError(f"{name} must be a real scalar, but got {value!r}.")
  return float(arr)


def check_positive(name: str, value: Any) -> None:
  """Raises ValueError unless ``value > 0`` (skipped when traced)."""
  v = _scalar(name, value)
  if v is not None and not v > 0:
    raise ValueError(f"{name} must be positive, but got {value}.")


def check_nonnegative(name: str, value: Any) -> None:
  """Raises ValueError unless ``value >= 0`` (skipped when traced)."""
  v = _scalar(name, value)
  if v is not None and not v >= 0:
    raise ValueError(f"{name} must be non-negative, but got {value}.")


def check_positive_int(name: str, value: Any) -> None:
  """Raises ValueError unless ``value`` is an integer >= 1 (skipped when
  traced)."""
  v = _scalar(name, value)
  if v is None:
    return
  if isinstance(value, bool) or not np.issubdtype(
    np.asarray(value).dtype, np.integer
  ):
    raise ValueError(f"{name} must be a positive integer, but got {value!r}.")
  if v < 1:
    raise ValueError(f"{name} must be a positive integer, but got {value}.")


def check_choice(name: str, value: Any, allowed: Sequence[str]) -> None:
  """Raises ValueError unless ``value`` is one of ``allowed``."""
  if not isinstance(value, str) or value not in allowed:
    raise ValueError(
      f"{name} must be one of {tuple(allowed)}, but got {value!r}."
    )


def check_gramian(gramian: jax.Array) -> int:
  """Returns ``m`` after checking that ``gramian`` has shape ``[m, m]``."""
  shape = jnp.shape(gramian)
  if len(shape) != 2 or shape[0] != shape[1] or shape[0] < 1:
    raise ValueError(
      f"gramian must be a square [m, m] matrix with m >= 1, but got shape "
      f"{shape}."
    )
  return int(shape[0])


def as_float(gramian: jax.Array) -> jax.Array:
  """The Gramian as a floating array of at least float32."""
  g = jnp.asarray(gramian)
  return g.astype(jnp.promote_types(g.dtype, jnp.float32))


# -------------------------------------------------------------- linear algebra


def normalize(gramian: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Symmetrises ``G`` and divides it by its trace.

  Args:
    gramian: ``[m, m]`` Gramian ``J J^T``.

  Returns:
    ``(G / trace(G), trace(G))``: an ``[m, m]`` matrix with unit trace (all
    entries in ``[-1, 1]`` for a PSD input) and the ``[]`` trace, the squared
    Frobenius norm of ``J``. A zero trace (``J = 0``) gives a zero matrix;
    no threshold is applied, so the normalised matrix, and every weight
    computed from it, is invariant under ``J -> s J`` for any ``s != 0``.
  """
  g = as_float(gramian)
  g = 0.5 * (g + g.T)
  trace = jnp.trace(g)
  return base.safe_div(g, trace), trace


def pinv_sym(a: jax.Array, rtol: float = RTOL) -> jax.Array:
  """Pseudo-inverse of a symmetric ``[k, k]`` matrix through ``eigh``.

  Eigenvalues with ``|lambda| <= rtol * max |lambda|`` are treated as zero;
  a zero matrix gives a zero pseudo-inverse.
  """
  lam, vec = jnp.linalg.eigh(a)
  top = jnp.max(jnp.abs(lam))
  keep = jnp.abs(lam) > rtol * top
  inv = jnp.where(keep, 1 / jnp.where(keep, lam, 1), 0)
  return einsum("ik,k,jk->ij", vec, inv, vec)


def jacobi_scale(g: jax.Array) -> jax.Array:
  """``[m]``: ``1 / sqrt(G_ii)``, or 1 where ``G_ii = 0`` (a zero gradient)."""
  d = jnp.diag(g)
  ok = d > 0
  return jnp.where(ok, 1 / jnp.sqrt(jnp.where(ok, d, 1)), 1)


def cosines(g: jax.Array) -> jax.Array:
  """``[m, m]`` the Jacobi-scaled Gramian ``S G S`` (cosines of the angles
  between gradients; zero rows and columns for zero gradients)."""
  s = jacobi_scale(g)
  return s[:, None] * g * s[None, :]


def numerical_rank(g: jax.Array) -> jax.Array:
  """``[]`` int32: the rank of ``G`` decided on its cosine matrix."""
  lam = jnp.linalg.eigvalsh(cosines(g))
  return jnp.sum(lam > RTOL * jnp.max(jnp.abs(lam))).astype(jnp.int32)


@functools.cache
def subsets(m: int) -> np.ndarray:
  """All ``2^m`` subsets of ``range(m)`` as a ``[2^m, m]`` 0/1 array.

  Row ``s`` is the binary expansion of ``s`` (bit ``i`` is column ``i``), so
  row 0 is the empty set and the last row the full set.
  """
  s = np.arange(2**m)[:, None]
  return ((s >> np.arange(m)[None, :]) & 1).astype(np.float32)


def _select(
  cands: jax.Array,
  viol: jax.Array,
  obj: jax.Array,
  floor: jax.Array,
  scale: jax.Array,
) -> jax.Array:
  """Picks one candidate per problem (see the module docstring).

  Args:
    cands: ``[..., S, k]`` candidate solutions.
    viol: ``[..., S]`` relative KKT violations.
    obj: ``[..., S]`` objective values.
    floor: ``[...]`` scale of the objective, for the near-tie window.
    scale: ``[k]`` the Jacobi scale ``s``; ties go to the smallest
      ``|cand / s|``.

  Returns:
    ``[..., k]`` the chosen candidate of each problem.
  """
  # Only candidates about as feasible as the best one compete: a slightly
  # infeasible candidate can have a slightly smaller objective.
  least = jnp.min(viol, axis=-1, keepdims=True)
  feasible = (viol <= KKT_TOL) & (viol <= jnp.maximum(TIER, 10 * least))
  any_feasible = jnp.any(feasible, axis=-1)
  best = jnp.min(jnp.where(feasible, obj, jnp.inf), axis=-1)
  window = TIE_TOL * (jnp.abs(jnp.where(any_feasible, best, 0)) + floor)
  near = feasible & (obj <= (best + window)[..., None])
  sq = jnp.sum((cands / scale) ** 2, axis=-1)
  idx = jnp.where(
    any_feasible,
    jnp.argmin(jnp.where(near, sq, jnp.inf), axis=-1),
    jnp.argmin(viol, axis=-1),
  )
  return jnp.take_along_axis(cands, idx[..., None, None], axis=-2)[..., 0, :]


@jax.jit
def project_dual_cone(gramian: jax.Array, u: jax.Array) -> jax.Array:
  """Weights of the projections of ``J^T u`` onto the dual cone of ``J``.

  The dual cone of the rows of ``J`` is ``{x : J x >= 0}``. For each row
  ``u`` of ``U``, the projection of ``J^T u`` onto it is ``J^T v`` with
  ``v`` solving ``min_v v^T G v`` subject to ``v >= u`` (Proposition 1 of
  Quinton and Rey, 2024). It is solved exactly, without regularisation, by
  active-set enumeration on the trace-normalised Gramian: for a set ``A`` of
  active bounds ``v_A = u_A`` and ``v_F = -pinv(G_FF) G_FA u_A`` on the free
  set. The projection ``J^T v`` is unique; when ``v`` is not (rank-deficient
  ``G``), the optimal ``v`` of smallest ``sum_i |v_i J[i]|^2`` is returned.

  Args:
    gramian: ``[m, m]`` Gramian.
    u: ``[k, m]`` weights of the vectors to project.

  Returns:
    ``[k, m]`` weights ``v`` with ``J^T v`` the projections, invariant under
    ``G -> s G`` for ``s > 0``.
  """
  g, _ = normalize(gramian)
  u = jnp.asarray(u, g.dtype)
  m = g.shape[0]
  free = jnp.asarray(subsets(m), g.dtype)  # [S, m]
  act = 1 - free
  s = jacobi_scale(g)
  c = cosines(g)
  # S pinv(C_FF) S is a generalised inverse of G_FF, accurate for graded G.
  pinv = jax.vmap(pinv_sym)(free[:, :, None] * c[None] * free[:, None, :])
  # Masking again keeps v_A = u_A exact: eigh may leak rounding from the
  # zero rows of C_F into the kept eigenvectors.
  pinv = (free * s)[:, :, None] * pinv * (free * s)[:, None, :]
  # v = act * u - pinv(G_FF) G (act * u), as one linear map per subset.
  maps = (jnp.eye(m, dtype=g.dtype)[None] - einsum("sik,kj->sij", pinv, g)) * (
    act[:, None, :]
  )  # [S, m, m]
  v = einsum("sij,kj->ksi", maps, u)  # [k, S, m]
  gv = einsum("ij,ksj->ksi", g, v)
  # A missed bound counts relative to the bounds' size (and to the weight
  # itself, whose rounding grows with it) and, in the scaled variables v / s
  # (each weight times the norm of its gradient), relative to their total;
  # the dual and stationarity residuals (G v)_j s_j, i.e. <J[j] / |J[j]|, x>
  # with x = J^T v, relative to that total too.
  total = jnp.sum((jnp.abs(v) + jnp.abs(u)[:, None]) / s, axis=-1)  # [k, S]
  miss = free * jax.nn.relu(u[:, None, :] - v)  # [k, S, m]
  bound = jnp.maximum(jnp.max(jnp.abs(u), axis=-1)[:, None, None], jnp.abs(v))
  primal = jnp.maximum(
    jnp.max(base.safe_div(miss, bound), axis=-1),
    base.safe_div(jnp.max(miss / s, axis=-1), total),
  )
  dual = jnp.max(act * jax.nn.relu(-gv) * s, axis=-1)
  station = jnp.max(free * jnp.abs(gv) * s, axis=-1)
  viol = jnp.maximum(primal, base.safe_div(jnp.maximum(dual, station), total))
  obj = jnp.sum(v * gv, axis=-1)
  floor = jnp.max(jnp.abs(g)) * jnp.max(jnp.abs(u), axis=-1) ** 2
  return _select(v, viol, obj, floor, s)


class SimplexCandidates:
  """Active-set candidates of ``min_w w^T G w / 2 + q^T w`` on the simplex.

  For each non-empty support ``F`` the KKT system ``[[G_FF, 1], [1^T, 0]]
  [w_F; nu] = [-q_F; 1]`` (with ``w = 0`` off ``F``) is solved once through a
  pseudo-inverse, as an affine map of ``q``, so that a family of linear terms
  (CAGrad's bisection) costs one factorisation. It is solved in the scaled
  variables ``y = w / s`` (``s`` from :func:`jacobi_scale`), where the block
  is the cosine matrix and the border ``s_F / |s_F|`` has unit norm.

  Attributes:
    g: ``[m, m]`` the trace-normalised Gramian the problem is posed on.
    free: ``[S, m]`` supports, ``S = 2^m - 1``.
    offset: ``[S, m + 1]`` the solution ``[w; nu]`` for ``q = 0``.
    slope: ``[S, m + 1, m]`` its derivative with respect to ``q``.
  """

  def __init__(self, g: jax.Array):
    m = g.shape[0]
    free = jnp.asarray(subsets(m)[1:], g.dtype)  # [S, m]
    s = jacobi_scale(g)
    block = free[:, :, None] * cosines(g)[None] * free[:, None, :]
    block = block + jax.vmap(jnp.diag)(1 - free)
    size = jnp.sqrt(jnp.sum(free * s**2, axis=1))  # |s_F|, [S]
    border = free * s / size[:, None]  # [S, m]
    kkt = jnp.concatenate(
      [
        jnp.concatenate([block, border[:, :, None]], axis=2),
        jnp.concatenate([border, jnp.zeros_like(free[:, :1])], axis=1)[:, None],
      ],
      axis=1,
    )  # [S, m + 1, m + 1]
    pinv = jax.vmap(pinv_sym)(kkt)
    # [y; mu] = pinv @ [-(s q)_F; 1 / |s_F|], then w = s y, nu = mu / |s_F|.
    unscale = jnp.concatenate(
      [jnp.tile(s, (free.shape[0], 1)), 1 / size[:, None]], 1
    )
    self.g = g
    self.free = free
    self.offset = unscale * pinv[:, :, m] / size[:, None]
    self.slope = (
      -(unscale[:, :, None] * pinv[:, :, :m]) * (free * s)[:, None, :]
    )

  def solve(self, q: jax.Array) -> jax.Array:
    """The minimiser ``[m]`` on the simplex for the linear term ``q [m]``."""
    g, free = self.g, self.free
    m = g.shape[0]
    z = self.offset + einsum("sij,j->si", self.slope, q)
    w, nu = free * z[:, :m], z[:, m]
    grad = einsum("ij,sj->si", g, w) + q[None] + nu[:, None]
    # Violations in the scaled variables w / s, as in project_dual_cone;
    # each gradient component relative to the size of its three terms.
    s = jacobi_scale(g)
    total = jnp.sum(jnp.abs(w) / s, axis=-1, keepdims=True)  # [S, 1]
    miss = jax.nn.relu(-w)
    primal = jnp.maximum(
      jnp.max(miss, axis=-1),
      base.safe_div(jnp.max(miss / s, axis=-1), total[:, 0]),
    )
    primal = jnp.maximum(primal, jnp.abs(jnp.sum(w, axis=-1) - 1))
    size = total + s * (jnp.abs(q)[None] + jnp.abs(nu)[:, None])  # [S, m]
    resid = base.safe_div(s * grad, size)
    dual = jnp.max((1 - free) * jax.nn.relu(-resid), axis=-1)
    station = jnp.max(free * jnp.abs(resid), axis=-1)
    viol = jnp.maximum(primal, jnp.maximum(dual, station))
    gmax = jnp.max(jnp.abs(g))
    qmax = jnp.max(jnp.abs(q))
    obj = 0.5 * einsum("si,ij,sj->s", w, g, w) + w @ q
    return _select(w, viol, obj, gmax + qmax, s)


@jax.jit
def simplex_qp(gramian: jax.Array, q: jax.Array | None = None) -> jax.Array:
  """Exact ``argmin_w w^T G w / 2 + q^T w`` over the probability simplex.

  Posed on the trace-normalised Gramian ``G / trace(G)`` (pass ``q`` in those
  units). With ``q = None`` this is the min-norm point of the convex hull of
  the rows of ``J`` (MGDA).

  Args:
    gramian: ``[m, m]`` Gramian.
    q: optional ``[m]`` linear term.

  Returns:
    ``[m]`` weights, non-negative and summing to one.
  """
  g, _ = normalize(gramian)
  q = jnp.zeros(g.shape[0], g.dtype) if q is None else jnp.asarray(q, g.dtype)
  return SimplexCandidates(g).solve(q)


# ---------------------------------------------------------------- transforms


def check_objectives(
  name: str, jacobian: base.Jacobian, params: base.Params | None, expected: int
) -> int:
  """Checks the Jacobian (and its params) and that it has ``expected`` rows.

  Raises:
    ValueError: naming both numbers when the Jacobian's leading axis differs
      from the ``num_objectives`` the transform was built with.
  """
  m = base.check_jacobian(jacobian, params)
  if m != expected:
    raise ValueError(
      f"{name}: the Jacobian has {m} objectives (leading axis of its "
      f"leaves), but the transform was built with num_objectives="
      f"{expected}."
    )
  return m


def init_count_weights(num_objectives: int) -> dict[str, jax.Array]:
  """The fields ``count`` (``[]`` int32, 0) and ``weights`` (``[m]``
  float32, zeros) every state starts with."""
  return {
    "count": jnp.zeros([], jnp.int32),
    "weights": jnp.zeros([num_objectives], jnp.float32),
  }


def weighting_transform(
  name: str,
  num_objectives: int,
  state_cls: Callable[..., Any],
  weight_fn: Callable[[jax.Array], jax.Array],
) -> optax.GradientTransformationExtraArgs:
  """An optax transform that aggregates a Jacobian with a Gramian weighting.

  Args:
    name: the factory's name, for error messages.
    num_objectives: ``m``, checked against the Jacobian at trace time.
    state_cls: a NamedTuple with fields ``count`` and ``weights``.
    weight_fn: ``[m, m]`` Gramian to ``[m]`` weights.

  Returns:
    ``init(params)`` giving ``state_cls(count=0, weights=zeros([m]))`` and
    ``update(jacobian, state, params=None, **extra_args)`` giving
    ``(sum_i w_i J[i], state)``; extra arguments are ignored.
  """

  def init_fn(params):
    del params
    return state_cls(**init_count_weights(num_objectives))

  def update_fn(jacobian, state, params=None, **extra_args):
    del extra_args
    check_objectives(name, jacobian, params, num_objectives)
    weights = weight_fn(base.gramian(jacobian))
    new_state = state_cls(
      count=optax.safe_increment(state.count),
      weights=weights.astype(state.weights.dtype),
    )
    return base.combine(jacobian, weights), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
