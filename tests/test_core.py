"""Tests of the Jacobian, the Gramian split and the J6 decomposition."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import j6jax


def _flat(jacobian):
  leaves = jax.tree_util.tree_leaves(jacobian)
  m = leaves[0].shape[0]
  return np.concatenate([np.asarray(x).reshape(m, -1) for x in leaves], 1)


def _random_jacobian(seed, m, shapes):
  keys = jax.random.split(jax.random.PRNGKey(seed), len(shapes))
  return {
    name: jax.random.normal(k, (m, *shape))
    for k, (name, shape) in zip(keys, shapes.items(), strict=True)
  }


# objective_jacobian ---------------------------------------------------------


def _toy_objectives(params, x):
  h = jnp.tanh(x @ params["w"] + params["h"]["b"])
  return jnp.stack([jnp.mean(h**2), jnp.mean(jnp.sin(h)), jnp.sum(h) / 10])


def test_objective_jacobian_equals_jacrev():
  key = jax.random.PRNGKey(0)
  params = {"w": jax.random.normal(key, (3, 4)), "h": {"b": jnp.ones(4)}}
  x = jax.random.normal(jax.random.PRNGKey(1), (5, 3))
  values, jac = j6jax.objective_jacobian(_toy_objectives, params, x)
  ref = jax.jacrev(_toy_objectives)(params, x)
  np.testing.assert_allclose(values, _toy_objectives(params, x), rtol=1e-6)
  assert jac["w"].shape == (3, 3, 4) and jac["h"]["b"].shape == (3, 4)
  for a, b in zip(jax.tree.leaves(jac), jax.tree.leaves(ref), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  jitted = jax.jit(j6jax.objective_jacobian, static_argnums=0)
  v2, j2 = jitted(_toy_objectives, params, x)
  np.testing.assert_allclose(v2, values, rtol=1e-6)
  np.testing.assert_allclose(j2["w"], jac["w"], rtol=1e-5, atol=1e-7)


def test_objective_jacobian_has_aux():
  def fn(p):
    return jnp.stack([p.sum(), (p**2).sum()]), {"norm": jnp.linalg.norm(p)}

  p = jnp.arange(3.0)
  values, jac, aux = j6jax.objective_jacobian(fn, p, has_aux=True)
  np.testing.assert_allclose(values, [3.0, 5.0])
  np.testing.assert_allclose(jac, [[1, 1, 1], [0, 2, 4]])
  np.testing.assert_allclose(aux["norm"], np.sqrt(5.0), rtol=1e-6)


def test_objective_jacobian_rejects_unreduced_outputs():
  with pytest.raises(ValueError, match=r"shape \(m,\).*\(4, 2\)"):
    j6jax.objective_jacobian(lambda p: jnp.ones((4, 2)) * p, jnp.ones(()))
  with pytest.raises(ValueError, match=r"returned a tuple.*jnp.stack"):
    j6jax.objective_jacobian(lambda p: (p.sum(), p.sum()), jnp.ones(2))
  with pytest.raises(ValueError, match="floating-point"):
    j6jax.objective_jacobian(lambda p: jnp.ones(2, jnp.int32), jnp.ones(2))


def _c08_model(params, tokens, per_example=False):
  """Toy residual model of case C08: w prepended, h after each block."""
  B = tokens.shape[0]
  w = jnp.broadcast_to(params["w"], (B, *params["w"].shape))
  x = jnp.concatenate([w, tokens], axis=1)  # [B, 8 + T, D]
  for blk in params["blocks"]:
    x = x + jnp.tanh(x @ blk[0]) @ blk[1] + params["h"]
  logits = x @ params["out"]  # [B, S, V]
  logp = jax.nn.log_softmax(logits, -1)
  nll = -logp[:, -1, 0]
  p_last = jnp.exp(logp[:, -1])
  ent = -jnp.sum(p_last * logp[:, -1], -1)
  per = jnp.stack([nll, ent], -1)  # [B, 2]
  return per if per_example else jnp.mean(per, 0)


def test_c08_jacobian_memory_and_mean_identity(cases):
  case = cases["C08"]
  exp = case["expected"]
  D, B, T, V = 128, 256, 16, 32
  k = jax.random.split(jax.random.PRNGKey(0), 12)
  blocks = [
    (
      jax.random.normal(k[2 * i], (D, 4 * D)) / np.sqrt(D),
      jax.random.normal(k[2 * i + 1], (4 * D, D)) / np.sqrt(4 * D),
    )
    for i in range(4)
  ]
  train = {"w": 0.1 * jax.random.normal(k[8], (8, D)), "h": jnp.zeros(D)}
  tokens = jax.random.normal(k[9], (B, T, D))
  out = jax.random.normal(k[10], (D, V)) / np.sqrt(D)

  def fn(p, toks):
    return _c08_model({**p, "blocks": blocks, "out": out}, toks)

  values, jac = j6jax.objective_jacobian(fn, train, tokens)
  assert list(jac["w"].shape) == exp["jacobian_leaf_shapes"]["w"]
  assert list(jac["h"].shape) == exp["jacobian_leaf_shapes"]["h"]

  # Equals the mean of the per-example Jacobian (computed on 8 examples).
  small = tokens[:8]
  per = jax.jacrev(
    lambda p: _c08_model({**p, "blocks": blocks, "out": out}, small, True)
  )(train)
  _, jac8 = j6jax.objective_jacobian(fn, train, small)
  np.testing.assert_allclose(
    jac8["w"], jnp.mean(per["w"], 0), rtol=1e-4, atol=1e-6
  )

  # Memory: compiled temp memory within 3x of one grad of one objective.
  def grad_fn(p, toks):
    return jax.grad(lambda q: fn(q, toks)[0])(p)

  def jac_fn(p, toks):
    return j6jax.objective_jacobian(fn, p, toks)

  def temp_bytes(f):
    compiled = jax.jit(f).lower(train, tokens).compile()
    analysis = compiled.memory_analysis()
    if analysis is None:
      pytest.skip("memory_analysis() unavailable on this backend")
    return analysis.temp_size_in_bytes

  ratio = temp_bytes(jac_fn) / temp_bytes(grad_fn)
  assert ratio <= 3.0, ratio


# group_gramians -------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(
  m=st.integers(1, 5),
  seed=st.integers(0, 2**16),
  n_leaves=st.integers(1, 4),
  scale=st.sampled_from([0.0, 1e-6, 1.0, 1e6]),
)
def test_group_gramians_sum_to_full_gramian(m, seed, n_leaves, scale):
  rng = np.random.default_rng(seed)
  jac = {
    f"g{i % 2}": {
      f"leaf{i}": scale * rng.standard_normal((m, *rng.integers(1, 4, 2)))
    }
    for i in range(n_leaves)
  }
  jac = jax.tree.map(jnp.asarray, jac)
  grams = j6jax.group_gramians(jac)
  total = sum(grams.values())
  flat = _flat(jac).astype(np.float64)
  ref = flat @ flat.T
  np.testing.assert_allclose(total, ref, rtol=1e-5, atol=1e-5 * scale**2)
  np.testing.assert_allclose(
    j6jax.gramian(jac), ref, rtol=1e-5, atol=1e-5 * scale**2
  )
  for g in grams.values():
    np.testing.assert_allclose(g, g.T, rtol=0, atol=1e-6 * scale**2)
    assert np.linalg.eigvalsh(np.asarray(g, np.float64)).min() >= (
      -1e-4 * max(scale**2, 1e-30) * flat.shape[1]
    )


def test_group_gramians_labels_pytree_callable_and_prefix():
  jac = _random_jacobian(0, 2, {"a": (3,), "b": (2, 2), "c": (4,)})
  flat = {k: np.asarray(v).reshape(2, -1) for k, v in jac.items()}
  labels = {"a": "x", "b": "y", "c": "x"}
  grams = j6jax.group_gramians(jac, labels)
  assert list(grams) == ["x", "y"]
  xs = np.concatenate([flat["a"], flat["c"]], 1)
  np.testing.assert_allclose(grams["x"], xs @ xs.T, rtol=1e-5)
  np.testing.assert_allclose(grams["y"], flat["b"] @ flat["b"].T, rtol=1e-5)
  by_fn = j6jax.group_gramians(jac, lambda t: {k: labels[k] for k in t})
  np.testing.assert_allclose(by_fn["x"], grams["x"], rtol=1e-6)
  nested = {"p": jac, "q": jnp.ones((2, 5))}
  pre = j6jax.group_gramians(nested, {"p": "x", "q": "z"})
  assert list(pre) == ["x", "z"]
  np.testing.assert_allclose(pre["z"], 5 * np.ones((2, 2)), rtol=1e-6)
  ordered = j6jax.group_gramians(jac, labels, groups=("y", "x"))
  assert list(ordered) == ["y", "x"]


def test_group_gramians_default_groups_and_bare_array():
  jac = {"w": jnp.ones((2, 3)), "h": jnp.ones((2, 2, 2))}
  assert list(j6jax.group_gramians(jac)) == ["h", "w"]
  bare = j6jax.group_gramians(jnp.ones((3, 4)))
  assert list(bare) == ["params"]
  np.testing.assert_allclose(bare["params"], 4 * np.ones((3, 3)))


def test_group_gramians_errors():
  jac = {"h": jnp.ones((2, 3)), "w": jnp.ones((3, 3))}
  with pytest.raises(ValueError, match=r"\['w'\].*shape \(3, 3\)"):
    j6jax.group_gramians(jac)
  with pytest.raises(ValueError, match="scalar"):
    j6jax.group_gramians({"h": jnp.ones(())})
  good = {"h": jnp.ones((2, 3)), "w": jnp.ones((2, 3))}
  with pytest.raises(ValueError, match=r"Unknown label.*'q'.*given groups"):
    j6jax.group_gramians(good, {"h": "h", "w": "q"}, groups=("h", "w"))
  with pytest.raises(ValueError, match="own no parameter leaf"):
    j6jax.group_gramians(good, groups=("h", "w", "z"))
  with pytest.raises(ValueError, match="labels must be a pytree"):
    j6jax.group_gramians(good, {"h": "h"})
  with pytest.raises(ValueError, match="must be a string"):
    j6jax.group_gramians(good, {"h": "h", "w": 3})


# decompose ------------------------------------------------------------------


def test_decompose_order_names_values():
  gh = jnp.array([[4.0, -1.0], [-1.0, 1.0]])
  gw = jnp.array([[1.0, 2.0], [2.0, 4.0]])
  d = j6jax.decompose({"h": gh, "w": gw})
  assert d.names == (
    "role:F@h",
    "role:C@h",
    "interplay:F,C@h",
    "role:F@w",
    "role:C@w",
    "interplay:F,C@w",
  )
  np.testing.assert_allclose(d.values, [4, 1, -1, 1, 4, 2])
  np.testing.assert_allclose(d.shares, [[0.8, 0.2], [0.2, 0.8]], rtol=1e-6)
  np.testing.assert_allclose(d.shares.sum(0), [1, 1], rtol=1e-6)
  np.testing.assert_allclose(d.cosines[0, 0, 1], -0.5, rtol=1e-6)
  np.testing.assert_allclose(d.cosines[1, 0, 1], 1.0, rtol=1e-6)
  np.testing.assert_array_equal(d.conflicts, [[False, False], [False, False]])
  np.testing.assert_array_equal(d.group_conflicts[0], [[0, 1], [1, 0]])
  np.testing.assert_allclose(d.gramian, gh + gw)
  assert d.as_dict()["interplay:F,C@w"] == 2.0


def test_decompose_general_m_and_names():
  grams = {"a": jnp.eye(3), "b": 2 * jnp.eye(3)}
  d = j6jax.decompose(grams, ("x", "y", "z"))
  assert len(d.values) == 2 * 3 * 4 // 2
  assert d.names[:6] == (
    "role:x@a",
    "role:y@a",
    "role:z@a",
    "interplay:x,y@a",
    "interplay:x,z@a",
    "interplay:y,z@a",
  )
  assert j6jax.decompose(grams).objectives == ("f0", "f1", "f2")
  with pytest.raises(ValueError, match="objective_names has 2 names"):
    j6jax.decompose(grams, ("x", "y"))
  with pytest.raises(ValueError, match="same m.*'b' has shape"):
    j6jax.decompose({"a": jnp.eye(2), "b": jnp.eye(3)})
  with pytest.raises(ValueError, match=r"square.*'h' has shape \(2, 3\)"):
    j6jax.decompose({"h": jnp.ones((2, 3))})


def test_decompose_zero_gramian_is_finite():
  d = j6jax.decompose({"h": jnp.zeros((2, 2)), "w": jnp.zeros((2, 2))})
  for leaf in jax.tree.leaves(d):
    assert np.all(np.isfinite(np.asarray(leaf, np.float64)))
  np.testing.assert_allclose(d.shares, 0.5)
  np.testing.assert_allclose(d.cosines, 0.0)


def test_decompose_under_jit():
  grams = {"h": jnp.array([[2.0, 1.0], [1.0, 3.0]]), "w": jnp.eye(2)}
  eager = j6jax.decompose(grams)
  jitted = jax.jit(j6jax.decompose)(grams)
  assert jitted.names == eager.names
  for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-6)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), m=st.integers(2, 4))
def test_interplay_candidates_lower_both_objectives(seed, m):
  jac = _random_jacobian(seed, m, {"h": (6,), "w": (3, 2)})
  d = j6jax.decompose(j6jax.group_gramians(jac))
  beta = j6jax.candidate_coefficients(d)
  for c, (k, i, j) in enumerate(d.index):
    leaf = np.asarray(jac[d.groups[k]]).reshape(m, -1).astype(np.float64)
    u = beta[c] @ leaf
    if i == j:
      np.testing.assert_allclose(u, leaf[i], rtol=1e-6)
      continue
    # First-order change of objective i along -u is -<J_i, u> <= 0.
    scale = np.linalg.norm(leaf[i]) * np.linalg.norm(leaf[j])
    assert leaf[i] @ u >= -1e-5 * scale
    assert leaf[j] @ u >= -1e-5 * scale
