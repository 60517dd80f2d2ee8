"""DualProj: the mean gradient projected onto the dual cone."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from j6jax._src import base
from j6jax._src.aggregators import _base


class DualProjState(NamedTuple):
  """State of :func:`dualproj`.

  Attributes:
    count: ``[]`` int32, number of updates so far.
    weights: ``[m]`` float32, the weights of the last update (zeros before
      the first).
  """

  count: jax.Array
  weights: jax.Array


def dualproj_weights(gramian: base.Gramian) -> base.Weights:
  """DualProj weights: the mean gradient projected onto the dual cone.

  The mean gradient ``J^T 1/m`` is projected onto the dual cone ``{x : J x
  >= 0}``, the closest direction that increases no objective to first order
  (the projection of Equation 11 of Lopez-Paz and Ranzato, 2017, as in
  TorchJD's ``DualProj``): ``w`` solves ``min_w w^T G w`` subject to ``w >=
  1/m``.

  Convention: solved exactly by active-set enumeration on ``G / trace(G)``
  without TorchJD's ``reg_eps`` ridge or ``norm_eps`` threshold (see
  :func:`upgrad_weights`); the weights are invariant under ``J -> s J``,
  ``s > 0``, the ones of smallest ``sum_i |w_i J[i]|^2`` when not unique;
  a zero Gramian gives ``1/m``.

  Args:
    gramian: ``[m, m]`` Gramian ``J J^T``.

  Returns:
    ``[m]`` weights, each ``>= 1/m``.

  References:
    David Lopez-Paz and Marc'Aurelio Ranzato, `Gradient Episodic Memory for
    Continual Learning <https://arxiv.org/abs/1706.08840>`_, NeurIPS 2017.

    Pierre Quinton and Valerian Rey, `Jacobian Descent for Multi-Objective
    Optimization <https://arxiv.org/abs/2406.16232>`_, 2024.
  """
  m = _base.check_gramian(gramian)
  g = _base.as_float(gramian)
  u = jnp.full([1, m], 1 / m, g.dtype)
  return _base.project_dual_cone(g, u)[0]


def dualproj(
  *, num_objectives: int = 2
) -> optax.GradientTransformationExtraArgs:
  """DualProj as an optax transform, see :func:`dualproj_weights`.

  Args:
    num_objectives: ``m``, the number of objectives (``init`` cannot see
      it). Under ``optax.inject_hyperparams`` list it in ``static_args``.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update(jacobian,
    state, params=None, **extra_args)`` takes the stacked Jacobian (leaves
    ``[m, *param.shape]``) and returns the update in gradient convention and
    a :class:`DualProjState`.

  Raises:
    ValueError: if ``num_objectives`` is not a positive int; at trace time if
      the Jacobian does not have ``num_objectives`` objectives.

  References:
    David Lopez-Paz and Marc'Aurelio Ranzato, `Gradient Episodic Memory for
    Continual Learning <https://arxiv.org/abs/1706.08840>`_, NeurIPS 2017.
  """
  m = _base.check_num_objectives(num_objectives)
  return _base.weighting_transform(
    "dualproj", m, DualProjState, dualproj_weights
  )
