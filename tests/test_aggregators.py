"""Tests of the baseline aggregators (:mod:`j6jax.aggregators`).

The failure cases C01, C02, C05 and C06 are read from ``../shared/cases.json``;
the properties (finite on degenerate inputs, jit, optax chains on pytrees,
permutations, scale, retracing, option checks) run over every aggregator.
Agreement with TorchJD is in ``test_aggregators_torchjd.py``.
"""

from __future__ import annotations

import functools
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from j6jax import aggregators as agg
from j6jax._src.aggregators import _base, _pcgrad

CASES_PATH = Path(__file__).parents[1].parent / "shared" / "cases.json"


def _case(cid: str) -> dict:
  if not CASES_PATH.exists():
    pytest.skip(f"{CASES_PATH} not found (shared/ beside the checkout)")
  for case in json.loads(CASES_PATH.read_text())["cases"]:
    if case["id"] == cid:
      return case
  pytest.skip(f"case {cid} not in {CASES_PATH}")


def _gram(jac) -> jax.Array:
  j = jnp.asarray(jac, jnp.float32)
  return j @ j.T


def _linear_w(m: int) -> jax.Array:
  return jnp.arange(1, m + 1, dtype=jnp.float32) / m


# --------------------------------------------------------------- the registry


@dataclass(frozen=True)
class Spec:
  """One aggregator: its weight function and its optax factory."""

  name: str
  weights: Callable[[jax.Array], jax.Array]
  factory: Callable[[int], optax.GradientTransformationExtraArgs]
  permutes: bool = True  # weights(P G P^T) == P weights(G)
  scale: str = "weights"  # "weights": invariant; "update": Nash-MTL


def _linear_weights(g):
  return agg.linear_weights(g, _linear_w(g.shape[0]))


def _mgda_exact(g):
  return agg.mgda_weights(g, solver="active_set")


SPECS = [
  Spec("linear", _linear_weights, lambda m: agg.linear(_linear_w(m)), False),
  Spec("mean", agg.mean_weights, lambda m: agg.mean(num_objectives=m)),
  Spec("mgda", agg.mgda_weights, lambda m: agg.mgda(num_objectives=m)),
  Spec(
    "mgda_active_set",
    _mgda_exact,
    lambda m: agg.mgda(num_objectives=m, solver="active_set"),
  ),
  Spec("pcgrad", agg.pcgrad_weights, lambda m: agg.pcgrad(num_objectives=m)),
  Spec("cagrad", agg.cagrad_weights, lambda m: agg.cagrad(num_objectives=m)),
  Spec("upgrad", agg.upgrad_weights, lambda m: agg.upgrad(num_objectives=m)),
  Spec("imtl_g", agg.imtl_g_weights, lambda m: agg.imtl_g(num_objectives=m)),
  Spec(
    "nash_mtl",
    agg.nash_mtl_weights,
    lambda m: agg.nash_mtl(num_objectives=m),
    scale="update",
  ),
  Spec(
    "dualproj", agg.dualproj_weights, lambda m: agg.dualproj(num_objectives=m)
  ),
  Spec(
    "aligned_mtl",
    agg.aligned_mtl_weights,
    lambda m: agg.aligned_mtl(num_objectives=m),
  ),
]
SPEC_IDS = [s.name for s in SPECS]
# The weight functions run their solvers as jitted cores, so plain calls
# share one compilation per shape across tests; jit itself is tested below.
WEIGHTS = {s.name: s.weights for s in SPECS}
MGDA_JIT = jax.jit(agg.mgda_weights, static_argnames="solver")


def _random_jacobian(seed: int, m: int, n: int) -> np.ndarray:
  """A well-conditioned ``[m, n]`` matrix (singular values in [0.5, 2])."""
  rng = np.random.default_rng(seed)
  r = min(m, n)
  u = np.linalg.qr(rng.normal(size=(m, m)))[0][:, :r]
  v = np.linalg.qr(rng.normal(size=(n, n)))[0][:, :r]
  return ((u * rng.uniform(0.5, 2.0, r)) @ v.T).astype(np.float32)


# ---------------------------------------------------------------- C01: MGDA


