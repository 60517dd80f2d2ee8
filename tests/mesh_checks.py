"""Checks on 8 devices: a step on a mesh equals the step on one device.

``tests/test_sharding.py`` runs this file in a separate pytest process with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (the file name keeps
it out of the normal collection, so the other tests keep one device). It
can be run by hand the same way:

  XLA_FLAGS=--xla_force_host_platform_device_count=8 \\
    python -m pytest tests/mesh_checks.py
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

import j6jax
from j6jax import sharding
from j6jax._src import data
from j6jax._src import train as tr

pytestmark = pytest.mark.skipif(
  jax.device_count() < 8,
  reason="needs 8 devices; tests/test_sharding.py runs it with 8",
)

MESHES = ("data=8", "data=2,model=4", "model=8")
METHODS = ("j6", "j6-hard", "linear", "upgrad", "nash_mtl")
ITEMS = [
  data.make_item(f"Question {i}?", [f"yes {i}", "true"], [f"no {i}", "x"])
  for i in range(8)
]
CFG = dict(
  batch_questions=8,
  max_true=2,
  max_false=2,
  n_soft=2,
  h_layers=(0,),
  learning_rate=0.05,
)


def multiprocess_config() -> tr.TrainConfig:
  """The run of ``tests/multiprocess_check.py`` (and its one-device twin)."""
  return tr.TrainConfig(
    steps=3, eval_every=2, checkpoint_every=2, **{**CFG, "batch_questions": 4}
  )


def _close(a, b, what):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(
      np.asarray(x), np.asarray(y), rtol=2e-4, atol=1e-6, err_msg=what
    )


_ONE_DEVICE = {}


def _two_steps(lm, method, mesh):
  cfg = tr.TrainConfig(method=method, **CFG)
  tx = optax.chain(tr.make_method(method), optax.adam(cfg.learning_rate))
  step = tr.make_train_step(tr.make_model_fn(lm.config, cfg.h_layers), tx, cfg)
  enc = tr.encode_items(lm.tokenizer, ITEMS, max_true=2, max_false=2)
  batch = tr.MCBatch(*enc)
  prompt, weights = tr.initial_prompt(lm, cfg), lm.weights
  if mesh is not None:
    prompt = sharding.shard_prompt(prompt, mesh)
    weights = sharding.shard_weights(weights, mesh)
    batch = sharding.shard_batch(batch, mesh)
  state = tx.init(prompt)
  if mesh is not None:
    state = sharding.on_mesh(state, mesh)
  out = []
  for _ in range(2):
    prompt, state, values, comps = step(prompt, state, weights, batch)
    out.append((values, comps))
  return prompt, state, out


@pytest.mark.parametrize("shape", MESHES)
@pytest.mark.parametrize("method", METHODS)
def test_step_on_mesh_equals_one_device(tiny_lm, method, shape):
  mesh = sharding.make_mesh(shape)
  if method not in _ONE_DEVICE:
    _ONE_DEVICE[method] = _two_steps(tiny_lm, method, None)
  want = _ONE_DEVICE[method]
  got = _two_steps(tiny_lm, method, mesh)
  _close(got[2], want[2], "objective values and components")
  _close(got[1], want[1], "optimiser and method state (weights, alpha)")
  _close(got[0], want[0], "updated prompt")
  # The result lives on the whole mesh, split as asked.
  w = got[0]["w"]
  assert len(w.sharding.device_set) == 8
  if "model" in shape:
    assert w.sharding.spec == P(None, "model")


@pytest.mark.parametrize("shape", MESHES)
def test_gramians_of_sharded_leaves_are_summed(shape):
  mesh = sharding.make_mesh(shape)
  key = jax.random.PRNGKey(0)
  jac = {
    "h": jax.random.normal(key, (3, 8, 32)),
    "w": jax.random.normal(jax.random.fold_in(key, 1), (3, 16, 32)),
  }
  spec = jax.sharding.NamedSharding(mesh, P(None, "data", "model"))
  placed = sharding.put(jac, jax.tree.map(lambda _: spec, jac))
  assert placed["w"].addressable_shards[0].data.size == jac["w"].size // 8
  f = jax.jit(lambda j: j6jax.decompose(j6jax.group_gramians(j)).values)
  flat = {k: np.asarray(v).reshape(3, -1) for k, v in jac.items()}
  want = np.concatenate([(flat[k] @ flat[k].T).ravel() for k in ("h", "w")])
  g = jax.jit(j6jax.group_gramians)(placed)
  got = np.concatenate([np.asarray(g[k]).ravel() for k in ("h", "w")])
  np.testing.assert_allclose(got, want, rtol=1e-5)
  np.testing.assert_allclose(f(placed), f(jac), rtol=1e-5, atol=1e-6)


def test_weights_are_split_megatron_style(tiny_lm):
  mesh = sharding.make_mesh("data=2,model=4")
  s = sharding.weights_shardings(tiny_lm.weights, mesh)
  layers = s["layers"]
  assert layers["wq"].spec == P(None, None, "model")
  assert layers["wk"].spec == P(None, None, "model")
  assert layers["w_up"].spec == P(None, None, "model")
  assert layers["wo"].spec == P(None, "model", None)
  assert layers["w_down"].spec == P(None, "model", None)
  assert layers["attn_norm"].spec == P()
  # The vocabulary does not divide by 4: the embedding stays whole.
  assert tiny_lm.config.vocab_size % 4 != 0
  assert s["embed"].spec == P()
  # With the config, 2 key/value heads are not cut over 4 devices.
  c = sharding.weights_shardings(tiny_lm.weights, mesh, tiny_lm.config)
  assert c["layers"]["wk"].spec == P() and c["layers"]["wv"].spec == P()
  assert c["layers"]["wq"].spec == P(None, None, "model")
  # The placed arrays really are split: each device holds a quarter.
  placed = sharding.shard_weights(tiny_lm.weights, mesh, tiny_lm.config)
  wq = placed["layers"]["w_gate"]
  assert wq.addressable_shards[0].data.shape[-1] == wq.shape[-1] // 4
  np.testing.assert_array_equal(
    np.asarray(wq), np.asarray(tiny_lm.weights["layers"]["w_gate"])
  )


def test_vocabulary_split_when_it_divides():
  mesh = sharding.make_mesh("data=2,model=4")
  w = {"embed": np.zeros((8, 4)), "lm_head": np.zeros((8, 4))}
  s = sharding.weights_shardings(w, mesh)
  assert s["embed"].spec == P("model", None)
  assert s["lm_head"].spec == P("model", None)


def test_train_on_mesh_equals_one_device(tiny_lm, tmp_path):
  cfg = tr.TrainConfig(
    steps=3, eval_every=0, checkpoint_every=2, **{**CFG, "batch_questions": 4}
  )
  mesh = sharding.make_mesh("data=4,model=2")
  one = tr.train(tiny_lm, ITEMS, ITEMS[:2], cfg, tmp_path / "one")
  many = tr.train(tiny_lm, ITEMS, ITEMS[:2], cfg, tmp_path / "mesh", mesh=mesh)
  assert many["mesh"] == {"data": 4, "model": 2}
  rows = [
    [
      json.loads(x)
      for x in (tmp_path / n / "steps.jsonl").read_text().splitlines()
    ]
    for n in ("one", "mesh")
  ]
  for a, b in zip(*rows, strict=True):
    for k in ("factuality", "confidence", "j6_components", "alpha"):
      np.testing.assert_allclose(b[k], a[k], rtol=2e-4, atol=1e-6, err_msg=k)
  for k in ("mc1", "mc2", "factuality_mc"):
    assert many["validation"][k] == pytest.approx(
      one["validation"][k], rel=1e-4, abs=1e-6
    )
  # The run resumes on the mesh from its checkpoint: 3 + 1 steps there
  # equal 4 steps on one device.
  more = tr.TrainConfig(**{**cfg.to_dict(), "steps": 4})
  tr.train(tiny_lm, ITEMS, [], more, tmp_path / "mesh", mesh=mesh)
  tr.train(tiny_lm, ITEMS, [], more, tmp_path / "one4")
  rows = [
    [
      json.loads(x)
      for x in (tmp_path / n / "steps.jsonl").read_text().split("\n")
      if x
    ]
    for n in ("one4", "mesh")
  ]
  assert len(rows[1]) == 4
  for a, b in zip(*rows, strict=True):
    np.testing.assert_allclose(
      b["j6_components"], a["j6_components"], rtol=2e-4, atol=1e-6
    )
  p_mesh, _ = tr.load_run_prompt(tiny_lm, tmp_path / "mesh")
  p_one, _ = tr.load_run_prompt(tiny_lm, tmp_path / "one4")
  _close(p_mesh, p_one, "prompt after the resumed run")


def test_indivisible_batch_is_refused(tiny_lm, tmp_path):
  cfg = tr.TrainConfig(steps=1, **{**CFG, "batch_questions": 3})
  with pytest.raises(ValueError, match=r"data axis \(8\)"):
    tr.train(tiny_lm, ITEMS, [], cfg, tmp_path / "r", mesh=sharding.make_mesh())
  assert not (tmp_path / "r").exists()


def test_batch_values_are_unchanged_by_placement():
  mesh = sharding.make_mesh("data=4,model=2")
  x = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
  got = sharding.shard_batch({"x": x}, mesh)["x"]
  assert got.sharding.spec == P("data")
  np.testing.assert_array_equal(np.asarray(got), x)
  assert jnp.sum(got) == x.sum()
