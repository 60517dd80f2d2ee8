"""The Jacobian of a stacked objective vector w.r.t. a parameter pytree."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from j6jax._src import base


def _check_values(values: Any) -> jax.Array:
  if not hasattr(values, "shape") or not hasattr(values, "dtype"):
    raise ValueError(
      "The objective function must return one array of shape (m,), but it "
      f"returned a {type(values).__name__}; stack the objectives with "
      "jnp.stack([f1, f2, ...])."
    )
  shape = jnp.shape(values)
  if len(shape) != 1:
    raise ValueError(
      "The objective function must return a vector of shape (m,), one value "
      f"per objective, but it returned shape {shape}. Reduce per-example "
      "objectives over the batch inside the function (e.g. jnp.mean over "
      "the batch axis): a Jacobian of an un-reduced [B, m] output costs B "
      "times the memory."
    )
  if not jnp.issubdtype(jnp.result_type(values), jnp.inexact):
    raise ValueError(
      "The objective function must return floating-point values, got dtype "
      f"{jnp.result_type(values)}."
    )
  return values


def objective_jacobian(
  fn: Callable[..., Any],
  params: base.Params,
  *args: Any,
  has_aux: bool = False,
) -> tuple[jax.Array, base.Jacobian] | tuple[jax.Array, base.Jacobian, Any]:
  """Values and Jacobian of ``fn(params, *args)``, an ``[m]`` objective vector.

  One forward pass is shared by all ``m`` objectives: the function is
  linearised once (``jax.vjp``) and its pullback is mapped over the ``m``
  rows of the identity, which is what ``jax.jacrev`` does. The cost is one
  forward plus ``m`` backward passes, and the memory is that of one backward
  pass times at most ``m``.

  .. math::

    J_{i, \\text{leaf}} = \\partial f_i / \\partial \\theta_\\text{leaf}

  Args:
    fn: ``fn(params, *args)`` returning ``[m]`` (or ``([m], aux)`` when
      ``has_aux``). Reduce over the batch inside ``fn``: an objective vector
      of shape ``[B, m]`` is rejected, since its Jacobian costs ``B`` times
      the memory (see ``CASES.md``, C08).
    params: the pytree to differentiate with respect to.
    *args: further positional arguments of ``fn``, not differentiated.
    has_aux: whether ``fn`` returns ``(values, aux)``.

  Returns:
    ``(values, jacobian)`` or ``(values, jacobian, aux)``: ``values`` is
    ``[m]`` and ``jacobian`` has the structure of ``params`` with leaves
    ``[m, *leaf.shape]`` in the dtype of each parameter leaf.

  Raises:
    ValueError: if ``fn`` does not return a 1-D floating-point vector.

  Examples:
    >>> import jax.numpy as jnp
    >>> import j6jax
    >>> f = lambda p: jnp.stack([jnp.sum(p["w"] ** 2), jnp.sum(p["h"])])
    >>> values, jac = j6jax.objective_jacobian(
    ...     f, {"h": jnp.ones(2), "w": jnp.array([1.0, 2.0])})
    >>> print(values, jac["w"].tolist(), jac["h"].tolist())
    [5. 2.] [[2.0, 4.0], [0.0, 0.0]] [[0.0, 0.0], [1.0, 1.0]]
  """

  def closed(p):
    return fn(p, *args)

  if has_aux:
    values, pullback, aux = jax.vjp(closed, params, has_aux=True)
  else:
    values, pullback = jax.vjp(closed, params)
  values = _check_values(values)
  m = values.shape[0]
  basis = jnp.eye(m, dtype=values.dtype)
  (jacobian,) = jax.vmap(pullback)(basis)
  if has_aux:
    return values, jacobian, aux
  return values, jacobian