@pytest.mark.parametrize("solver", ["frank_wolfe", "active_set"])
def test_c01_mgda_cases(solver):
  case = _case("C01")
  params = case["input"]["solver_params"]
  atol = case["tolerance"]["atol"]
  fn = MGDA_JIT
  for name, jac in case["input"]["jacobians"].items():
    exp = case["expected"][name]
    j = np.asarray(jac, np.float32)
    w = np.asarray(fn(_gram(j), params["epsilon"], params["max_iters"], solver))
    assert np.all(np.isfinite(w)), name
    assert np.all(w >= -atol) and abs(w.sum() - 1) <= atol, (name, w)
    np.testing.assert_allclose(w @ j, exp["update"], atol=atol, rtol=0)
    if isinstance(exp["weights"], list):
      np.testing.assert_allclose(w, exp["weights"], atol=atol, rtol=0)
    if "update_sq_norm" in exp:
      np.testing.assert_allclose(
        np.sum((w @ j) ** 2), exp["update_sq_norm"], atol=atol, rtol=0
      )


def test_c01_frank_wolfe_identical_rows_ends_at_vertex():
  case = _case("C01")
  j = case["input"]["jacobians"]["identical"]
  w = MGDA_JIT(_gram(j), 1e-3, 100)
  np.testing.assert_allclose(w, [1.0, 0.0], atol=0, rtol=0)


def test_c01_frank_wolfe_bounded_by_max_iters():
  # One step from the centre of the simplex on the control case lands
  # exactly on the optimum; max_iters=1 must stop there, and a huge
  # max_iters with a tiny epsilon still terminates (bounded while_loop).
  g = _gram([[1, 0, 0, 0], [0, 2, 0, 0]])
  w1 = MGDA_JIT(g, 1e-3, 1)
  np.testing.assert_allclose(w1, [0.8, 0.2], atol=1e-6, rtol=0)
  g_same = _gram([[0.6, 0.8, 0, 0], [0.6, 0.8, 0, 0]])
  w = MGDA_JIT(g_same, 1e-30, 10_000)
  np.testing.assert_allclose(w, [1.0, 0.0], atol=0, rtol=0)


def test_mgda_active_set_smallest_norm_among_optima():
  # Identical rows: every convex pair is optimal; the documented choice is
  # the one of smallest norm.
  g = _gram([[0.6, 0.8, 0, 0], [0.6, 0.8, 0, 0]])
  np.testing.assert_allclose(_mgda_exact(g), [0.5, 0.5], atol=1e-6)
  g = _gram([[0, 0, 0], [0, 0, 0], [0, 0, 0]])
  np.testing.assert_allclose(_mgda_exact(g), [1 / 3] * 3, atol=1e-6)


def test_mgda_active_set_is_optimal():
  j = _random_jacobian(3, 4, 6)
  g = _gram(j)
  w = np.asarray(_mgda_exact(g))
  wf = np.asarray(MGDA_JIT(g, 1e-6, 10_000))
  gn = np.asarray(g, np.float64)
  # KKT of min w^T G w on the simplex: (G w)_i >= w^T G w, equality on the
  # support; Frank-Wolfe cannot do better.
  assert np.all(gn @ w >= w @ gn @ w - 1e-5)
  assert w @ gn @ w <= wf @ gn @ wf + 1e-6


# -------------------------------------------------------------- C02: PCGrad


def test_c02_pcgrad_projected_rows_and_sum():
  case = _case("C02")
  exp = case["expected"]
  atol = case["tolerance"]["atol"]
  j = np.asarray(case["input"]["jacobian"], np.float32)
  g, _ = _base.normalize(_gram(j))
  rows = [
    np.asarray(_pcgrad._projected(g, jnp.asarray(i), jnp.asarray([1 - i])))
    for i in range(2)
  ]
  np.testing.assert_allclose(
    np.stack(rows) @ j, exp["projected_rows"], atol=atol, rtol=0
  )
  w = np.asarray(agg.pcgrad_weights(_gram(j)))
  update = w @ j
  # j6jax sums the projected rows (the paper's and TorchJD's convention).
  np.testing.assert_allclose(update, exp["aggregate_sum"], atol=atol, rtol=0)
  np.testing.assert_allclose(
    update / 2, exp["aggregate_mean"], atol=atol, rtol=0
  )
  np.testing.assert_allclose(j @ update, exp["J_times_update_sum"], atol=atol)
  for bad in exp["buggy_inplace_results_to_reject"].values():
    assert np.abs(update - np.asarray(bad)).max() > 0.1
  swapped = np.asarray(agg.pcgrad_weights(_gram(j[::-1])))
  assert exp["row_order_swapped_gives_same"]
  np.testing.assert_allclose(swapped @ j[::-1], update, atol=atol, rtol=0)


