"""Agreement of :mod:`j6jax.aggregators` with TorchJD 0.18's aggregators.

TorchJD runs in float64 on the exact matrix, j6jax in float32 on its
float32 rounding. Tolerances are relative to ``max |J|`` and follow from
each side's solver: exact algorithms agree to float32 rounding; where TorchJD
regularises (a ridge of ``reg_eps = 1e-4`` on the trace-normalised Gramian
in UPGrad and DualProj) the comparison is either made with the ridge nearly
switched off, or at the bias the ridge implies; where TorchJD's solver is
inexact (CAGrad's Clarabel, Nash-MTL's iterated cvxpy programs) the
tolerance is the solver's, and j6jax's answer is checked to be at least as
good. The tests that end in ``_differs`` pin down, on purpose, the cases
where j6jax does the mathematically exact thing and TorchJD does not.
"""

from __future__ import annotations

import warnings

import jax.numpy as jnp
import numpy as np
import pytest

from j6jax import aggregators as agg

torch = pytest.importorskip("torch")
tja = pytest.importorskip("torchjd.aggregation")
_linalg = pytest.importorskip("torchjd._linalg")


def _matrix(seed: int, m: int, n: int, kind: str) -> np.ndarray:
  """``[m, n]`` float64: "full" rank or rank-"deficient" by one, with
  singular values in [0.5, 2], or i.i.d. "gauss"ian entries."""
  rng = np.random.default_rng(seed)
  if kind == "gauss":
    return rng.normal(size=(m, n))
  r = min(m, n) - (kind == "deficient")
  u = np.linalg.qr(rng.normal(size=(m, m)))[0][:, :r]
  v = np.linalg.qr(rng.normal(size=(n, n)))[0][:, :r]
  return (u * rng.uniform(0.5, 2.0, r)) @ v.T


def _matrices(keep=lambda m, n, kind: True) -> list:
  """``pytest.param(m, n, kind)``: m in 2..5, n in {m - 1, m + 1, 20}."""
  out = []
  for m in range(2, 6):
    for n in sorted({m - 1, m + 1, 20}):
      for kind in ("full", "deficient", "gauss"):
        if kind == "deficient" and min(m, n) < 2:
          continue
        if keep(m, n, kind):
          out.append(pytest.param(m, n, kind, id=f"{m}x{n}-{kind}"))
  return out


MATRICES = _matrices()


def _inputs(m, n, kind):
  seed = 1000 * m + 10 * n + ("full", "deficient", "gauss").index(kind)
  j = _matrix(seed, m, n, kind)
  j32 = np.asarray(j, np.float32)
  g = jnp.asarray(j32) @ jnp.asarray(j32).T
  return j, j32, g


def _torch(aggregator, j: np.ndarray) -> np.ndarray:
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    return aggregator(torch.tensor(j)).detach().numpy()


def _assert_close(mine_w, j, ref, rtol):
  mine = np.asarray(mine_w, np.float64) @ j
  scale = np.abs(j).max()
  np.testing.assert_allclose(mine, ref, rtol=0, atol=rtol * scale)


def _near_exact_projector():
  # A ridge of 1e-9 and no trace threshold: TorchJD's QP solved (almost)
  # without regularisation; quadprog still needs a positive definite matrix.
  return _linalg.QuadprogProjector(norm_eps=0.0, reg_eps=1e-9)


# Plain calls: the solvers are jitted cores, compiled once per shape.
UPGRAD = agg.upgrad_weights
DUALPROJ = agg.dualproj_weights
MGDA = agg.mgda_weights
PCGRAD = agg.pcgrad_weights
CAGRAD = agg.cagrad_weights
IMTLG = agg.imtl_g_weights
NASH = agg.nash_mtl_weights
ALIGNED = agg.aligned_mtl_weights


# ------------------------------------------------------ exact agreements


@pytest.mark.parametrize("m, n, kind", MATRICES)
def test_mean_and_constant(m, n, kind):
  j, _, g = _inputs(m, n, kind)
  _assert_close(agg.mean_weights(g), j, _torch(tja.Mean(), j), 1e-6)
  w = np.arange(1.0, m + 1)
  _assert_close(
    agg.linear_weights(g, jnp.asarray(w, jnp.float32)),
    j,
    _torch(tja.Constant(torch.tensor(w)), j),
    1e-6,
  )


@pytest.mark.parametrize("m, n, kind", MATRICES)
def test_mgda_frank_wolfe(m, n, kind):
  # The same Frank-Wolfe iterations (epsilon = 1e-3, 100 steps).
  j, _, g = _inputs(m, n, kind)
  _assert_close(MGDA(g), j, _torch(tja.MGDA(), j), 1e-5)


