"""PCGrad: projecting each gradient off the gradients it conflicts with."""

from __future__ import annotations

import functools
import itertools
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from j6jax._src import base
from j6jax._src.aggregators import _base

PCGradOrder = Literal["average", "fixed"]
_ORDERS = ("average", "fixed")
MAX_AVERAGE_OBJECTIVES = 8
"""``order="average"`` enumerates ``(m - 1)!`` orders per objective; above
this ``m`` (5040 orders at ``m = 8``) use ``order="fixed"``."""


class PCGradState(NamedTuple):
  """State of :func:`pcgrad`.

  Attributes:
    count: ``[]`` int32, number of updates so far.
    weights: ``[m]`` float32, the weights of the last update (zeros before
      the first).
  """

  count: jax.Array
  weights: jax.Array


@functools.cache
def _named_orders(m: int, order: str) -> np.ndarray:
  """``[m, P, m - 1]`` int32: for each objective, P orders of the others."""
  if order == "average":
    perms = list(itertools.permutations(range(m - 1)))
  else:
    perms = [tuple(range(m - 1))]
  out = np.zeros((m, len(perms), m - 1), np.int32)
  for i in range(m):
    others = [j for j in range(m) if j != i]
    for p, perm in enumerate(perms):
      out[i, p] = [others[k] for k in perm]
  return out


def _check_order_array(order: np.ndarray, m: int) -> np.ndarray:
  arr = np.asarray(order)
  if arr.shape != (m, m - 1) or not np.issubdtype(arr.dtype, np.integer):
    raise ValueError(
      f"order must be 'average', 'fixed' or an integer array of shape "
      f"[m, m - 1] = {(m, m - 1)}, but got {order!r}."
    )
  for i in range(m):
    if sorted(arr[i].tolist()) != [j for j in range(m) if j != i]:
      raise ValueError(
        f"order[{i}] must list every objective but {i} once, but got "
        f"{arr[i].tolist()}."
      )
  return arr[:, None, :].astype(np.int32)


def _projected(g: jax.Array, i: jax.Array, seq: jax.Array) -> jax.Array:
  """Weights ``[m]`` of ``J[i]`` projected in turn off each ``J[seq[k]]``.

  Each step tests the *current* projected vector ``x = J^T c`` against the
  *original* gradient ``J[j]`` (as the PCGrad authors specify) and, on a
  conflict ``<x, J[j]> < 0``, removes that component: ``c_j -= <x, J[j]> /
  |J[j]|^2``. A zero gradient never conflicts, so nothing divides by zero.
  """
  m = g.shape[0]
  c = jax.nn.one_hot(i, m, dtype=g.dtype)
  for k in range(m - 1):
    j = seq[k]
    inner = g[j] @ c
    c = c.at[j].add(-base.safe_div(jnp.minimum(inner, 0), g[j, j]))
  return c