def _pcgrad_reference(j: np.ndarray, order: tuple[int, ...], i: int):
  """PCGrad on vectors (float64): J[i] projected off the others in turn."""
  x = j[i].astype(np.float64).copy()
  for k in order:
    inner = x @ j[k]
    if inner < 0:
      x = x - inner / (j[k] @ j[k]) * j[k]
  return x


@pytest.mark.parametrize("m", [3, 4])
def test_pcgrad_average_equals_mean_over_all_orders(m):
  j = np.random.default_rng(m).normal(size=(m, m + 1)).astype(np.float32)
  expected = np.zeros(m + 1)
  for i in range(m):
    others = [k for k in range(m) if k != i]
    perms = list(itertools.permutations(others))
    expected += sum(_pcgrad_reference(j, p, i) for p in perms) / len(perms)
  w = np.asarray(agg.pcgrad_weights(_gram(j)))
  np.testing.assert_allclose(w @ j, expected, atol=1e-5, rtol=1e-5)
  # The fixed order is one of those orders.
  fixed = np.asarray(agg.pcgrad_weights(_gram(j), order="fixed"))
  ref = sum(
    _pcgrad_reference(j, [k for k in range(m) if k != i], i) for i in range(m)
  )
  np.testing.assert_allclose(fixed @ j, ref, atol=1e-5, rtol=1e-5)


def test_pcgrad_explicit_order():
  j = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
  order = np.array([[2, 1], [0, 2], [1, 0]])
  w = np.asarray(agg.pcgrad_weights(_gram(j), order=order))
  ref = sum(_pcgrad_reference(j, order[i], i) for i in range(3))
  np.testing.assert_allclose(w @ j, ref, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------ C05: IMTL-G, UPGrad


def test_c05_imtl_g_cases():
  case = _case("C05")
  atol = case["tolerance"]["atol"]
  fn = agg.imtl_g_weights
  for name, jac in case["input"]["imtlg_jacobians"].items():
    exp = case["expected"]["imtlg"][name]
    j = np.asarray(jac, np.float32)
    w = np.asarray(fn(_gram(j)))
    np.testing.assert_allclose(w, exp["weights"], atol=atol, rtol=0)
    np.testing.assert_allclose(w @ j, exp["update"], atol=atol, rtol=0)
    if "equal_projection_on_unit_gradients" in exp:
      unit = j / np.linalg.norm(j, axis=1, keepdims=True)
      np.testing.assert_allclose(
        unit @ (w @ j),
        exp["equal_projection_on_unit_gradients"],
        atol=atol,
        rtol=0,
      )


def test_c05_upgrad_cases():
  case = _case("C05")
  atol = case["tolerance"]["atol"]
  fn = agg.upgrad_weights
  for name, jac in case["input"]["upgrad_jacobians"].items():
    exp = case["expected"]["upgrad"][name]
    j = np.asarray(jac, np.float32)
    g = _gram(j)
    update = np.asarray(fn(g)) @ j
    np.testing.assert_allclose(update, exp["update"], atol=atol, rtol=0)
    if "J_times_update" in exp:
      np.testing.assert_allclose(
        j @ update, exp["J_times_update"], atol=atol, rtol=0
      )
    if "gramian_eigenvalues" in exp:
      np.testing.assert_allclose(
        np.linalg.eigvalsh(np.asarray(g)),
        exp["gramian_eigenvalues"],
        atol=atol,
        rtol=0,
      )


# ------------------------------------------------------------------ CAGrad


def test_cagrad_is_optimal_and_feasible():
  # max_d min_i <J[i], d> subject to |d - g0| <= c |g0|: compare with a
  # dense search over the ball's boundary (the optimum lies on it here).
  j = np.array([[1.0, 0.0], [-0.5, 1.0], [0.2, -0.4]], np.float32)
  c = 0.5
  d = np.asarray(agg.cagrad_weights(_gram(j), c), np.float64) @ j
  g0 = j.mean(axis=0).astype(np.float64)
  r = c * np.linalg.norm(g0)
  angles = np.linspace(0, 2 * np.pi, 200_001)
  ring = g0 + r * np.stack([np.cos(angles), np.sin(angles)], axis=1)
  best = (ring @ j.T.astype(np.float64)).min(axis=1).max()
  assert np.linalg.norm(d - g0) <= r * (1 + 1e-5)
  np.testing.assert_allclose((j @ d).min(), best, rtol=1e-5, atol=1e-7)


def test_cagrad_pareto_stationary_returns_closest_optimal_direction():
  # 0 is in the hull (rows 0 and 1 are opposite) and the best worst-case
  # improvement is 0: every d of the ball with J d >= 0 is optimal, and the
  # one closest to g0 = (0, 1/3) is g0 itself (weights 1/3).
  j = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]], np.float32)
  w = np.asarray(agg.cagrad_weights(_gram(j), 0.5))
  np.testing.assert_allclose(w, [1 / 3] * 3, atol=1e-6, rtol=0)
  d = w @ j
  assert np.all(j @ d >= -1e-7)


