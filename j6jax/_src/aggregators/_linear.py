"""Scalarisation with fixed weights: the update ``sum_i w_i J[i]``."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from j6jax._src import base
from j6jax._src.aggregators import _base


class LinearState(NamedTuple):
  """State of :func:`linear`.

  Attributes:
    count: ``[]`` int32, number of updates so far.
    weights: ``[m]`` float32, the weights of the last update (zeros before
      the first).
  """

  count: jax.Array
  weights: jax.Array


def _check_weights(weights: base.Weights) -> int:
  if isinstance(weights, jax.core.Tracer):
    shape = weights.shape
  else:
    arr = np.asarray(weights)
    shape = arr.shape
    if arr.ndim == 1 and not np.issubdtype(arr.dtype, np.number):
      raise ValueError(f"weights must be real numbers, but got {weights!r}.")
  if len(shape) != 1 or shape[0] < 1:
    raise ValueError(
      "weights must be a non-empty 1-D array of shape [m], but got shape "
      f"{shape}."
    )
  return int(shape[0])


def linear_weights(
  gramian: base.Gramian, weights: base.Weights
) -> base.Weights:
  """Fixed weights, whatever the Gramian: linear scalarisation.

  The update ``sum_i w_i J[i]`` is the gradient of ``sum_i w_i f_i``. This is
  TorchJD's ``Constant`` aggregator.

  Args:
    gramian: ``[m, m]`` Gramian (only its size is used).
    weights: ``[m]`` weights over objectives.

  Returns:
    ``[m]`` the weights, in the Gramian's floating dtype.

  Raises:
    ValueError: if ``weights`` is not ``[m]``.
  """
  m = _base.check_gramian(gramian)
  if _check_weights(weights) != m:
    raise ValueError(
      f"weights has {jnp.shape(weights)[0]} entries but the Gramian is "
      f"[{m}, {m}]."
    )
  return jnp.asarray(weights, _base.as_float(gramian).dtype)


def linear(weights: base.Weights) -> optax.GradientTransformationExtraArgs:
  """Linear scalarisation: the update ``sum_i w_i J[i]`` with fixed weights.

  ``m`` is ``len(weights)``. The weights are numbers, so they can be scheduled
  or changed between steps with ``optax.inject_hyperparams(linear)(weights=
  ...)``.

  Args:
    weights: ``[m]`` weights over objectives.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update(jacobian,
    state, params=None, **extra_args)`` takes the stacked Jacobian (leaves
    ``[m, *param.shape]``) and returns the update in gradient convention and
    a :class:`LinearState`.

  Raises:
    ValueError: if ``weights`` is not a non-empty 1-D array; at trace time if
      the Jacobian does not have ``m`` objectives.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> from j6jax import aggregators
    >>> tx = optax.chain(aggregators.linear(jnp.array([1.0, 3.0])),
    ...                  optax.sgd(1.0))
    >>> jac = {"w": jnp.array([[1.0, 0.0], [0.0, 1.0]])}
    >>> updates, _ = tx.update(jac, tx.init({"w": jnp.zeros(2)}))
    >>> updates["w"].tolist()
    [-1.0, -3.0]
  """
  m = _check_weights(weights)
  return _base.weighting_transform(
    "linear", m, LinearState, lambda g: linear_weights(g, weights)
  )