@pytest.mark.parametrize("m, n, kind", MATRICES)
def test_upgrad_and_dualproj_exact(m, n, kind):
  j, _, g = _inputs(m, n, kind)
  ref = _torch(tja.UPGrad(projector=_near_exact_projector()), j)
  _assert_close(UPGRAD(g), j, ref, 5e-5)
  ref = _torch(tja.DualProj(projector=_near_exact_projector()), j)
  _assert_close(DUALPROJ(g), j, ref, 5e-5)


@pytest.mark.parametrize(
  "m, n, kind", _matrices(lambda m, n, kind: kind == "full" and n >= m)
)
def test_upgrad_and_dualproj_default_within_ridge_bias(m, n, kind):
  # TorchJD's default solves with G / tr(G) + 1e-4 I: its weights move by
  # about 1e-4 / lambda_min(G / tr(G)) relative; compare at twice that.
  j, _, g = _inputs(m, n, kind)
  gn = j @ j.T / np.trace(j @ j.T)
  tol = 2e-4 / np.linalg.eigvalsh(gn)[0]
  assert tol < 5e-2
  _assert_close(UPGRAD(g), j, _torch(tja.UPGrad(), j), tol)
  _assert_close(DUALPROJ(g), j, _torch(tja.DualProj(), j), tol)


@pytest.mark.parametrize("m, n, kind", MATRICES)
def test_imtl_g(m, n, kind):
  j, _, g = _inputs(m, n, kind)
  _assert_close(IMTLG(g), j, _torch(tja.IMTLG(), j), 1e-4)


@pytest.mark.parametrize("scale_mode", ["min", "median", "rmse"])
@pytest.mark.parametrize("m, n, kind", MATRICES)
def test_aligned_mtl(m, n, kind, scale_mode):
  j, _, g = _inputs(m, n, kind)
  ref = _torch(tja.AlignedMTL(scale_mode=scale_mode), j)
  _assert_close(ALIGNED(g, scale_mode=scale_mode), j, ref, 5e-5)


@pytest.mark.parametrize("m, n, kind", _matrices(lambda m, n, kind: m == 2))
def test_pcgrad_two_objectives(m, n, kind):
  j, _, g = _inputs(m, n, kind)
  _assert_close(PCGRAD(g), j, _torch(tja.PCGrad(), j), 1e-5)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("m", [3, 4, 5])
def test_pcgrad_seeded_orders(m, seed):
  # TorchJD draws torch.randperm(m) once per objective; replaying the same
  # seed gives those orders, which j6jax takes as an explicit `order`.
  j, _, g = _inputs(m, m + 1, "gauss")
  torch.manual_seed(seed)
  ref = _torch(tja.PCGrad(), j)
  torch.manual_seed(seed)
  order = np.array(
    [[k for k in torch.randperm(m).tolist() if k != i] for i in range(m)]
  )
  _assert_close(agg.pcgrad_weights(g, order=order), j, ref, 1e-5)


def test_pcgrad_average_is_expectation_of_torchjd():
  m = 3
  j, _, g = _inputs(m, 4, "gauss")
  draws = []
  for seed in range(300):
    torch.manual_seed(seed)
    draws.append(_torch(tja.PCGrad(), j))
  draws = np.stack(draws)
  mine = np.asarray(PCGRAD(g), np.float64) @ j
  # Monte-Carlo mean: five standard errors.
  tol = 5 * draws.std(axis=0).max() / np.sqrt(len(draws)) + 1e-6
  np.testing.assert_allclose(mine, draws.mean(axis=0), rtol=0, atol=tol)


# -------------------------------------------------------- inexact solvers