def test_cagrad_short_gradient():
  # One gradient 1e5 times shorter dominates the worst case: d = g0 + r.
  j = np.array([[1e-5, 0.0], [1.0, 0.0]], np.float32)
  d = np.asarray(agg.cagrad_weights(_gram(j), 0.5)) @ j
  np.testing.assert_allclose(d, [0.75 * (1 + 1e-5), 0.0], rtol=1e-5)


# ------------------------------------------------------------ C06: Nash-MTL


def _c06_jacobians(case):
  inp = case["input"]
  j_b = np.asarray(inp["J_b"], np.float32)
  assert inp["J_c"] == "100 * J_b"
  return {
    "J_small": np.asarray(inp["J_small"], np.float32),
    "J_b": j_b,
    "J_c": 100 * j_b,
  }


def test_c06_nash_mtl_cases():
  case = _case("C06")
  rtol = case["tolerance"]["rtol"]
  fn = agg.nash_mtl_weights
  for name, j in _c06_jacobians(case).items():
    exp = case["expected"][name]
    g = _gram(j)
    alpha = np.asarray(fn(g))
    np.testing.assert_allclose(alpha, exp["alpha"], rtol=rtol, atol=0)
    np.testing.assert_allclose(alpha @ j, exp["update"], rtol=rtol, atol=1e-6)
    gn = np.asarray(g, np.float64)
    residual = np.max(np.abs(alpha * (gn @ alpha) - 1))
    assert residual <= 1e-3, (name, residual)
    if "update_sq_norm" in exp:
      np.testing.assert_allclose(
        np.sum((alpha @ j) ** 2), exp["update_sq_norm"], rtol=rtol, atol=0
      )


def test_c06_nash_mtl_max_norm():
  case = _case("C06")
  rtol = case["tolerance"]["rtol"]
  spec = case["input"]["max_norm_case"]
  exp = case["expected"]["max_norm_case"]
  j = _c06_jacobians(case)[spec["jacobian"]]
  alpha = np.asarray(agg.nash_mtl_weights(_gram(j), spec["max_norm"]))
  np.testing.assert_allclose(alpha, exp["alpha"], rtol=rtol, atol=0)
  np.testing.assert_allclose(alpha @ j, exp["update"], rtol=rtol, atol=1e-6)


@pytest.mark.parametrize("s", [1e-6, 1e-3, 1.0, 1e3, 1e6])
def test_c06_nash_mtl_update_scale_invariant(s):
  case = _case("C06")
  fn = agg.nash_mtl_weights
  for j in _c06_jacobians(case).values():
    base = np.asarray(fn(_gram(j))) @ j
    js = (s * j).astype(np.float32)
    np.testing.assert_allclose(
      np.asarray(fn(_gram(js))) @ js, base, rtol=1e-4, atol=1e-6
    )


