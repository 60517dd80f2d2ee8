"""Rotary embeddings: tables in float32 whatever the parameter dtype (C16)."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from j6jax import models
from j6jax._src.models.rope import apply_rope


def reference_tables(positions, head_dim, theta):
  """cos/sin in float64 from float64 inverse frequencies."""
  inv = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
  angles = np.asarray(positions, np.float64)[:, None] * inv
  return np.cos(angles), np.sin(angles)


@pytest.mark.parametrize("theta", [1e4, 1e5])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_tables_match_float64_reference_up_to_2047(theta, dtype):
  positions = np.arange(2048)
  cos, sin = models.rope_tables(positions, 64, theta, dtype)
  ref_cos, ref_sin = reference_tables(positions, 64, theta)

  assert cos.dtype == jnp.float32 and sin.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(cos), ref_cos, rtol=0, atol=2e-4)
  np.testing.assert_allclose(np.asarray(sin), ref_sin, rtol=0, atol=2e-4)


def test_case_c16_example_and_the_bf16_failure_it_guards_against():
  inv = models.inverse_frequencies(64, 1e4, jnp.bfloat16)
  assert inv.dtype == np.float32
  np.testing.assert_allclose(inv[1], 0.7498942, rtol=1e-6)
  assert float(inv[1].astype(ml_dtypes.bfloat16)) == 0.75
  # What the table would look like had inv_freq been rounded to bfloat16.
  rounded = inv.astype(ml_dtypes.bfloat16).astype(np.float32)
  bad = np.cos(np.arange(2048, dtype=np.float32)[:, None] * rounded)
  ref_cos, _ = reference_tables(np.arange(2048), 64, 1e4)
  assert np.abs(bad - ref_cos).max() > 0.5


def test_case_c16_from_cases_json(cases):
  case = cases["C16"]
  atol = case["tolerance"]["atol"]
  assert atol == 2e-4
  positions = np.arange(2048)
  for theta in case["input"]["rope_theta"]:
    head_dim = case["input"]["head_dim"]
    cos, _ = models.rope_tables(positions, head_dim, theta, jnp.bfloat16)
    ref_cos, _ = reference_tables(positions, head_dim, theta)
    assert np.abs(np.asarray(cos) - ref_cos).max() <= atol


def test_float64_parameters_get_float64_tables():
  with jax.enable_x64(True):
    cos, _ = models.rope_tables(np.arange(4), 8, 1e4, jnp.float64)
    assert cos.dtype == jnp.float64


def test_rotation_keeps_norms_and_depends_on_relative_position():
  key_q, key_k = jax.random.split(jax.random.key(0))
  q = jax.random.normal(key_q, (1, 1, 1, 16))
  k = jax.random.normal(key_k, (1, 1, 1, 16))

  def rotated(x, p):
    cos, sin = models.rope_tables(jnp.full((1, 1), p), 16, 1e4)
    return apply_rope(x, cos, sin)[0, 0, 0]

  np.testing.assert_allclose(
    jnp.linalg.norm(rotated(q, 37)), jnp.linalg.norm(q), rtol=1e-6
  )
  a = jnp.dot(rotated(q, 10), rotated(k, 3))
  b = jnp.dot(rotated(q, 107), rotated(k, 100))
  np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_rotate_half_layout_pairs_i_with_i_plus_half():
  x = jnp.zeros((1, 1, 1, 8)).at[..., 0].set(1.0)  # pair 0, first half
  cos, sin = models.rope_tables(jnp.ones((1, 1)), 8, 1e4)  # angle 1 rad
  out = np.asarray(apply_rope(x, cos, sin)[0, 0, 0])
  np.testing.assert_allclose(out[0], np.cos(1.0), rtol=1e-6)
  np.testing.assert_allclose(out[4], np.sin(1.0), rtol=1e-6)
  np.testing.assert_allclose(out[[1, 2, 3, 5, 6, 7]], 0.0, atol=0)
