"""Per-group Gramians of a Jacobian pytree."""

from __future__ import annotations

from collections.abc import Sequence

import jax

from j6jax._src import base


def group_gramians(
  jacobian: base.Jacobian,
  labels: base.Labels | None = None,
  *,
  groups: Sequence[str] | None = None,
) -> dict[str, base.Gramian]:
  """Splits ``J J^T`` into one ``[m, m]`` Gramian per parameter group.

  .. math::

    G_k = \\sum_{\\text{leaf} \\in k} J_\\text{leaf} J_\\text{leaf}^\\top,
    \\qquad G = \\sum_k G_k = J J^\\top

  The split is exact: the group Gramians add up to the Gramian of the
  flattened Jacobian, which is never formed. Each leaf is only reshaped to
  ``[m, n_leaf]``. For a leaf sharded across devices, its product is the sum
  of the per-shard products, which XLA inserts under ``jit``.

  Args:
    jacobian: a pytree with leaves ``[m, *param.shape]``.
    labels: group names. ``None`` uses the top-level keys of a mapping (the
      indices of a sequence, ``"params"`` for a bare array). Otherwise a
      pytree of strings with the structure of the parameters (or a prefix of
      it), or a callable that takes the Jacobian pytree (the parameters'
      structure, each leaf with a leading axis ``m``) and returns one.
    groups: optional group names in the order wanted. Every label must be
      one of them and every group must own at least one leaf.

  Returns:
    A dict from group name to its ``[m, m]`` float32 (or wider) Gramian, in
    the order of ``groups`` or else sorted by name: the stable group order.

  Raises:
    ValueError: on a bad Jacobian, bad labels, a label not in ``groups`` or
      a group without leaves.

  Examples:
    >>> import jax.numpy as jnp
    >>> import j6jax
    >>> jac = {"h": jnp.array([[1.0, 0.0], [1.0, 1.0]]),
    ...        "w": jnp.array([[2.0], [-1.0]])}
    >>> {k: v.tolist() for k, v in j6jax.group_gramians(jac).items()}
    {'h': [[1.0, 1.0], [1.0, 2.0]], 'w': [[4.0, -2.0], [-2.0, 1.0]]}
  """
  base.num_objectives(jacobian)
  full = base.resolve_labels(jacobian, labels)
  names = base.order_groups(jax.tree_util.tree_leaves(full), groups)
  grams = jax.tree.map(base.leaf_gramian, jacobian)
  out = {}
  for name in names:
    parts = [
      g
      for g, lab in zip(
        jax.tree_util.tree_leaves(grams),
        jax.tree_util.tree_leaves(full),
        strict=True,
      )
      if lab == name
    ]
    out[name] = sum(parts[1:], parts[0])
  return out
