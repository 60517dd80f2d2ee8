"""UPGrad: the mean of each gradient projected onto the dual cone."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from j6jax._src import base
from j6jax._src.aggregators import _base


class UPGradState(NamedTuple):
  """State of :func:`upgrad`.

  Attributes:
    count: ``[]`` int32, number of updates so far.
    weights: ``[m]`` float32, the weights of the last update (zeros before
      the first).
  """

  count: jax.Array
  weights: jax.Array


def upgrad_weights(gramian: base.Gramian) -> base.Weights:
  """UPGrad weights: the mean of the rows projected onto the dual cone.

  UPGrad (Quinton and Rey, 2024) projects each gradient ``J[i]`` onto the
  dual cone ``{x : J x >= 0}`` of the rows, the set of directions that
  increase no objective to first order, and averages the projections. The
  projection of ``J[i] / m`` is ``J^T v_i`` with ``v_i`` solving ``min_v v^T
  G v`` subject to ``v >= e_i / m``; the weights are ``sum_i v_i``. This
  matches TorchJD's ``UPGrad`` with its default (mean) preference vector.

  Convention: the quadratic programs are solved exactly by active-set
  enumeration (see :func:`j6jax._src.aggregators._base.project_dual_cone`)
  on ``G / trace(G)``, without any ridge. TorchJD instead adds ``reg_eps =
  1e-4`` times the identity to ``G / trace(G)``, which moves its weights by
  about ``1e-4 / lambda_min(G / trace(G))`` relative: little for
  well-conditioned gradients, but up to order one when a gradient is short
  or the gradients are nearly dependent (for ``J = [[1, 0], [-0.01, 0]]``
  the exact update is zero, TorchJD's is not); and it treats a trace below
  ``norm_eps = 1e-4`` as zero, so that a Jacobian with squared Frobenius
  norm below ``1e-4`` aggregates to the plain mean. Here the weights are
  invariant under ``J -> s J`` for every ``s > 0`` (the update scales by
  ``s``). When the weights are not unique (rank-deficient ``G``) the update
  still is; the optimal weights of smallest ``sum_i |w_i J[i]|^2`` are
  returned. A zero Gramian gives ``1/m``.

  Args:
    gramian: ``[m, m]`` Gramian ``J J^T``.

  Returns:
    ``[m]`` weights, each ``>= 1/m``.

  References:
    Pierre Quinton and Valerian Rey, `Jacobian Descent for Multi-Objective
    Optimization <https://arxiv.org/abs/2406.16232>`_, 2024.
  """
  m = _base.check_gramian(gramian)
  g = _base.as_float(gramian)
  u = jnp.eye(m, dtype=g.dtype) / m
  return jnp.sum(_base.project_dual_cone(g, u), axis=0)


def upgrad(*, num_objectives: int = 2) -> optax.GradientTransformationExtraArgs:
  """UPGrad as an optax transform, see :func:`upgrad_weights`.

  Args:
    num_objectives: ``m``, the number of objectives (``init`` cannot see
      it). Under ``optax.inject_hyperparams`` list it in ``static_args``.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update(jacobian,
    state, params=None, **extra_args)`` takes the stacked Jacobian (leaves
    ``[m, *param.shape]``) and returns the update in gradient convention and
    an :class:`UPGradState`.

  Raises:
    ValueError: if ``num_objectives`` is not a positive int; at trace time if
      the Jacobian does not have ``num_objectives`` objectives.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> from j6jax import aggregators
    >>> tx = optax.chain(aggregators.upgrad(), optax.sgd(1.0))
    >>> jac = {"w": jnp.array([[1.0, 0.0], [-1.0, 1.0]])}
    >>> updates, _ = tx.update(jac, tx.init({"w": jnp.zeros(2)}))
    >>> [round(x, 4) for x in updates["w"].tolist()]
    [-0.25, -0.75]

  References:
    Pierre Quinton and Valerian Rey, `Jacobian Descent for Multi-Objective
    Optimization <https://arxiv.org/abs/2406.16232>`_, 2024.
  """
  m = _base.check_num_objectives(num_objectives)
  return _base.weighting_transform("upgrad", m, UPGradState, upgrad_weights)
