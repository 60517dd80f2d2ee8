"""The J6 update as an optax gradient transformation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from j6jax._src import base
from j6jax._src import decomposition as dec
from j6jax._src import gramian as gram

Mode = Literal["soft", "hard"]
ScoreKind = Literal["gramian", "descent"]
Normalize = Literal["trace", "cosine", "none"]
_MODES = ("soft", "hard")
_SCORES = ("gramian", "descent")
_NORMALIZE = ("trace", "cosine", "none")
_TINY_TEMPERATURE = 1e-30


class J6State(NamedTuple):
  """State of :func:`j6`: what explains the last step and the history.

  Attributes:
    count: ``[]`` int32, number of updates so far.
    components: ``[C]`` the last step's component values (after objective
      weights), in the order of ``component_names``.
    scores: ``[C]`` the last step's scores, before averaging.
    avg_scores: ``[C]`` the exponentially averaged scores that decided
      ``alpha`` (equal to ``scores`` when ``ema == 0``).
    alpha: ``[C]`` the last step's weights over components (sum to one).
    chosen: ``[]`` int32, index of the largest weight of the last step.
    selection_counts: ``[C]`` int32, how often each component had the
      largest weight.
  """

  count: jax.Array
  components: jax.Array
  scores: jax.Array
  avg_scores: jax.Array
  alpha: jax.Array
  chosen: jax.Array
  selection_counts: jax.Array


def _is_concrete(x: Any) -> bool:
  return not isinstance(x, jax.core.Tracer)


def j6_scores(
  decomposition: dec.Decomposition,
  *,
  scores: ScoreKind = "gramian",
  normalize: Normalize = "trace",
) -> jax.Array:
  """Scores ``[C]`` of the components, the inputs of the hard/soft choice.

  ``scores="gramian"`` scores the component values themselves:

  - ``"trace"``: divided by ``trace(G)``; role scores sum to one and
    interplay scores lie in ``[-1/2, 1/2]``;
  - ``"cosine"``: role ``(i, k)`` scores its attribution share and
    interplay ``(i, j, k)`` its cosine ``G_k[i,j] / sqrt(G_k[i,i] G_k[j,j])``;
  - ``"none"``: the raw values.

  ``scores="descent"`` scores each candidate direction ``u_c`` (see
  :func:`candidate_coefficients`) by the first-order decrease of the objective
  sum per unit step, ``<sum_i J[i], u_c> / |u_c|``, computed from the
  Gramians alone. The normalisation then is our choice (J6.md defines it for
  gramian scores only): ``"none"`` keeps these gradient-norm units,
  ``"trace"`` divides by ``sqrt(trace(G))`` (scale invariant) and
  ``"cosine"`` by ``|sum_i J[i]|``, giving the cosine between ``u_c`` and the
  summed gradient, in ``[-1, 1]``.

  Objective weights are applied before this, to the Gramians (rows of J).
  Every division by zero gives a zero score.
  """
  G = decomposition.gramians  # [K, m, m]
  full = decomposition.gramian  # [m, m]
  trace = jnp.trace(full)
  if scores == "gramian":
    values = decomposition.values
    if normalize == "trace":
      return base.safe_div(values, trace)
    if normalize == "none":
      return values
    ks, is_, js = (np.array(a) for a in zip(*decomposition.index, strict=True))
    return jnp.where(
      is_ == js,
      decomposition.shares[ks, is_],
      decomposition.cosines[ks, is_, js],
    )
  beta = dec.candidate_coefficients(decomposition)  # [C, m]
  ks = jnp.array([k for k, _, _ in decomposition.index], dtype=jnp.int32)
  Gc = G[ks]  # [C, m, m]
  gain = jnp.einsum("ij,cjk,ck->c", jnp.ones_like(full[:1]), Gc, beta)
  sq = jnp.einsum("ci,cij,cj->c", beta, Gc, beta)
  out = base.safe_div(gain, jnp.sqrt(jnp.maximum(sq, 0)))
  if normalize == "trace":
    return base.safe_div(out, jnp.sqrt(jnp.maximum(trace, 0)))
  if normalize == "cosine":
    total = jnp.sum(full)
    return jnp.clip(base.safe_div(out, jnp.sqrt(jnp.maximum(total, 0))), -1, 1)
  return out


def j6_alpha(
  scores: jax.Array,
  *,
  mode: Mode = "soft",
  temperature: float | jax.Array = 1.0,
) -> jax.Array:
  """Weights ``[C]`` over components from their scores.

  - ``"hard"``: ``one_hot(argmax(scores))``, ties to the lowest index;
  - ``"soft"``: ``softmax(scores / temperature)``, computed as
    ``exp((s - max s) / T)`` normalised, so it neither overflows for large
    scores nor gives NaN as ``T -> 0`` (it tends to hard, with ties shared
    equally) or ``T -> inf`` (it tends to uniform).

  Examples:
    >>> import jax.numpy as jnp
    >>> import j6jax
    >>> s = jnp.array([809.0, 2.0, -23.0, 809.0, 745.0, 247.0])
    >>> j6jax.j6_alpha(s, temperature=0.01).tolist()
    [0.5, 0.0, 0.0, 0.5, 0.0, 0.0]
  """
  if mode == "hard":
    return jax.nn.one_hot(
      jnp.argmax(scores), scores.shape[0], dtype=scores.dtype
    )
  t = jnp.maximum(jnp.asarray(temperature, scores.dtype), _TINY_TEMPERATURE)
  z = (scores - jnp.max(scores)) / t
  e = jnp.exp(z)
  return e / jnp.sum(e)


def _group_coefficients(
  decomposition: dec.Decomposition, alpha: jax.Array
) -> jax.Array:
  """``[K, m]``: per group, ``sum_c alpha_c beta_c`` over its components."""
  beta = dec.candidate_coefficients(decomposition)  # [C, m]
  K = len(decomposition.groups)
  ks = jnp.array([k for k, _, _ in decomposition.index], dtype=jnp.int32)
  onehot = jax.nn.one_hot(ks, K, dtype=beta.dtype)  # [C, K]
  return jnp.einsum("ck,c,ci->ki", onehot, alpha, beta)


def _check_choice(name: str, value: Any, allowed: Sequence[str]) -> None:
  if value not in allowed:
    raise ValueError(f"{name} must be one of {allowed}, but got {value!r}.")


def j6(
  *,
  mode: Mode = "soft",
  temperature: float | jax.Array = 1.0,
  scores: ScoreKind = "gramian",
  normalize: Normalize = "trace",
  objective_weights: Sequence[float] | jax.Array | None = None,
  ema: float | jax.Array = 0.0,
  labels: base.Labels | None = None,
  groups: Sequence[str] | None = None,
  objective_names: Sequence[str] | None = None,
) -> optax.GradientTransformationExtraArgs:
  """J6: the update chosen from the per-group Gramian components.

  The Jacobian ``J`` (leaves ``[m, *param.shape]``) is split into group
  Gramians ``G_k`` and their ``C = K m (m + 1) / 2`` components (see
  :func:`decompose`). Each component has a candidate direction on its group
  (see :func:`candidate_coefficients`) and a score (see :func:`j6_scores`);
  the scores, optionally averaged over steps, give weights ``alpha`` (see
  :func:`j6_alpha`), and the update is

  .. math::

    u = \\sum_c \\alpha_c u_c,

  computed as one weighted sum over the leading axis per leaf: no Jacobian is
  flattened. The update is in gradient convention (the optimiser after this
  transform subtracts it), so use it as the first member of a chain:
  ``optax.chain(j6jax.j6(), optax.adam(1e-2))``.

  ``init(params)`` sees plain parameters; ``update(jacobian, state, params=
  None, **extra_args)`` takes the stacked Jacobian (e.g. from
  :func:`objective_jacobian`) in place of gradients, and ignores extra
  arguments. All hyperparameters that are numbers (``temperature``, ``ema``,
  ``objective_weights``) can be scheduled or changed between steps with
  ``optax.inject_hyperparams(j6jax.j6)(...)``; change them with
  :func:`set_hyperparams`, which keeps their dtype so a jitted step is not
  retraced. ``mode``, ``scores`` and ``normalize`` are strings and therefore
  static: changing them builds (and compiles) a new transform. A callable
  ``labels`` must be listed in ``static_args`` of ``inject_hyperparams``.

  Args:
    mode: ``"soft"`` (softmax over scores) or ``"hard"`` (argmax).
    temperature: softmax temperature, ``> 0``; towards 0 soft tends to hard,
      towards infinity to the plain mean of the candidate directions.
    scores: ``"gramian"`` (component values) or ``"descent"`` (first-order
      decrease along each candidate direction).
    normalize: ``"trace"``, ``"cosine"`` or ``"none"`` (see
      :func:`j6_scores`).
    objective_weights: optional ``[m]`` positive weights that scale the rows
      of ``J`` before anything else.
    ema: in ``[0, 1)``; the scores are averaged as ``s_avg = ema * s_avg +
      (1 - ema) * s`` (the first step takes ``s``).
    labels: parameter groups, as in :func:`group_gramians` (default: the
      top-level keys, e.g. ``{"h", "w"}``).
    groups: optional group names fixing the group order (default sorted).
    objective_names: names of the ``m`` objectives; their number fixes
      ``m`` (default ``("F", "C")``, or ``len(objective_weights)`` names).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with state :class:`J6State`.

  Raises:
    ValueError: at construction for an unknown ``mode``, ``scores`` or
      ``normalize``, a temperature ``<= 0``, an ``ema`` outside ``[0, 1)``,
      or objective weights / names of inconsistent length; at trace time for
      a Jacobian whose number of objectives or groups does not match.

  .. warning::
    Non-finite Jacobians are not guarded: wrap the chain in
    ``optax.apply_if_finite`` when objectives can overflow. The Gramians are
    float32 for float32 Jacobians, so entries beyond about ``1e18`` (squares
    beyond float32's range) overflow to inf and give NaN.

  With ``normalize="trace"`` the scores lie in ``[-1/2, 1]``, so
  ``temperature=1`` gives nearly uniform weights; temperatures of 0.01 to
  0.3 make the choice sharper.

  Examples:
    >>> import jax.numpy as jnp, optax, j6jax
    >>> jac = {"h": jnp.array([[1.0, 0.0], [0.0, 2.0]]),
    ...        "w": jnp.array([[0.5], [0.5]])}
    >>> tx = j6jax.j6(mode="hard")
    >>> state = tx.init({"h": jnp.zeros(2), "w": jnp.zeros(1)})
    >>> updates, state = tx.update(jac, state)
    >>> updates["h"].tolist(), updates["w"].tolist(), int(state.chosen)
    ([0.0, 2.0], [0.0], 1)
  """
  _check_choice("mode", mode, _MODES)
  _check_choice("scores", scores, _SCORES)
  _check_choice("normalize", normalize, _NORMALIZE)
  if _is_concrete(temperature) and not float(temperature) > 0:
    raise ValueError(f"temperature must be > 0, but got {temperature!r}.")
  if _is_concrete(ema) and not 0 <= float(ema) < 1:
    raise ValueError(f"ema must be in [0, 1), but got {ema!r}.")
  if objective_weights is not None:
    if np.ndim(objective_weights) != 1:
      raise ValueError(
        "objective_weights must be a 1-D sequence of m weights, but got "
        f"shape {np.shape(objective_weights)}."
      )
    n_w = np.shape(objective_weights)[0]
    if _is_concrete(objective_weights) and not np.all(
      np.asarray(objective_weights, np.float64) > 0
    ):
      raise ValueError(
        "objective_weights must all be > 0 (a weight <= 0 flips or drops an "
        f"objective), but got {np.asarray(objective_weights).tolist()}."
      )
    if objective_names is None:
      objective_names = dec.default_objective_names(n_w)
    if len(objective_names) != n_w:
      raise ValueError(
        f"objective_weights has {n_w} entries but objective_names has "
        f"{len(objective_names)}: {tuple(objective_names)}."
      )
  if objective_names is None:
    objective_names = dec.default_objective_names(2)
  objective_names = tuple(objective_names)
  m = len(objective_names)

  def init_fn(params):
    K = len(base.group_names(params, labels, groups))
    C = K * m * (m + 1) // 2
    zeros = jnp.zeros((C,), jnp.float32)
    return J6State(
      count=jnp.zeros([], jnp.int32),
      components=zeros,
      scores=zeros,
      avg_scores=zeros,
      alpha=zeros,
      chosen=jnp.zeros([], jnp.int32),
      selection_counts=jnp.zeros((C,), jnp.int32),
    )

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    jacobian = updates
    m_j = base.check_jacobian(jacobian, None)
    if params is not None:
      base.check_jacobian(jacobian, params)
    if m_j != m:
      raise ValueError(
        f"j6() was built for {m} objectives {objective_names} but the "
        f"Jacobian has {m_j} (its leading axis); pass objective_names with "
        f"{m_j} names."
      )
    full_labels = base.resolve_labels(jacobian, labels)
    leaf_labels = jax.tree_util.tree_leaves(full_labels)
    names = base.order_groups(leaf_labels, groups)
    grams = gram.group_gramians(jacobian, full_labels, groups=names)
    if objective_weights is not None:
      lw = jnp.asarray(objective_weights, jnp.float32)
      grams = {g: v * lw[:, None] * lw[None, :] for g, v in grams.items()}
    d = dec.decompose(grams, objective_names)
    if d.values.shape != state.scores.shape:
      raise ValueError(
        f"The Jacobian has {len(names)} groups {names} but the state was "
        f"initialised for {state.scores.shape[0]} components; init with "
        "params of the same structure as the Jacobian."
      )
    s = j6_scores(d, scores=scores, normalize=normalize).astype(jnp.float32)
    e = jnp.asarray(ema, jnp.float32)
    avg = jnp.where(state.count == 0, s, e * state.avg_scores + (1 - e) * s)
    alpha = j6_alpha(avg, mode=mode, temperature=temperature)
    coef = _group_coefficients(d, alpha)  # [K, m]
    if objective_weights is not None:
      coef = coef * lw[None, :]
    row = {g: k for k, g in enumerate(names)}
    new_updates = jax.tree.map(
      lambda leaf, g: jnp.tensordot(
        coef[row[g]].astype(leaf.dtype), leaf, axes=1, precision=base.HIGHEST
      ),
      jacobian,
      full_labels,
    )
    chosen = jnp.argmax(alpha).astype(jnp.int32)
    new_state = J6State(
      count=optax.safe_increment(state.count),
      components=d.values.astype(jnp.float32),
      scores=s,
      avg_scores=avg,
      alpha=alpha,
      chosen=chosen,
      selection_counts=state.selection_counts
      + jax.nn.one_hot(chosen, s.shape[0], dtype=jnp.int32),
    )
    return new_updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def set_hyperparams(state: Any, **values: Any) -> Any:
  """Returns ``state`` with injected hyperparameters replaced, dtype kept.

  Works on the state of ``optax.inject_hyperparams(...)`` and on any chain,
  tuple or NamedTuple nesting that contains one. Each new value is cast to
  the dtype and shape of the value it replaces, so a jitted step that takes
  the state is not retraced (a Python float would be weakly typed and
  trigger a new trace).

  ``temperature`` must be ``> 0`` and ``ema`` in ``[0, 1)``, as at
  construction: inside ``jit`` these are no longer checked.

  Raises:
    KeyError: if no injected state holds one of the names (the message lists
      the names there are).
    ValueError: for a value of the wrong shape or out of range.

  Examples:
    >>> import jax.numpy as jnp, optax, j6jax
    >>> tx = optax.inject_hyperparams(j6jax.j6)(temperature=1.0)
    >>> state = tx.init({"h": jnp.zeros(2), "w": jnp.zeros(1)})
    >>> state = j6jax.set_hyperparams(state, temperature=0.25)
    >>> state.hyperparams["temperature"].dtype, float(
    ...     state.hyperparams["temperature"])
    (dtype('float32'), 0.25)
  """
  if "temperature" in values and not np.all(
    np.asarray(values["temperature"], np.float64) > 0
  ):
    raise ValueError(
      f"temperature must be > 0, but got {values['temperature']!r}."
    )
  if "ema" in values:
    e = np.asarray(values["ema"], np.float64)
    if not np.all((e >= 0) & (e < 1)):
      raise ValueError(f"ema must be in [0, 1), but got {values['ema']!r}.")
  found, existing = set(), set()

  def visit(s):
    if hasattr(s, "hyperparams") and isinstance(s.hyperparams, dict):
      hp = dict(s.hyperparams)
      existing.update(hp)
      for k, v in values.items():
        if k in hp:
          old = hp[k]
          new = jnp.asarray(v, dtype=jnp.result_type(old))
          if jnp.shape(new) not in ((), jnp.shape(old)):
            raise ValueError(
              f"{k} has shape {jnp.shape(old)} in the state; got a value of "
              f"shape {jnp.shape(new)}."
            )
          hp[k] = jnp.broadcast_to(new, jnp.shape(old))
          found.add(k)
      s = s._replace(hyperparams=hp)
      if hasattr(s, "inner_state"):
        s = s._replace(inner_state=visit(s.inner_state))
      return s
    if isinstance(s, tuple) and hasattr(s, "_fields"):
      return type(s)(*(visit(x) for x in s))
    if isinstance(s, (tuple, list)):
      return type(s)(visit(x) for x in s)
    if isinstance(s, dict):
      return {k: visit(v) for k, v in s.items()}
    return s

  out = visit(state)
  missing = sorted(set(values) - found)
  if missing:
    if existing:
      raise KeyError(
        f"No injected hyperparameter named {missing}; the state has "
        f"{sorted(existing)}."
      )
    raise KeyError(
      f"No injected hyperparameter named {missing} in the state; wrap the "
      "transform with optax.inject_hyperparams first."
    )
  return out