def test_nash_mtl_state_reports_convergence():
  tx = agg.nash_mtl(num_objectives=2)
  update = jax.jit(tx.update)
  params = jnp.zeros(2)
  state = tx.init(params)
  assert not bool(state.converged) and float(state.residual) == 1.0
  good = jnp.array([[1.0, 0.0], [1.0, 1.0]])
  _, state = update(good, state, params)
  assert bool(state.converged) and float(state.residual) <= 1e-3
  np.testing.assert_allclose(state.alpha, [0.765367, 0.541196], rtol=1e-4)
  opposite = jnp.array([[1.0, 0.0], [-1.0, 0.0]])
  u, state = update(opposite, state, params)
  assert not bool(state.converged) and float(state.residual) > 1e-3
  np.testing.assert_allclose(u, [0.0, 0.0], atol=0, rtol=0)
  assert int(state.count) == 2


def test_nash_mtl_update_weights_every_reuses_alpha():
  tx = agg.nash_mtl(num_objectives=2, update_weights_every=2)
  update = jax.jit(tx.update)
  params = jnp.zeros(2)
  state = tx.init(params)
  j1 = jnp.array([[1.0, 0.0], [1.0, 1.0]])
  j2 = jnp.array([[2.0, 0.0], [0.0, 3.0]])
  _, state = update(j1, state, params)
  alpha1 = np.asarray(state.alpha)
  u, state = update(j2, state, params)  # step 1: reused
  np.testing.assert_allclose(state.alpha, alpha1, atol=0, rtol=0)
  np.testing.assert_allclose(u, alpha1 @ np.asarray(j2), rtol=1e-6)
  _, state = update(j2, state, params)  # step 2: solved again
  np.testing.assert_allclose(state.alpha, [0.5, 1 / 3], rtol=1e-5)


# ------------------------------------------------------- every aggregator


