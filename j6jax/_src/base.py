"""Shared type aliases and pytree helpers for Jacobians and Gramians.

Axis letters used across j6jax: ``m`` objectives, ``K`` groups of prompt
parameters, ``C = K * m * (m + 1) / 2`` J6 components. A Jacobian is a pytree
shaped like the parameters with a leading axis ``m`` on every leaf, a Gramian
is ``[m, m]`` and objective weights are ``[m]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

Params = Any
"""A pytree of parameters (e.g. ``{"h": [L, d], "w": [n, d]}``)."""
Jacobian = Any
"""A pytree shaped like the parameters, every leaf with a leading axis m."""
Updates = Any
"""A pytree shaped like the parameters, in gradient convention."""
Gramian = jax.Array
"""A symmetric positive semi-definite ``[m, m]`` matrix ``J J^T``."""
Weights = jax.Array
"""Weights over objectives, ``[m]``."""
Labels = Any
"""A pytree of group names, or a callable from params to such a pytree."""

HIGHEST = jax.lax.Precision.HIGHEST


def _path_str(path: tuple[Any, ...]) -> str:
  return jax.tree_util.keystr(path) or "<root>"


def num_objectives(jacobian: Jacobian) -> int:
  """Returns ``m``, the common leading axis of every Jacobian leaf.

  Args:
    jacobian: a pytree whose leaves all have shape ``[m, ...]``.

  Returns:
    The number of objectives ``m`` as a Python int (known at trace time).

  Raises:
    ValueError: if the pytree has no leaves, a leaf is a scalar, or the
      leaves disagree on their leading axis (the message names the leaf).
  """
  leaves = jax.tree_util.tree_flatten_with_path(jacobian)[0]
  if not leaves:
    raise ValueError("The Jacobian pytree has no leaves.")
  m = None
  first = None
  for path, leaf in leaves:
    shape = jnp.shape(leaf)
    if len(shape) == 0:
      raise ValueError(
        f"Jacobian leaf {_path_str(path)} is a scalar; every leaf needs a "
        "leading objective axis m (shape [m, *param.shape])."
      )
    if m is None:
      m, first = shape[0], _path_str(path)
    elif shape[0] != m:
      raise ValueError(
        "Jacobian leaves disagree on the number of objectives: leaf "
        f"{first} has leading axis {m} but leaf {_path_str(path)} has "
        f"shape {shape}."
      )
  return int(m)


def check_jacobian(jacobian: Jacobian, params: Params | None = None) -> int:
  """Checks a Jacobian against its parameters and returns ``m``.

  Args:
    jacobian: a pytree with leaves ``[m, *p.shape]``.
    params: optional parameters; when given, the Jacobian must have the same
      tree structure and each leaf the shape ``[m, *p.shape]``.

  Returns:
    The number of objectives ``m``.

  Raises:
    ValueError: on a tree mismatch or a wrong leaf shape, naming the leaf.
  """
  m = num_objectives(jacobian)
  if params is None:
    return m
  jstruct = jax.tree_util.tree_structure(jacobian)
  pstruct = jax.tree_util.tree_structure(params)
  if jstruct != pstruct:
    raise ValueError(
      "The Jacobian and the parameters are different pytrees: Jacobian "
      f"{jstruct} vs params {pstruct}."
    )
  for (path, j), p in zip(
    jax.tree_util.tree_flatten_with_path(jacobian)[0],
    jax.tree_util.tree_leaves(params),
    strict=True,
  ):
    if tuple(jnp.shape(j)) != (m, *jnp.shape(p)):
      raise ValueError(
        f"Jacobian leaf {_path_str(path)} has shape {jnp.shape(j)}, "
        f"expected [m, *param.shape] = {(m, *jnp.shape(p))}."
      )
  return m


def leaf_gramian(leaf: jax.Array) -> Gramian:
  """``J_leaf J_leaf^T`` of one Jacobian leaf ``[m, ...]``, as ``[m, m]``.

  The leaf is reshaped to ``[m, n_leaf]``; no other leaf is touched. The
  product runs at the highest matmul precision (float32 on TPU too), and its
  output is float32 or wider.
  """
  m = leaf.shape[0]
  flat = jnp.reshape(leaf, (m, -1))
  flat = flat.astype(jnp.promote_types(flat.dtype, jnp.float32))
  return jnp.einsum("in,jn->ij", flat, flat, precision=HIGHEST)


def gramian(jacobian: Jacobian) -> Gramian:
  """The full Gramian ``J J^T`` (``[m, m]``), summed leaf by leaf.

  Equivalent to flattening the whole Jacobian into ``[m, n]`` and taking
  ``J @ J.T``, without ever building that matrix.
  """
  num_objectives(jacobian)
  return sum(jax.tree_util.tree_leaves(jax.tree.map(leaf_gramian, jacobian)))


def combine(jacobian: Jacobian, weights: Weights) -> Updates:
  """The update ``sum_i weights[i] * J[i]``, one tree map over the leaves.

  Args:
    jacobian: a pytree with leaves ``[m, ...]``.
    weights: ``[m]`` weights over objectives.

  Returns:
    A pytree shaped like the parameters (leaves without the leading axis),
    in the dtype of each Jacobian leaf.
  """
  m = num_objectives(jacobian)
  if jnp.shape(weights) != (m,):
    raise ValueError(
      f"weights must have shape ({m},) to match the Jacobian's {m} "
      f"objectives, but got shape {jnp.shape(weights)}."
    )

  def one(leaf):
    w = jnp.asarray(weights).astype(leaf.dtype)
    return jnp.tensordot(w, leaf, axes=1, precision=HIGHEST)

  return jax.tree.map(one, jacobian)


def resolve_labels(tree: Any, labels: Labels | None) -> Any:
  """Returns a pytree of group names with the structure of ``tree``.

  Args:
    tree: parameters (or a Jacobian: only the structure is used).
    labels: ``None`` for the default groups (the top-level keys of a mapping,
      the indices of a sequence, or ``"params"`` for a bare array); a pytree
      of strings with the structure of ``tree`` (or a prefix of it); or a
      callable taking ``tree`` and returning such a pytree, as in
      ``optax.multi_transform``.

  Returns:
    A pytree of strings with exactly the structure of ``tree``.
  """
  if labels is None:
    if isinstance(tree, Mapping):
      labels = {k: str(k) for k in tree}
    elif isinstance(tree, (list, tuple)) and not hasattr(tree, "_fields"):
      labels = type(tree)(str(i) for i in range(len(tree)))
    elif hasattr(tree, "_fields"):
      labels = type(tree)(*tree._fields)
    else:
      labels = "params"
  elif callable(labels):
    labels = labels(tree)
  try:
    full = jax.tree_util.tree_broadcast(labels, tree)
  except (ValueError, TypeError) as e:
    raise ValueError(
      "labels must be a pytree of group names with the structure of the "
      f"parameters (or a prefix of it); got labels {labels!r} for a tree "
      f"with structure {jax.tree_util.tree_structure(tree)}."
    ) from e
  for path, name in jax.tree_util.tree_flatten_with_path(full)[0]:
    if not isinstance(name, str):
      raise ValueError(
        f"label for leaf {_path_str(path)} must be a string, got {name!r}."
      )
  return full


def order_groups(
  leaf_labels: Sequence[str], groups: Sequence[str] | None = None
) -> tuple[str, ...]:
  """The group order: ``groups`` if given (checked), else sorted labels.

  Raises:
    ValueError: if a label is not one of ``groups`` or a group owns no leaf.
  """
  present = set(leaf_labels)
  if groups is None:
    return tuple(sorted(present))
  groups = tuple(groups)
  if len(set(groups)) != len(groups):
    raise ValueError(f"groups must be distinct, got {groups}.")
  unknown = sorted(present - set(groups))
  if unknown:
    raise ValueError(
      f"Unknown label(s) {unknown}: the labels of the leaves must be among "
      f"the given groups {list(groups)}."
    )
  empty = [g for g in groups if g not in present]
  if empty:
    raise ValueError(
      f"Group(s) {empty} own no parameter leaf; labels in use: "
      f"{sorted(present)}."
    )
  return groups


def group_names(
  tree: Any,
  labels: Labels | None = None,
  groups: Sequence[str] | None = None,
) -> tuple[str, ...]:
  """The group names of ``tree`` under ``labels``, in the stable order."""
  full = resolve_labels(tree, labels)
  return order_groups(jax.tree_util.tree_leaves(full), groups)


def safe_div(num: jax.Array, den: jax.Array) -> jax.Array:
  """``num / den`` with 0 wherever ``den == 0`` (and no NaN in gradients)."""
  ok = den != 0
  return jnp.where(ok, num / jnp.where(ok, den, 1), 0)