def pcgrad_weights(
  gramian: base.Gramian, order: PCGradOrder | np.ndarray = "average"
) -> base.Weights:
  """PCGrad weights, computed on the Gramian alone.

  PCGrad (Yu et al., 2020, Algorithm 1) replaces each gradient ``J[i]`` by a
  projected ``J[i]^PC``: going through the other objectives ``j`` in some
  order, whenever the current ``J[i]^PC`` conflicts with the original
  ``J[j]`` (negative inner product), its component along ``J[j]`` is removed.
  Every projected vector stays a combination ``J^T c_i`` of the rows, and
  ``c_i`` depends only on ``G``, so the update is ``J^T w`` with the
  **sum** ``w = sum_i c_i`` (the paper's and TorchJD's convention; the mean
  is this divided by ``m``).

  For ``m = 2`` there is nothing to order and the result is deterministic.
  For ``m > 2`` the original draws a random order (TorchJD one random
  permutation per objective); j6jax is deterministic:

  - ``"average"`` (default): each ``c_i`` is averaged over all ``(m - 1)!``
    orders of the other objectives, which is the expectation of TorchJD's
    randomised weights and keeps the method equivariant under permutations
    of the objectives. Allowed up to ``m = 8``.
  - ``"fixed"``: the others in increasing index order (cheap, any ``m``,
    but not permutation-equivariant).
  - an integer array ``[m, m - 1]`` whose row ``i`` lists the other
    objectives in the order ``J[i]`` is projected off them (for instance
    to reproduce one draw of a randomised implementation).

  The weights are invariant under ``J -> s J`` (computed on ``G /
  trace(G)``), and a zero gradient is never projected against.

  Args:
    gramian: ``[m, m]`` Gramian ``J J^T``.
    order: ``"average"``, ``"fixed"`` or an ``[m, m - 1]`` integer array
      (static).

  Returns:
    ``[m]`` weights (non-negative; ``w_i >= 1`` for each i).

  Raises:
    ValueError: on an invalid ``order``, or ``"average"`` with ``m > 8``.

  References:
    Tianhe Yu, Saurabh Kumar, Abhishek Gupta, Sergey Levine, Karol Hausman
    and Chelsea Finn, `Gradient Surgery for Multi-Task Learning
    <https://arxiv.org/abs/2001.06782>`_, NeurIPS 2020.
  """
  m = _base.check_gramian(gramian)
  orders = _orders(order, m)
  return _pcgrad(_base.as_float(gramian), orders.tobytes(), orders.shape)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _pcgrad(gramian: jax.Array, orders: bytes, shape: tuple[int, ...]):
  g, _ = _base.normalize(gramian)
  seqs = jnp.asarray(np.frombuffer(orders, np.int32).reshape(shape))
  per_order = jax.vmap(_projected, (None, None, 0))
  c = jax.vmap(per_order, (None, 0, 0))(g, jnp.arange(shape[0]), seqs)
  return jnp.sum(jnp.mean(c, axis=1), axis=0)


def _orders(order, m: int) -> np.ndarray:
  if isinstance(order, str):
    _base.check_choice("order", order, _ORDERS)
    if order == "average" and m > MAX_AVERAGE_OBJECTIVES:
      raise ValueError(
        f"order='average' enumerates (m - 1)! orders and is limited to m <= "
        f"{MAX_AVERAGE_OBJECTIVES}, but got m = {m}; use order='fixed'."
      )
    return _named_orders(m, order)
  return _check_order_array(order, m)


def pcgrad(
  *, num_objectives: int = 2, order: PCGradOrder | np.ndarray = "average"
) -> optax.GradientTransformationExtraArgs:
  """PCGrad as an optax transform: the update is the **sum** of the
  projected gradients, see :func:`pcgrad_weights`.

  Args:
    num_objectives: ``m``, the number of objectives (``init`` cannot see
      it). Under ``optax.inject_hyperparams`` list it (and an array
      ``order``) in ``static_args``.
    order: ``"average"`` (over all orders), ``"fixed"`` or an ``[m, m - 1]``
      integer array.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update(jacobian,
    state, params=None, **extra_args)`` takes the stacked Jacobian (leaves
    ``[m, *param.shape]``) and returns the update in gradient convention and
    a :class:`PCGradState`.

  Raises:
    ValueError: on an invalid option; at trace time if the Jacobian does not
      have ``num_objectives`` objectives.

  References:
    Tianhe Yu, Saurabh Kumar, Abhishek Gupta, Sergey Levine, Karol Hausman
    and Chelsea Finn, `Gradient Surgery for Multi-Task Learning
    <https://arxiv.org/abs/2001.06782>`_, NeurIPS 2020.
  """
  m = _base.check_num_objectives(num_objectives)
  _orders(order, m)
  return _base.weighting_transform(
    "pcgrad", m, PCGradState, lambda g: pcgrad_weights(g, order)
  )
