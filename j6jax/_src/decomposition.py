"""The J6 decomposition: components, names and derived quantities."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import struct

from j6jax._src import base


def default_objective_names(m: int) -> tuple[str, ...]:
  """``("F", "C")`` for two objectives (J6.md), else ``("f0", "f1", ...)``."""
  return ("F", "C") if m == 2 else tuple(f"f{i}" for i in range(m))


@functools.cache
def component_index(m: int, K: int) -> tuple[tuple[int, int, int], ...]:
  """The ``(k, i, j)`` of each component in the stable public order.

  Group-major; inside a group the ``m`` diagonal entries (roles) first, then
  the upper off-diagonal entries ``i < j`` row by row (interplays). There are
  ``C = K * m * (m + 1) / 2`` components.
  """
  out = []
  for k in range(K):
    out += [(k, i, i) for i in range(m)]
    out += [(k, i, j) for i in range(m) for j in range(i + 1, m)]
  return tuple(out)


def component_names(
  groups: Sequence[str], objectives: Sequence[str]
) -> tuple[str, ...]:
  """Names of the components in the stable order.

  Examples:
    >>> import j6jax
    >>> j6jax.component_names(("h", "w"), ("F", "C"))  # doctest: +ELLIPSIS
    ('role:F@h', 'role:C@h', 'interplay:F,C@h', 'role:F@w', ...)
  """
  names = []
  for k, i, j in component_index(len(objectives), len(groups)):
    g = groups[k]
    if i == j:
      names.append(f"role:{objectives[i]}@{g}")
    else:
      names.append(f"interplay:{objectives[i]},{objectives[j]}@{g}")
  return tuple(names)


@struct.dataclass
class Decomposition:
  """The J6 components of one Jacobian, with derived quantities.

  Attributes:
    values: ``[C]`` component values ``G_k[i, j]`` in the stable order.
    gramians: ``[K, m, m]`` group Gramians, in group order.
    shares: ``[K, m]`` attribution share of group ``k`` in objective ``i``,
      ``G_k[i, i] / sum_k' G_k'[i, i]``; each column sums to one. Where an
      objective has a zero gradient everywhere, its shares are ``1 / K``.
    cosines: ``[K, m, m]`` interference cosines
      ``G_k[i, j] / sqrt(G_k[i, i] G_k[j, j])``, 0 where a gradient is zero
      (and 1 on the diagonal where it is not).
    conflicts: ``[m, m]`` bool, global conflict ``G[i, j] < 0`` (``i != j``).
    group_conflicts: ``[K, m, m]`` bool, conflict inside each group.
    names: ``C`` component names, e.g. ``"role:F@h"``, ``"interplay:F,C@w"``.
    groups: the ``K`` group names.
    objectives: the ``m`` objective names.
  """

  values: jax.Array
  gramians: jax.Array
  shares: jax.Array
  cosines: jax.Array
  conflicts: jax.Array
  group_conflicts: jax.Array
  names: tuple[str, ...] = struct.field(pytree_node=False)
  groups: tuple[str, ...] = struct.field(pytree_node=False)
  objectives: tuple[str, ...] = struct.field(pytree_node=False)

  @property
  def gramian(self) -> jax.Array:
    """The full ``[m, m]`` Gramian ``J J^T``, the sum of the group Gramians."""
    return jnp.sum(self.gramians, axis=0)

  @property
  def index(self) -> tuple[tuple[int, int, int], ...]:
    """``(k, i, j)`` of each component (see :func:`component_index`)."""
    return component_index(len(self.objectives), len(self.groups))

  def as_dict(self) -> dict[str, float]:
    """Component values keyed by name (concrete values only)."""
    return {n: float(v) for n, v in zip(self.names, self.values, strict=True)}


def _stack(
  gramians: Mapping[str, jax.Array],
) -> tuple[tuple[str, ...], jax.Array]:
  if not isinstance(gramians, Mapping) or not gramians:
    raise ValueError(
      "gramians must be a non-empty mapping from group name to an [m, m] "
      f"Gramian (as returned by group_gramians), got {type(gramians)}."
    )
  groups = tuple(str(g) for g in gramians)
  shapes = {g: jnp.shape(v) for g, v in gramians.items()}
  first = next(iter(shapes.values()))
  for g, shape in shapes.items():
    if len(shape) != 2 or shape[0] != shape[1]:
      raise ValueError(
        f"Every Gramian must be square [m, m], but group {g!r} has shape "
        f"{shape}."
      )
    if shape != first:
      raise ValueError(
        f"Every Gramian must have the same m, but group {g!r} has shape "
        f"{shape} and group {groups[0]!r} has shape {first}."
      )
  return groups, jnp.stack([jnp.asarray(v) for v in gramians.values()])


def decompose(
  gramians: Mapping[str, jax.Array],
  objective_names: Sequence[str] | None = None,
) -> Decomposition:
  """The J6 components of a set of group Gramians.

  For ``m`` objectives and ``K`` groups there are ``K * m * (m + 1) / 2``
  components, each group's upper triangle: roles ``G_k[i, i]`` (how strongly
  group ``k`` drives objective ``i``) then interplays ``G_k[i, j]`` (> 0
  synergy, < 0 conflict). With ``m = K = 2`` these are the six J6
  components, in the order of J6.md when the groups are ``("h", "w")``.

  Args:
    gramians: group name -> ``[m, m]`` Gramian, in group order (the output
      of :func:`group_gramians`).
    objective_names: ``m`` names; default ``("F", "C")`` for ``m = 2``.

  Returns:
    A :class:`Decomposition` (a pytree; its names are static).

  Examples:
    >>> import jax.numpy as jnp
    >>> import j6jax
    >>> d = j6jax.decompose({"h": jnp.array([[4.0, -1.0], [-1.0, 1.0]]),
    ...                      "w": jnp.array([[1.0, 2.0], [2.0, 4.0]])})
    >>> d.names[2], float(d.values[2])
    ('interplay:F,C@h', -1.0)
    >>> print(d.shares)
    [[0.8 0.2]
     [0.2 0.8]]
  """
  groups, G = _stack(gramians)
  K, m = G.shape[0], G.shape[1]
  if objective_names is None:
    objective_names = default_objective_names(m)
  objective_names = tuple(str(o) for o in objective_names)
  if len(objective_names) != m:
    raise ValueError(
      f"objective_names has {len(objective_names)} names "
      f"{objective_names} but the Gramians are {m} x {m}."
    )
  if len(set(objective_names)) != m:
    raise ValueError(f"objective_names must be distinct: {objective_names}.")
  G = G.astype(jnp.promote_types(G.dtype, jnp.float32))
  index = component_index(m, K)
  ks, is_, js = (
    jnp.array(a, dtype=jnp.int32) for a in zip(*index, strict=True)
  )
  values = G[ks, is_, js]

  diag = jnp.diagonal(G, axis1=1, axis2=2)  # [K, m]
  total = jnp.sum(diag, axis=0, keepdims=True)  # [1, m]
  shares = jnp.where(total > 0, base.safe_div(diag, total), 1.0 / K)

  norms = jnp.sqrt(jnp.maximum(diag, 0))  # [K, m]
  outer = norms[:, :, None] * norms[:, None, :]
  cosines = jnp.clip(base.safe_div(G, outer), -1.0, 1.0)

  off = ~jnp.eye(m, dtype=bool)
  conflicts = (jnp.sum(G, axis=0) < 0) & off
  group_conflicts = (G < 0) & off[None]
  return Decomposition(
    values=values,
    gramians=G,
    shares=shares,
    cosines=cosines,
    conflicts=conflicts,
    group_conflicts=group_conflicts,
    names=component_names(groups, objective_names),
    groups=groups,
    objectives=objective_names,
  )


def candidate_coefficients(decomposition: Decomposition) -> jax.Array:
  """Each component's candidate direction as coefficients over objectives.

  Component ``c`` on group ``k`` has direction ``u_c = sum_i beta[c, i]
  J[i, k]``, supported on group ``k`` only (gradient convention):

  - role ``(i, k)``: ``beta = e_i``;
  - interplay ``(i, j, k)`` with ``G_k[i, j] >= 0``: ``e_i + e_j``;
  - interplay with ``G_k[i, j] < 0``: the min-norm point of the segment
    between the two gradients, ``gamma e_i + (1 - gamma) e_j`` with
    ``gamma = clip((G_jj - G_ij) / (G_ii + G_jj - 2 G_ij), 0, 1)``, which
    lowers both objectives on ``k`` to first order.

  Returns:
    ``[C, m]`` coefficients, in the stable component order.
  """
  G = decomposition.gramians
  m = G.shape[1]
  ks, is_, js = (
    jnp.array(a, dtype=jnp.int32)
    for a in zip(*decomposition.index, strict=True)
  )
  eye = jnp.eye(m, dtype=G.dtype)
  ei, ej = eye[is_], eye[js]  # [C, m]
  gii, gjj, gij = G[ks, is_, is_], G[ks, js, js], G[ks, is_, js]
  gamma = jnp.clip(base.safe_div(gjj - gij, gii + gjj - 2 * gij), 0.0, 1.0)
  mgda = gamma[:, None] * ei + (1 - gamma[:, None]) * ej
  inter = jnp.where((gij >= 0)[:, None], ei + ej, mgda)
  return jnp.where((is_ == js)[:, None], ei, inter)
