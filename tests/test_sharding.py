"""Sharding: the parsing and errors here, the 8-device checks in a
subprocess (``tests/mesh_checks.py``) so that this session keeps one
device."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from j6jax import sharding

HERE = Path(__file__).parent


@pytest.mark.parametrize(
  "text, want",
  [
    ("data=4,model=2", {"data": 4, "model": 2}),
    ("model=8", {"data": 1, "model": 8}),
    ("4", {"data": 4, "model": 1}),
    (" data = 2 , ", {"data": 2, "model": 1}),
  ],
)
def test_parse_mesh_shape(text, want):
  assert sharding.parse_mesh_shape(text) == want


@pytest.mark.parametrize(
  "text, match",
  [
    ("data=4,pipe=2", r"Unknown mesh axes \['pipe'\]"),
    ("data:4", r"'data:4' is not 'axis=size'"),
    ("data=0", r"sizes must be >= 1"),
    ("data=x", r"is not 'axis=size'"),
  ],
)
def test_parse_mesh_shape_errors(text, match):
  with pytest.raises(ValueError, match=match):
    sharding.parse_mesh_shape(text)


def test_make_mesh_needs_the_devices():
  n = jax.device_count()
  with pytest.raises(ValueError, match=rf"needs {8 * n} devices, but there"):
    sharding.make_mesh({"data": 8 * n})
  mesh = sharding.make_mesh()
  assert mesh.axis_names == ("data", "model")
  assert mesh.devices.shape == (n, 1)


def test_one_device_mesh_keeps_values():
  mesh = sharding.make_mesh()
  x = {"w": np.ones((2, 3), np.float32), "none": None}
  out = sharding.shard_prompt(x, mesh)
  assert out["none"] is None
  np.testing.assert_array_equal(np.asarray(out["w"]), x["w"])


def test_eight_device_checks():
  """Steps, Gramians and a training run on 8 faked CPU devices equal the
  single-device ones (every check in ``tests/mesh_checks.py``)."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = (
    env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
  )
  env["JAX_PLATFORMS"] = "cpu"
  cmd = [
    sys.executable,
    "-m",
    "pytest",
    "-q",
    "-p",
    "no:cacheprovider",
    "-p",
    "no:xdist",
    str(HERE / "mesh_checks.py"),
  ]
  res = subprocess.run(
    cmd, env=env, cwd=HERE.parent, capture_output=True, text=True
  )
  tail = (res.stdout + res.stderr)[-6000:]
  assert res.returncode == 0, tail
  assert " passed" in tail and "skipped" not in tail, tail