@pytest.mark.parametrize("c", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("m, n, kind", MATRICES)
def test_cagrad(m, n, kind, c):
  pytest.importorskip("cvxpy")
  j, _, g = _inputs(m, n, kind)
  ref = _torch(tja.CAGrad(c=c), j)
  w = np.asarray(CAGRAD(g, c), np.float64)
  # Clarabel's answer is accurate to about 1e-4 relative.
  _assert_close(w, j, ref, 1e-3)
  # j6jax's direction is feasible and at least as good on the CAGrad
  # objective, the worst first-order improvement min_i <J[i], d>.
  d = w @ j
  g0 = j.mean(axis=0)
  scale = np.abs(j).max() ** 2
  assert np.linalg.norm(d - g0) <= c * np.linalg.norm(g0) * (1 + 1e-4) + 1e-6
  assert (j @ d).min() >= (j @ ref).min() - 1e-5 * scale


def _nash_residual(alpha, j):
  return np.max(np.abs(alpha * ((j @ j.T) @ alpha) - 1))


@pytest.mark.parametrize("m, n, kind", MATRICES)
def test_nash_mtl(m, n, kind):
  pytest.importorskip("cvxpy")
  j, _, g = _inputs(m, n, kind)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    ref_alpha = (
      tja.NashMTL(n_tasks=m, max_norm=0.0)
      .weighting(torch.tensor(j))
      .detach()
      .numpy()
    )
  alpha = np.asarray(NASH(g), np.float64)
  mgda_norm = np.linalg.norm(np.asarray(MGDA(g, 1e-6, 10_000)) @ j)
  if mgda_norm < 1e-4 * np.abs(j).max():
    # Pareto-stationary: alpha_i (G alpha)_i = 1 has no solution; TorchJD
    # returns its initial guess of ones, j6jax zero weights.
    assert not np.any(alpha)
    return
  assert _nash_residual(alpha, j) <= 1e-4
  if _nash_residual(ref_alpha, j) > 1e-4:
    pytest.skip(
      "TorchJD's cvxpy/ECOS iteration did not converge here (its residual "
      f"is {_nash_residual(ref_alpha, j):.2g}); j6jax's Newton solve did."
    )
  np.testing.assert_allclose(alpha, ref_alpha, rtol=1e-4, atol=0)


@pytest.mark.parametrize("m", [2, 3, 5])
def test_nash_mtl_with_max_norm(m):
  pytest.importorskip("cvxpy")
  j, _, g = _inputs(m, m + 2, "full")
  ref = _torch(tja.NashMTL(n_tasks=m, max_norm=1.0), j)
  _assert_close(NASH(g, 1.0), j, ref, 1e-4)


# ------------------------------------------- where j6jax differs, and why


def test_upgrad_ridge_bias_differs():
  # Opposite gradients of very different norms: the dual cone is the
  # hyperplane orthogonal to both, so the exact UPGrad update is zero.
  # TorchJD's ridge (1e-4 on G / tr(G), comparable to the small row's share
  # of the trace) leaves a large residual component.
  j = np.array([[1.0, 0.0], [-0.01, 0.0]])
  g = jnp.asarray(j @ j.T, jnp.float32)
  mine = np.asarray(UPGRAD(g), np.float64) @ j
  np.testing.assert_allclose(mine, [0.0, 0.0], atol=1e-6, rtol=0)
  near_exact = _torch(tja.UPGrad(projector=_near_exact_projector()), j)
  np.testing.assert_allclose(near_exact, [0.0, 0.0], atol=1e-4, rtol=0)
  default = _torch(tja.UPGrad(), j)
  assert abs(default[0]) > 0.1


@pytest.mark.parametrize(
  "name, make, fn",
  [
    ("upgrad", tja.UPGrad, UPGRAD),
    ("dualproj", tja.DualProj, DUALPROJ),
    ("cagrad", lambda: tja.CAGrad(c=0.5), CAGRAD),
  ],
)
def test_small_trace_threshold_differs(name, make, fn):
  # TorchJD treats tr(G) < norm_eps = 1e-4 as G = 0 (UPGrad and DualProj then
  # return the mean, CAGrad zero); j6jax is scale invariant.
  j = np.array([[1.0, 0.0], [-2.0, 1.0]])  # the mean is not in the cone
  s = 1e-3  # tr(G) = 6e-6
  g = jnp.asarray(j @ j.T, jnp.float32)
  gs = jnp.asarray((s * j) @ (s * j).T, jnp.float32)
  mine, mine_s = np.asarray(fn(g)), np.asarray(fn(gs))
  np.testing.assert_allclose(mine_s, mine, rtol=1e-5, atol=0)
  ref = _torch(make(), j)
  ref_s = _torch(make(), s * j)
  _assert_close(mine, j, ref, 2e-4 / np.linalg.eigvalsh(j @ j.T / 6)[0])
  assert np.abs(ref_s / s - ref).max() > 0.1, name


def test_cagrad_pareto_stationary_differs():
  # Optimal value 0 with g_w = 0: TorchJD returns zero weights, a direction
  # outside the ball |d - g0| <= c |g0| for c < 1; j6jax the optimal one
  # closest to g0 (here g0 itself).
  j = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])
  g = jnp.asarray(j @ j.T, jnp.float32)
  mine = np.asarray(CAGRAD(g, 0.5), np.float64) @ j
  np.testing.assert_allclose(mine, [0.0, 1 / 3], atol=1e-6, rtol=0)
  ref = _torch(tja.CAGrad(c=0.5), j)
  np.testing.assert_allclose(ref, [0.0, 0.0], atol=1e-6, rtol=0)
  g0 = j.mean(axis=0)
  assert np.linalg.norm(ref - g0) > 0.5 * np.linalg.norm(g0)


def test_cagrad_short_gradient_differs():
  # |g_w| = 1e-5 |J|_F is below TorchJD's norm_eps, so it returns zero; the
  # exact answer is d = g0 + c |g0| along the (common) gradient direction.
  j = np.array([[1e-5, 0.0], [1.0, 0.0]])
  g = jnp.asarray(j @ j.T, jnp.float32)
  mine = np.asarray(CAGRAD(g, 0.5), np.float64) @ j
  np.testing.assert_allclose(mine, [0.75 * (1 + 1e-5), 0.0], rtol=1e-5)
  np.testing.assert_allclose(_torch(tja.CAGrad(c=0.5), j), [0.0, 0.0], atol=0)
