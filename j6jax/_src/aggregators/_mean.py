"""The mean of the objectives' gradients."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from j6jax._src import base
from j6jax._src.aggregators import _base


class MeanState(NamedTuple):
  """State of :func:`mean`.

  Attributes:
    count: ``[]`` int32, number of updates so far.
    weights: ``[m]`` float32, the weights of the last update (zeros before
      the first).
  """

  count: jax.Array
  weights: jax.Array


def mean_weights(gramian: base.Gramian) -> base.Weights:
  """Uniform weights ``1 / m``: the update is the mean of the rows of ``J``.

  This is TorchJD's ``Mean``.

  Args:
    gramian: ``[m, m]`` Gramian (only its size is used).

  Returns:
    ``[m]`` weights ``1 / m``.
  """
  m = _base.check_gramian(gramian)
  return jnp.full([m], 1 / m, _base.as_float(gramian).dtype)


def mean(*, num_objectives: int = 2) -> optax.GradientTransformationExtraArgs:
  """The mean gradient ``(1 / m) sum_i J[i]``, as an optax transform.

  Args:
    num_objectives: ``m``, the number of objectives (``init`` cannot see
      it). Under ``optax.inject_hyperparams`` list it in ``static_args``.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update(jacobian,
    state, params=None, **extra_args)`` takes the stacked Jacobian (leaves
    ``[m, *param.shape]``) and returns the update in gradient convention and
    a :class:`MeanState`.

  Raises:
    ValueError: if ``num_objectives`` is not a positive int; at trace time if
      the Jacobian does not have ``num_objectives`` objectives.
  """
  m = _base.check_num_objectives(num_objectives)
  return _base.weighting_transform("mean", m, MeanState, mean_weights)