DEGENERATE = {
  "zero": [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
  "zero_row": [[3.0, 4.0, 0.0], [0.0, 0.0, 0.0]],
  "identical": [[0.6, 0.8, 0.0], [0.6, 0.8, 0.0]],
  "opposite": [[1.0, 2.0, 0.0], [-1.0, -2.0, 0.0]],
  "parallel": [[1.0, 2.0, 0.0], [2.0, 4.0, 0.0]],
  "rank_deficient_3": [[1.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 2.0]],
  "three_opposite": [[1.0, 0.0], [-1.0, 0.0], [1.0, 0.0]],
  "three_balanced": [[1.0, 0.0], [-0.5, 0.8660254], [-0.5, -0.8660254]],
  "m1": [[3.0, 4.0]],
  "m1_zero": [[0.0, 0.0]],
  "huge": [[1e15, 0.0], [-1e15, 1e15]],
  "tiny": [[1e-15, 0.0], [-1e-15, 1e-15]],
}


@pytest.mark.parametrize("case", list(DEGENERATE), ids=list(DEGENERATE))
@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_finite_on_degenerate_inputs(spec, case):
  j = np.asarray(DEGENERATE[case], np.float32)
  w = np.asarray(WEIGHTS[spec.name](_gram(j)))
  assert w.shape == (j.shape[0],)
  assert np.all(np.isfinite(w)), w
  update = w.astype(np.float64) @ j
  assert np.all(np.isfinite(update)), update
  if not np.any(j):
    np.testing.assert_allclose(update, 0.0, atol=0, rtol=0)


def test_degenerate_values():
  # Opposite rows of equal norm: every method but a fixed weighting stops
  # (IMTL-G: no direction has equal projections, so its weights are zero).
  j = np.asarray(DEGENERATE["opposite"], np.float32)
  for spec in SPECS[1:]:
    w = np.asarray(WEIGHTS[spec.name](_gram(j)))
    np.testing.assert_allclose(w @ j, 0.0, atol=1e-5, rtol=0, err_msg=spec.name)
    if spec.name in ("imtl_g", "nash_mtl"):
      np.testing.assert_allclose(w, 0.0, atol=0, rtol=0, err_msg=spec.name)
  # Three unit gradients at 120 degrees sum to zero: Pareto-stationary, and
  # no direction has equal projections on all three (IMTL-G: zero weights).
  j = np.asarray(DEGENERATE["three_balanced"], np.float32)
  for name in ["mgda_active_set", "upgrad", "dualproj", "nash_mtl", "imtl_g"]:
    w = np.asarray(WEIGHTS[name](_gram(j)))
    np.testing.assert_allclose(w @ j, 0.0, atol=1e-5, rtol=0, err_msg=name)
  np.testing.assert_allclose(WEIGHTS["imtl_g"](_gram(j)), 0.0, atol=0, rtol=0)
  # m = 1: every method follows the gradient (Nash-MTL at unit norm, CAGrad
  # lengthened by 1 + c).
  j = np.asarray(DEGENERATE["m1"], np.float32)
  expected = {"nash_mtl": 0.2, "cagrad": 1.5, "linear": 1.0}
  for spec in SPECS:
    w = np.asarray(WEIGHTS[spec.name](_gram(j)))
    np.testing.assert_allclose(
      w, [expected.get(spec.name, 1.0)], rtol=1e-5, err_msg=spec.name
    )


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_jit_equals_eager(spec):
  g = _gram(_random_jacobian(1, 3, 4))
  np.testing.assert_allclose(
    spec.weights(g), jax.jit(spec.weights)(g), rtol=1e-5, atol=1e-6
  )


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_optax_chain_on_nested_pytree(spec):
  m = 3
  rng = np.random.default_rng(7)
  params = {"a": jnp.zeros((2, 3)), "b": {"c": jnp.zeros(4)}}
  jac = {
    "a": jnp.asarray(rng.normal(size=(m, 2, 3)), jnp.float32),
    "b": {"c": jnp.asarray(rng.normal(size=(m, 4)), jnp.float32)},
  }
  tx = optax.chain(spec.factory(m), optax.sgd(0.1))
  state = tx.init(params)
  updates, new_state = jax.jit(tx.update)(jac, state, params)
  flat = np.concatenate([np.asarray(jac["a"]).reshape(m, -1), jac["b"]["c"]], 1)
  w = np.asarray(WEIGHTS[spec.name](_gram(flat)))
  expected = -0.1 * (w @ flat)
  np.testing.assert_allclose(
    updates["a"].reshape(-1), expected[:6], rtol=1e-4, atol=1e-6
  )
  np.testing.assert_allclose(
    updates["b"]["c"], expected[6:], rtol=1e-4, atol=1e-6
  )
  np.testing.assert_allclose(new_state[0].weights, w, rtol=1e-4, atol=1e-6)
  assert int(new_state[0].count) == 1
  assert new_state[0].count.dtype == jnp.int32
  assert jax.tree.structure(updates) == jax.tree.structure(params)


@pytest.mark.parametrize("name", ["upgrad", "nash_mtl"])
def test_optax_chain_with_adam_steps(name):
  spec = SPECS[SPEC_IDS.index(name)]
  tx = optax.chain(spec.factory(2), optax.adam(1e-2))
  params = {"w": jnp.ones(3)}

  def losses(p):
    return jnp.stack([jnp.sum((p["w"] - 1) ** 2), jnp.sum(p["w"] ** 2)])

  @jax.jit
  def step(p, s):
    jac = jax.jacrev(losses)(p)
    u, s = tx.update(jac, s, p)
    return optax.apply_updates(p, u), s

  state = tx.init(params)
  for _ in range(3):
    params, state = step(params, state)
  assert np.all(np.isfinite(params["w"]))


@pytest.mark.parametrize(
  "spec", [s for s in SPECS if s.permutes], ids=lambda s: s.name
)
def test_permuting_objectives_permutes_weights(spec):
  j = _random_jacobian(2, 3, 4)
  perm = np.array([2, 0, 1])
  w = np.asarray(WEIGHTS[spec.name](_gram(j)))
  wp = np.asarray(WEIGHTS[spec.name](_gram(j[perm])))
  np.testing.assert_allclose(wp, w[perm], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("s", [1e-6, 1e-3, 1e3, 1e6])
@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_scale(spec, s):
  j = _random_jacobian(4, 3, 5)
  js = (s * j).astype(np.float32)
  w = np.asarray(WEIGHTS[spec.name](_gram(j)), np.float64)
  ws = np.asarray(WEIGHTS[spec.name](_gram(js)), np.float64)
  if spec.scale == "weights":  # weights invariant, update scales by s
    np.testing.assert_allclose(ws, w, rtol=1e-4, atol=1e-6)
  else:  # Nash-MTL: weights scale by 1 / s, the update is invariant
    np.testing.assert_allclose(ws * s, w, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(ws @ js, w @ j, rtol=1e-4, atol=1e-6)


@functools.cache
def _jitted_step(name: str):
  """A jitted update (m = 2) passing unknown extra args, and its traces."""
  tx = SPECS[SPEC_IDS.index(name)].factory(2)
  traces = []

  @jax.jit
  def step(jac, state, loss):
    traces.append(1)
    return tx.update(jac, state, None, loss=loss, key="anything")

  return tx, step, traces


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_accepts_unknown_extra_args(spec):
  tx, step, _ = _jitted_step(spec.name)
  jac = jnp.asarray([[1.0, 0.0, 2.0], [0.0, 1.0, -1.0]])
  u, state = step(jac, tx.init(jnp.zeros(3)), jnp.ones(2))
  w = np.asarray(WEIGHTS[spec.name](_gram(jac)))
  np.testing.assert_allclose(u, w @ np.asarray(jac), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(state.weights, w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_second_jitted_call_does_not_retrace(spec):
  tx, step, traces = _jitted_step(spec.name)
  state = tx.init(jnp.zeros(3))
  _, state = step(jnp.ones((2, 3)), state, jnp.zeros(2))
  before = len(traces)
  assert before >= 1
  jac = jnp.asarray([[1.0, -1.0, 0.0], [2.0, 0.0, 1.0]])
  _, state = step(jac, state, jnp.ones(2))
  assert len(traces) == before
  assert int(state.count) == 2


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_wrong_number_of_objectives_raises(spec):
  tx = spec.factory(2)
  state = tx.init(jnp.zeros(3))
  with pytest.raises(ValueError, match=r"3 objectives.*num_objectives=2"):
    tx.update(jnp.ones((3, 3)), state)


# ------------------------------------------------------- option validation


@pytest.mark.parametrize(
  "make, match",
  [
    (lambda: agg.linear(jnp.ones((2, 2))), "weights must be a non-empty 1-D"),
    (lambda: agg.linear(jnp.ones(())), "weights must be a non-empty 1-D"),
    (lambda: agg.mean(num_objectives=0), "num_objectives must be at least 1"),
    (lambda: agg.upgrad(num_objectives=2.0), "num_objectives must be a Pyt"),
    (lambda: agg.mgda(epsilon=0.0), "epsilon must be positive, but got 0.0"),
    (lambda: agg.mgda(max_iters=0), "max_iters must be a positive integer"),
    (lambda: agg.mgda(max_iters=2.5), "max_iters must be a positive integer"),
    (lambda: agg.mgda(solver="newton"), "solver must be one of"),
    (lambda: agg.cagrad(-0.1), "c must be non-negative, but got -0.1"),
    (lambda: agg.pcgrad(order="random"), "order must be one of"),
    (lambda: agg.pcgrad(order=np.zeros((2, 2))), "order must be 'average'"),
    (lambda: agg.pcgrad(num_objectives=9), "limited to m <= 8"),
    (lambda: agg.nash_mtl(max_norm=0.0), "max_norm must be positive"),
    (lambda: agg.nash_mtl(tol=-1.0), "tol must be positive"),
    (
      lambda: agg.nash_mtl(update_weights_every=0),
      "update_weights_every must be a positive integer",
    ),
    (lambda: agg.aligned_mtl(scale_mode="max"), "scale_mode must be one of"),
  ],
)
def test_invalid_options_raise(make, match):
  with pytest.raises(ValueError, match=match):
    make()


def test_weight_functions_validate_too():
  g = jnp.eye(2)
  with pytest.raises(ValueError, match="c must be non-negative"):
    agg.cagrad_weights(g, -1.0)
  with pytest.raises(ValueError, match="gramian must be a square"):
    agg.upgrad_weights(jnp.ones((2, 3)))
  with pytest.raises(ValueError, match="weights has 3 entries"):
    agg.linear_weights(g, jnp.ones(3))
  with pytest.raises(ValueError, match=r"order\[0\] must list"):
    agg.pcgrad_weights(jnp.eye(3), order=np.array([[0, 1], [0, 2], [0, 1]]))


def test_inject_hyperparams():
  factory = optax.inject_hyperparams(
    agg.cagrad, static_args=("num_objectives",)
  )
  tx = factory(0.5, num_objectives=2)
  params = jnp.zeros(2)
  jac = jnp.asarray([[1.0, 0.0], [-0.5, 1.0]])
  state = tx.init(params)
  update = jax.jit(tx.update)
  u1, state = update(jac, state, params)
  w = np.asarray(agg.cagrad_weights(_gram(jac), 0.5))
  np.testing.assert_allclose(u1, w @ np.asarray(jac), rtol=1e-5)
  state.hyperparams["c"] = jnp.asarray(0.9, state.hyperparams["c"].dtype)
  u2, _ = update(jac, state, params)
  w = np.asarray(agg.cagrad_weights(_gram(jac), 0.9))
  np.testing.assert_allclose(u2, w @ np.asarray(jac), rtol=1e-5)
  with pytest.raises(ValueError, match="static_args"):
    optax.inject_hyperparams(agg.upgrad)(num_objectives=2).init(params)


# ------------------------------------------------------ hypothesis properties

_ELEMENTS = st.floats(-2.0, 2.0, width=32, allow_subnormal=False)
_JACOBIANS = hnp.arrays(np.float32, (3, 4), elements=_ELEMENTS)


def _assume_well_posed(j: np.ndarray) -> None:
  """Skips Jacobians within float32 reach of a rank change: every
  eigenvalue of the cosine matrix is either clearly non-zero (>= 1e-3 of
  the largest) or clearly zero (<= 1e-7), so the answers are accurate to
  float32 rounding (near-dependent gradients are conditioned like 1e3+)."""
  g = j.astype(np.float64) @ j.T.astype(np.float64)
  d = np.sqrt(np.diag(g))
  s = np.where(d > 0, 1 / np.where(d > 0, d, 1), 0)
  lam = np.linalg.eigvalsh(s[:, None] * g * s[None, :])
  top = max(lam.max(), 1e-300)
  assume(np.all((lam >= 1e-3 * top) | (lam <= 1e-7 * top)))


@settings(max_examples=30, deadline=None, derandomize=True)
@given(_JACOBIANS)
def test_dual_cone_methods_never_conflict(j):
  _assume_well_posed(j)
  g = _gram(j)
  tol = 1e-4 * max(float(np.max(np.diag(np.asarray(g)))), 1e-30)
  for name in ["upgrad", "dualproj"]:
    w = np.asarray(WEIGHTS[name](g), np.float64)
    assert np.all(w >= (1 - 1e-4) / 3), (name, w)
    # The update lies in the dual cone: no objective increases.
    assert np.all(np.asarray(g, np.float64) @ w >= -tol), (name, w)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(_JACOBIANS)
def test_solver_invariants(j):
  _assume_well_posed(j)
  g = _gram(j)
  gn = np.asarray(g, np.float64)
  scale = max(float(np.trace(gn)), 1e-30)
  w = np.asarray(WEIGHTS["mgda_active_set"](g), np.float64)
  assert np.all(w >= -1e-6) and abs(w.sum() - 1) <= 1e-5
  assert np.all(gn @ w >= w @ gn @ w - 1e-4 * scale)
  w = np.asarray(WEIGHTS["pcgrad"](g))
  assert np.all(w >= 1 - 1e-5)
  alpha = np.asarray(WEIGHTS["nash_mtl"](g), np.float64)
  if np.any(alpha):
    # The solver's float32 residual is at most tol = 1e-3; evaluating it
    # adds rounding of about eps * alpha_i sum_j |G_ij alpha_j|.
    rounding = 1e-6 * np.max(alpha * (np.abs(gn) @ alpha))
    assert np.max(np.abs(alpha * (gn @ alpha) - 1)) <= 1e-3 + rounding
  w = np.asarray(WEIGHTS["cagrad"](g), np.float64)
  if np.any(w):  # |d - g0| <= c |g0| with c = 0.5
    g0 = np.full(3, 1 / 3)
    dist = (w - g0) @ gn @ (w - g0)
    assert dist <= 0.25 * (g0 @ gn @ g0) * (1 + 1e-3) + 1e-6 * scale
