"""How a step's time grows with the batch, the objectives and the parameters.

Three tables, each measured side by side in one run (minimum over
interleaved rounds, after one compiling call):

1. ``batch``: SmolLM2-135M-Instruct, prompt ``{"h", "w"}``, the job's two
   objectives, ``Q`` TruthfulQA questions x 4 answers per step: a plain
   gradient step (``jax.grad`` of the summed objectives, Adam) and a full J6
   step (Jacobian, soft J6, Adam), for each ``Q``.
2. ``objectives``: the same model and 4 questions, ``m`` objectives (the
   questions in ``m / 2`` groups, each with its own factuality and
   confidence): the plain step, the Jacobian alone and the J6 step. The
   Jacobian costs one backward pass per objective; J6's own work on it is
   the ``[m, m]`` Gramians and the combination.
3. ``j6_own``: J6's own work alone (Gramians, decomposition, weights,
   combination; ``j6().update`` on a given Jacobian) against the
   combination a weighted sum needs (``linear().update``), on random
   Jacobians of ``P`` parameters in two groups and ``m`` objectives. The
   Gramians cost ``m^2 P``, the combination ``m P``: both linear in ``P``.

Usage: ``python benchmarks/scaling.py [--size cpu|gpu] [--repeats 3]
[--out benchmarks/results/scaling.json]``
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import date
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

import j6jax
from j6jax import aggregators, models
from j6jax._src import data
from j6jax._src import objectives as obj
from j6jax._src import train as tr

SIZES = {
  "cpu": dict(questions=(1, 2, 4, 8), objectives=(2, 4, 8), params=(4, 5, 6)),
  "gpu": dict(
    questions=(1, 2, 4, 8, 16, 32, 64),
    objectives=(2, 4, 6, 8),
    params=(4, 5, 6, 7),
  ),
}


def _time(fns: dict, repeats: int) -> dict:
  """Minimum seconds of each zero-argument function, rounds interleaved."""
  for f in fns.values():
    jax.block_until_ready(f())
  times = {k: [] for k in fns}
  for _ in range(repeats):
    for k, f in fns.items():
      t0 = time.perf_counter()
      jax.block_until_ready(f())
      times[k].append(time.perf_counter() - t0)
  return {k: min(v) for k, v in times.items()}


def _names(m: int) -> list[str]:
  return (
    ["F", "C"] if m == 2 else [f"{k}{i}" for i in range(m // 2) for k in "FC"]
  )


def _objectives(model_fn, groups: int):
  """``m = 2 * groups`` objectives: factuality and confidence per group."""

  def fn(prompt, weights, batch):
    ll, _ = tr.answer_scores(model_fn, prompt, weights, batch)
    f = obj.mc_contrastive_loss(ll, batch.true_mask, batch.choice_mask)
    c = obj.choice_entropy(ll, batch.choice_mask)
    f, c = f.reshape(groups, -1).mean(1), c.reshape(groups, -1).mean(1)
    return jnp.stack([f, c], 1).reshape(-1)

  return fn


def _steps(lm, prompt, batch, groups: int) -> dict:
  cfg = tr.TrainConfig(max_true=1, max_false=3)
  model_fn = tr.make_model_fn(lm.config, cfg.h_layers)
  f = _objectives(model_fn, groups)
  adam = optax.adam(1e-2)
  tx = optax.chain(
    j6jax.j6(objective_names=_names(2 * groups)), optax.adam(1e-2)
  )

  @jax.jit
  def plain(p, s, w, b):
    g = jax.grad(lambda q: jnp.sum(f(q, w, b)))(p)
    u, s = adam.update(g, s, p)
    return optax.apply_updates(p, u), s

  @jax.jit
  def jacobian(p, w, b):
    return j6jax.objective_jacobian(f, p, w, b)

  @jax.jit
  def j6_step(p, s, w, b):
    _, jac = j6jax.objective_jacobian(f, p, w, b)
    u, s = tx.update(jac, s, p)
    return optax.apply_updates(p, u), s

  sa, st = adam.init(prompt), tx.init(prompt)
  w = lm.weights
  return {
    "plain": lambda: plain(prompt, sa, w, batch),
    "jacobian": lambda: jacobian(prompt, w, batch),
    "j6": lambda: j6_step(prompt, st, w, batch),
  }


def batch_table(lm, items, prompt, sizes, repeats) -> list[dict]:
  rows = []
  for q in sizes:
    enc = tr.encode_items(
      lm.tokenizer, items[:q], max_true=1, max_false=3, length=32
    )
    batch = tr.MCBatch(*enc)
    fns = _steps(lm, prompt, batch, 1)
    fns.pop("jacobian")
    t = _time(fns, repeats)
    rows.append({"questions": q, "sequences": 4 * q, **t})
  return rows


def objectives_table(lm, items, prompt, sizes, repeats) -> list[dict]:
  enc = tr.encode_items(
    lm.tokenizer, items[:4], max_true=1, max_false=3, length=32
  )
  batch = tr.MCBatch(*enc)
  rows = []
  for m in sizes:
    t = _time(_steps(lm, prompt, batch, m // 2), repeats)
    rows.append({"objectives": m, **t})
  return rows


def j6_own_table(exponents, objectives, repeats) -> list[dict]:
  rows = []
  for e in exponents:
    n = 10**e
    for m in objectives:
      key = jax.random.PRNGKey(e * 10 + m)
      jac = {
        "h": jax.random.normal(key, (m, n // 10)),
        "w": jax.random.normal(jax.random.fold_in(key, 1), (m, n - n // 10)),
      }
      params = jax.tree.map(lambda x: x[0], jac)
      fns = {}
      for name, tx in (
        ("j6", j6jax.j6(objective_names=_names(m))),
        ("linear", aggregators.linear(weights=[1.0] * m)),
      ):
        state = tx.init(params)
        step = jax.jit(lambda g, s, tx=tx: tx.update(g, s)[0])
        fns[name] = lambda step=step, state=state, jac=jac: step(jac, state)
      t = _time(fns, repeats)
      rows.append({"params": n, "objectives": m, **t})
  return rows


def _md(rows: list[dict], keys: list[str]) -> str:
  lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
  for r in rows:
    cells = [
      f"{r[k]:.4g}" if isinstance(r[k], float) else str(r[k]) for k in keys
    ]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--size", choices=sorted(SIZES), default="cpu")
  p.add_argument("--csv", default="../shared/data/TruthfulQA.csv")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--out", default="benchmarks/results/scaling.json")
  args = p.parse_args()
  size = SIZES[args.size]
  lm = models.load_default()
  all_items = data.load_truthfulqa(args.csv)
  # Short questions, so that the sequence length is the same in every row.
  items = [
    i
    for i in all_items
    if max(
      sum(map(len, tr.encode_answer(lm.tokenizer, i.question, a, "plain")))
      for a in i.answers
    )
    <= 32
  ]
  cfg = tr.TrainConfig(max_true=1, max_false=3)
  prompt = tr.initial_prompt(lm, cfg)
  res = {
    "batch": batch_table(lm, items, prompt, size["questions"], args.repeats),
    "objectives": objectives_table(
      lm, items, prompt, size["objectives"], args.repeats
    ),
    "j6_own": j6_own_table(size["params"], size["objectives"], args.repeats),
  }
  for r in res["batch"]:
    r["j6_over_plain"] = r["j6"] / r["plain"]
  for r in res["objectives"]:
    r["j6_over_jacobian"] = r["j6"] / r["jacobian"]
  for r in res["j6_own"]:
    r["j6_over_linear"] = r["j6"] / r["linear"]
  meta = {
    "date": date.today().isoformat(),
    "machine": f"{platform.machine()}, {jax.devices()[0].device_kind}",
    "backend": jax.default_backend(),
    "jax": jax.__version__,
    "size": args.size,
    "tokens_per_sequence": 32,
  }
  md = "\n\n".join(
    [
      "Step seconds vs questions per step (4 answers each, 32 tokens):\n\n"
      + _md(res["batch"], ["questions", "plain", "j6", "j6_over_plain"]),
      "Step seconds vs objectives (4 questions):\n\n"
      + _md(
        res["objectives"],
        ["objectives", "plain", "jacobian", "j6", "j6_over_jacobian"],
      ),
      "J6's own seconds vs parameters and objectives (given Jacobian):\n\n"
      + _md(
        res["j6_own"],
        ["params", "objectives", "j6", "linear", "j6_over_linear"],
      ),
    ]
  )
  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps({"meta": meta, **res}, indent=2))
  out.with_suffix(".md").write_text(md + "\n")
  print(md)
  print(f"\nwritten: {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
  main()
