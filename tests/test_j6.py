"""Tests of the J6 transform: directions, limits, optax behaviour, errors."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import j6jax

PARAMS = {"h": jnp.zeros((2, 3)), "w": jnp.zeros((4,))}


def _jac(seed, m=2, params=PARAMS, scale=1.0):
  leaves, tdef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  out = [
    scale * jax.random.normal(k, (m, *x.shape))
    for k, x in zip(keys, leaves, strict=True)
  ]
  return jax.tree.unflatten(tdef, out)


def _run(tx, jac, params=PARAMS):
  state = tx.init(params)
  return tx.update(jac, state, params)


def _direction(jac, d, c):
  """Candidate direction of component c as a params-shaped pytree."""
  beta = j6jax.candidate_coefficients(d)[c]
  k = d.index[c][0]
  return {
    g: (
      jnp.tensordot(beta, leaf, axes=1)
      if g == d.groups[k]
      else jnp.zeros(leaf.shape[1:])
    )
    for g, leaf in jac.items()
  }


def _close(a, b, rtol=1e-5, atol=1e-6):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


SETTINGS = [
  dict(scores=s, normalize=n)
  for s, n in itertools.product(
    ["gramian", "descent"], ["trace", "cosine", "none"]
  )
]


@pytest.mark.parametrize("kw", SETTINGS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hard_equals_argmax_direction(kw, seed):
  jac = _jac(seed)
  upd, state = _run(j6jax.j6(mode="hard", **kw), jac)
  d = j6jax.decompose(j6jax.group_gramians(jac))
  s = j6jax.j6_scores(d, **kw)
  c = int(jnp.argmax(s))
  assert int(state.chosen) == c
  np.testing.assert_allclose(state.alpha, np.eye(6)[c])
  _close(upd, _direction(jac, d, c))


@pytest.mark.parametrize("kw", SETTINGS)
def test_soft_limits(kw):
  jac = _jac(3)
  d = j6jax.decompose(j6jax.group_gramians(jac))
  hard, _ = _run(j6jax.j6(mode="hard", **kw), jac)
  cold, st_cold = _run(j6jax.j6(temperature=1e-6, **kw), jac)
  _close(cold, hard, rtol=1e-5, atol=1e-6)
  hot, st_hot = _run(j6jax.j6(temperature=1e9, **kw), jac)
  mean = jax.tree.map(
    lambda *xs: sum(xs) / 6, *[_direction(jac, d, c) for c in range(6)]
  )
  _close(hot, mean, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(st_hot.alpha, np.full(6, 1 / 6), rtol=1e-6)
  assert np.all(np.isfinite(st_cold.alpha))


def test_soft_update_is_alpha_weighted_sum():
  jac = _jac(4)
  upd, state = _run(j6jax.j6(temperature=0.3), jac)
  d = j6jax.decompose(j6jax.group_gramians(jac))
  ref = jax.tree.map(
    lambda *xs: sum(xs),
    *[
      jax.tree.map(lambda x, a=a: a * x, _direction(jac, d, c))
      for c, a in enumerate(state.alpha)
    ],
  )
  _close(upd, ref)
  np.testing.assert_allclose(state.alpha.sum(), 1.0, rtol=1e-6)
  np.testing.assert_allclose(state.components, d.values, rtol=1e-6)


def test_descent_scores_closed_form():
  jac = _jac(5)
  d = j6jax.decompose(j6jax.group_gramians(jac))
  s = j6jax.j6_scores(d, scores="descent", normalize="none")
  g = np.concatenate(
    [np.asarray(jac[k]).reshape(2, -1).sum(0) for k in ("h", "w")]
  )
  for c in range(6):
    u = _direction(jac, d, c)
    u = np.concatenate([np.asarray(u[k]).reshape(-1) for k in ("h", "w")])
    np.testing.assert_allclose(s[c], g @ u / np.linalg.norm(u), rtol=1e-4)
  cos = j6jax.j6_scores(d, scores="descent", normalize="cosine")
  np.testing.assert_allclose(cos, s / np.linalg.norm(g), rtol=1e-4)


def test_trace_normalisation_properties():
  d = j6jax.decompose(j6jax.group_gramians(_jac(6)))
  s = j6jax.j6_scores(d)
  roles = [c for c, (_, i, j) in enumerate(d.index) if i == j]
  inter = [c for c, (_, i, j) in enumerate(d.index) if i != j]
  np.testing.assert_allclose(s[jnp.array(roles)].sum(), 1.0, rtol=1e-6)
  assert np.all(np.abs(s[jnp.array(inter)]) <= 0.5 + 1e-6)


def test_c03_softmax_weights_and_tie(cases):
  case = cases["C03"]
  inp, exp = case["input"], case["expected"]
  grads = inp["gradients"]
  jac = {
    g: jnp.array([grads[g]["fact"], grads[g]["conf"]], jnp.float32)
    for g in ("w", "h")
  }
  params = {"h": jnp.zeros(2), "w": jnp.zeros(2)}
  d = j6jax.decompose(j6jax.group_gramians(jac))
  # Map the case's order ("w:fact.fact", ...) onto ours (h first).
  to_ours = {
    "w:fact.fact": "role:F@w",
    "w:conf.conf": "role:C@w",
    "w:fact.conf": "interplay:F,C@w",
    "h:fact.fact": "role:F@h",
    "h:conf.conf": "role:C@h",
    "h:fact.conf": "interplay:F,C@h",
  }
  perm = [d.names.index(to_ours[n]) for n in inp["score_order"]]
  np.testing.assert_allclose(d.values[jnp.array(perm)], inp["scores"])
  for t in inp["temperatures"]:
    tx = j6jax.j6(normalize="none", temperature=t)
    _, state = jax.jit(tx.update)(jac, tx.init(params))
    alpha = np.asarray(state.alpha)[perm]
    want = exp["soft_weights"][str(t) if t != 0.01 else "0.01"]
    assert np.all(np.isfinite(alpha))
    np.testing.assert_allclose(alpha.sum(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(alpha, want, rtol=1e-4, atol=1e-6)
  tx = j6jax.j6(normalize="none", mode="hard")
  upd, state = tx.update(jac, tx.init(params))
  # Tie between role:F@h and role:F@w: the lowest index in our order wins.
  assert d.names[int(state.chosen)] == "role:F@h"
  np.testing.assert_allclose(upd["h"], grads["h"]["fact"])
  np.testing.assert_allclose(upd["w"], [0, 0])
  for bad in inp["invalid_temperatures"]:
    with pytest.raises(ValueError, match="temperature must be > 0"):
      j6jax.j6(temperature=bad)


def test_c09_inject_hyperparams_temperature_no_retrace(cases):
  case = cases["C09"]
  inp, exp = case["input"], case["expected"]
  scores = jnp.array(inp["scores"])
  np.testing.assert_allclose(
    j6jax.j6_alpha(scores, temperature=1.0), exp["weights_T1"], atol=1e-6
  )
  np.testing.assert_allclose(
    j6jax.j6_alpha(scores, temperature=0.25), exp["weights_T0.25"], atol=1e-6
  )
  # Through the transform: jit one step, change the temperature through
  # set_hyperparams (given a Python float), and step again without a retrace.
  tx = optax.inject_hyperparams(j6jax.j6)(temperature=1.0, normalize="none")
  state = tx.init(PARAMS)
  traces = []

  @jax.jit
  def step(jac, state):
    traces.append(1)
    return tx.update(jac, state)

  jac = _jac(7)
  _, s1 = step(jac, state)
  np.testing.assert_allclose(
    s1.inner_state.alpha, j6jax.j6_alpha(s1.inner_state.scores), rtol=1e-6
  )
  s1 = j6jax.set_hyperparams(s1, temperature=inp["second_temperature"])
  _, s2 = step(jac, s1)
  np.testing.assert_allclose(
    s2.inner_state.alpha,
    j6jax.j6_alpha(s2.inner_state.scores, temperature=0.25),
    rtol=1e-5,
  )
  assert not np.allclose(s1.inner_state.alpha, s2.inner_state.alpha)
  assert len(traces) == exp["trace_count"]
  with pytest.raises(KeyError, match=r"no_such.*the state has.*temperature"):
    j6jax.set_hyperparams(s2, no_such=1.0)
  with pytest.raises(ValueError, match="temperature must be > 0"):
    j6jax.set_hyperparams(s2, temperature=0.0)
  with pytest.raises(ValueError, match=r"ema must be in \[0, 1\)"):
    j6jax.set_hyperparams(s2, ema=1.5)


def test_ema_averages_scores():
  tx = j6jax.j6(ema=0.5)
  state = tx.init(PARAMS)
  j1, j2 = _jac(8), _jac(9)
  _, s1 = tx.update(j1, state)
  np.testing.assert_allclose(s1.avg_scores, s1.scores)
  _, s2 = tx.update(j2, s1)
  np.testing.assert_allclose(
    s2.avg_scores, 0.5 * s1.scores + 0.5 * s2.scores, rtol=1e-6
  )
  np.testing.assert_allclose(s2.alpha, j6jax.j6_alpha(s2.avg_scores), rtol=1e-6)
  assert int(s2.count) == 2 and int(s2.selection_counts.sum()) == 2


def test_objective_weights_scale_rows():
  jac = _jac(10)
  lw = jnp.array([2.0, 0.5])
  upd, state = _run(j6jax.j6(objective_weights=[2.0, 0.5]), jac)
  scaled = jax.tree.map(lambda x: x * lw.reshape(2, *[1] * (x.ndim - 1)), jac)
  ref, ref_state = _run(j6jax.j6(), scaled)
  _close(upd, ref)
  np.testing.assert_allclose(state.components, ref_state.components, rtol=1e-5)


@pytest.mark.parametrize("mode", ["soft", "hard"])
@pytest.mark.parametrize("scores", ["gramian", "descent"])
def test_jit_equals_eager_and_chain(mode, scores):
  jac = _jac(11)
  tx = optax.chain(j6jax.j6(mode=mode, scores=scores), optax.adam(1e-2))
  state = tx.init(PARAMS)
  eager = tx.update(jac, state, PARAMS)
  jitted = jax.jit(tx.update)(jac, state, PARAMS)
  _close(eager[0], jitted[0], rtol=1e-5, atol=1e-7)
  new = optax.apply_updates(PARAMS, jitted[0])
  assert jax.tree.structure(new) == jax.tree.structure(PARAMS)
  alpha = optax.tree.get(jitted[1], "alpha")
  np.testing.assert_allclose(alpha.sum(), 1.0, rtol=1e-6)


def test_extra_args_accepted_and_no_retrace():
  tx = optax.chain(j6jax.j6(), optax.sgd(0.1))
  state = tx.init(PARAMS)
  traces = []

  @jax.jit
  def step(jac, state, value):
    traces.append(1)
    return tx.update(jac, state, PARAMS, value=value)

  _, state = step(_jac(12), state, jnp.ones(2))
  _, state = step(_jac(13), state, jnp.zeros(2))
  assert len(traces) == 1


def test_nested_pytree_three_objectives():
  params = {"h": {"a": jnp.zeros(3), "b": jnp.zeros((2, 2))}, "w": jnp.zeros(5)}
  jac = _jac(14, m=3, params=params)
  tx = j6jax.j6(objective_names=("F", "C", "L"), mode="hard")
  upd, state = _run(tx, jac, params)
  assert state.alpha.shape == (12,)
  d = j6jax.decompose(
    j6jax.group_gramians(jac), objective_names=("F", "C", "L")
  )
  assert d.names[3] == "interplay:F,C@h"
  c = int(state.chosen)
  beta = j6jax.candidate_coefficients(d)[c]
  grp = d.groups[d.index[c][0]]
  for g, sub in jac.items():
    want = jax.tree.map(
      lambda x, on=(g == grp): (
        jnp.tensordot(beta, x, 1) if on else jnp.zeros(x.shape[1:])
      ),
      sub,
    )
    _close(upd[g], want)


def test_custom_labels_and_group_order():
  params = {"a": jnp.zeros(2), "b": jnp.zeros(3), "c": jnp.zeros(1)}
  jac = _jac(15, params=params)
  tx = j6jax.j6(labels={"a": "w", "b": "h", "c": "w"}, groups=("w", "h"))
  upd, state = _run(tx, jac, params)
  grams = j6jax.group_gramians(
    jac, {"a": "w", "b": "h", "c": "w"}, groups=("w", "h")
  )
  d = j6jax.decompose(grams)
  assert d.names[0] == "role:F@w"
  np.testing.assert_allclose(state.components, d.values, rtol=1e-6)


# Degenerate inputs ----------------------------------------------------------

M2 = {"h": jnp.zeros(2), "w": jnp.zeros(2)}


def _degenerate():
  g = jnp.array([0.6, 0.8])
  z = jnp.zeros(2)
  return {
    "zero": {"h": jnp.stack([z, z]), "w": jnp.stack([z, z])},
    "zero_row": {"h": jnp.stack([g, z]), "w": jnp.stack([g, z])},
    "identical": {"h": jnp.stack([g, g]), "w": jnp.stack([g, g])},
    "opposite": {"h": jnp.stack([g, -g]), "w": jnp.stack([-g, g])},
    "tiny": {"h": 1e-30 * jnp.stack([g, -g]), "w": 1e-30 * jnp.stack([g, g])},
    "huge": {"h": 1e18 * jnp.stack([g, -g]), "w": 1e18 * jnp.stack([g, g])},
  }


@pytest.mark.parametrize("kw", SETTINGS)
@pytest.mark.parametrize("mode", ["soft", "hard"])
@pytest.mark.parametrize("name", list(_degenerate()))
def test_degenerate_inputs_are_finite(kw, mode, name):
  jac = _degenerate()[name]
  upd, state = jax.jit(j6jax.j6(mode=mode, **kw).update)(
    jac, j6jax.j6(mode=mode, **kw).init(M2)
  )
  for leaf in jax.tree.leaves((upd, state)):
    assert np.all(np.isfinite(np.asarray(leaf, np.float64))), name
  if name == "zero":
    _close(upd, jax.tree.map(jnp.zeros_like, M2), atol=0)
  if name == "opposite":
    # Opposite rows on h: the interplay candidate is the min-norm point, 0.
    d = j6jax.decompose(j6jax.group_gramians(jac))
    beta = j6jax.candidate_coefficients(d)[2]
    np.testing.assert_allclose(beta @ jac["h"], [0, 0], atol=1e-6)


def test_one_objective_and_one_group():
  tx = j6jax.j6(objective_names=("F",), mode="hard")
  jac = {"h": jnp.ones((1, 2)), "w": 2 * jnp.ones((1, 2))}
  upd, state = _run(tx, jac, M2)
  assert state.alpha.shape == (2,)
  _close(upd, {"h": jnp.zeros(2), "w": 2 * jnp.ones(2)})
  tx = j6jax.j6(labels=lambda t: jax.tree.map(lambda _: "all", t))
  upd, state = _run(tx, _jac(16), PARAMS)
  assert state.alpha.shape == (3,)
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(upd))


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), scale=st.sampled_from([1e-6, 1.0, 1e6]))
def test_scale_equivariance(seed, scale):
  jac = _jac(seed)
  for kw in (
    dict(normalize="trace"),
    dict(scores="descent", normalize="cosine"),
  ):
    a, sa = _run(j6jax.j6(**kw), jac)
    b, sb = _run(j6jax.j6(**kw), jax.tree.map(lambda x: scale * x, jac))
    np.testing.assert_allclose(sa.alpha, sb.alpha, rtol=1e-4, atol=1e-6)
    _close(
      jax.tree.map(lambda x: scale * x, a), b, rtol=1e-4, atol=1e-6 * scale
    )


# Errors ---------------------------------------------------------------------


def test_construction_errors():
  with pytest.raises(ValueError, match="mode must be one of"):
    j6jax.j6(mode="medium")
  with pytest.raises(ValueError, match="normalize must be one of"):
    j6jax.j6(normalize="l2")
  with pytest.raises(ValueError, match="scores must be one of"):
    j6jax.j6(scores="loss")
  with pytest.raises(ValueError, match="temperature must be > 0"):
    j6jax.j6(temperature=0.0)
  with pytest.raises(ValueError, match=r"ema must be in \[0, 1\)"):
    j6jax.j6(ema=1.0)
  with pytest.raises(ValueError, match="objective_weights has 3 entries"):
    j6jax.j6(objective_weights=[1, 2, 3], objective_names=("F", "C"))
  with pytest.raises(ValueError, match="1-D"):
    j6jax.j6(objective_weights=[[1.0]])
  with pytest.raises(ValueError, match=r"objective_weights must all be > 0"):
    j6jax.j6(objective_weights=[1.0, -1.0])


def test_trace_time_errors():
  tx = j6jax.j6()
  state = tx.init(PARAMS)
  with pytest.raises(ValueError, match="built for 2 objectives.*has 3"):
    tx.update(_jac(0, m=3), state)
  bad = {"h": jnp.zeros((2, 2, 3)), "w": jnp.zeros((3, 4))}
  with pytest.raises(ValueError, match="disagree on the number of objectives"):
    tx.update(bad, state)
  with pytest.raises(ValueError, match="different pytrees"):
    tx.update({"h": jnp.zeros((2, 2, 3))}, state, PARAMS)
  with pytest.raises(ValueError, match=r"\['w'\] has shape \(2, 5\)"):
    tx.update(
      {"h": jnp.zeros((2, 2, 3)), "w": jnp.zeros((2, 5))}, state, PARAMS
    )
  tx = j6jax.j6(labels={"h": "h", "w": "q"}, groups=("h", "w"))
  with pytest.raises(ValueError, match=r"Unknown label.*'q'"):
    tx.init(PARAMS)
  tx = j6jax.j6()
  state = tx.init({"h": jnp.zeros(2)})
  with pytest.raises(ValueError, match="initialised for 3 components"):
    tx.update(_jac(0), state)
