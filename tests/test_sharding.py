"""Sharding: the parsing and errors here, the 8-device checks in a
subprocess (``tests/mesh_checks.py``) so that this session keeps one
device."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from j6jax import sharding
from j6jax._src import train as tr

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


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_train_like_one_device(tiny_lm, tmp_path):
  """``jax.distributed`` with 2 CPU processes x 4 devices, one mesh over the
  8: the run folder they write together holds the one-device run."""
  spec = importlib.util.spec_from_file_location(
    "mesh_checks", HERE / "mesh_checks.py"
  )
  checks = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(checks)
  env = dict(os.environ)
  env["XLA_FLAGS"] = (
    env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
  )
  env["JAX_PLATFORMS"] = "cpu"
  port, run = str(_free_port()), tmp_path / "two"
  procs = [
    subprocess.Popen(
      [sys.executable, str(HERE / "multiprocess_check.py"), port, str(i), run],
      env=env,
      cwd=HERE.parent,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in range(2)
  ]
  outs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outs, strict=True):
    assert p.returncode == 0, out[-6000:]
  tr.train(
    tiny_lm,
    checks.ITEMS,
    checks.ITEMS[:2],
    checks.multiprocess_config(),
    tmp_path / "one",
  )
  for name in ("steps.jsonl", "eval.jsonl"):
    rows = [
      [json.loads(x) for x in (d / name).read_text().splitlines()]
      for d in (tmp_path / "one", run)
    ]
    assert len(rows[0]) == len(rows[1]) == 3  # 3 steps; eval at 0, 2, 3
    for a, b in zip(*rows, strict=True):
      for k in (
        "factuality",
        "confidence",
        "j6_components",
        "alpha",
        "mc1",
        "mc2",
        "factuality_mc",
        "choice_entropy",
      ):
        if k in a:
          np.testing.assert_allclose(
            b[k], a[k], rtol=2e-4, atol=1e-6, err_msg=f"{name}: {k}"
          )
  summary = json.loads((run / "summary.json").read_text())
  assert summary["mesh"] == {"data": 4, "model": 2}
