"""What J6 and each baseline add to a Jacobian, measured side by side.

On a synthetic pytree shaped like real prompt parameters (``w``: 8 x 576
soft-prompt vectors, ``h``: 30 x 576 insertion vectors), with m = 2 and
m = 5 cheap objectives, times (median of repeats, jitted, after warm-up):

- ``jacobian``: ``objective_jacobian`` of the objectives alone;
- ``jacobian + <method>``: the same followed by the method's optax update;

and prints each method's own cost (the difference) and its ratio to
``linear``'s, all from one run. Results go to a JSON file.

Usage: ``python benchmarks/aggregation_overhead.py [--out FILE] [--repeats N]
[--model-step-seconds S]`` (S: a real model step, e.g. from
``benchmarks/model_speed.py``, to print J6's share of it).
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

import j6jax
from j6jax import aggregators as agg

D, N_SOFT, N_H = 576, 8, 30


def _objectives(m: int):
  def f(params, x):
    w, h = params["w"], params["h"]
    feats = jnp.tanh(w @ x[: D // 2 * 2].reshape(D, -1)[:, :4]).sum()
    outs = [
      jnp.sum(jnp.sin(w * (i + 1)) ** 2)
      + jnp.sum(h * x[i % x.shape[0]])
      + 0.1 * (i + 1) * feats
      + jnp.sum(jnp.cos(h) * (i - 1.5))
      for i in range(m)
    ]
    return jnp.stack(outs)

  return f


def _methods(m: int) -> dict:
  names = ("F", "C") if m == 2 else tuple(f"f{i}" for i in range(m))
  return {
    "j6 soft": j6jax.j6(objective_names=names),
    "j6 hard": j6jax.j6(mode="hard", objective_names=names),
    "j6 descent": j6jax.j6(scores="descent", objective_names=names),
    "linear": agg.linear([1.0] * m),
    "mean": agg.mean(num_objectives=m),
    "mgda": agg.mgda(num_objectives=m),
    "pcgrad": agg.pcgrad(num_objectives=m),
    "cagrad": agg.cagrad(num_objectives=m),
    "upgrad": agg.upgrad(num_objectives=m),
    "imtl_g": agg.imtl_g(num_objectives=m),
    "nash_mtl": agg.nash_mtl(num_objectives=m),
    "dualproj": agg.dualproj(num_objectives=m),
    "aligned_mtl": agg.aligned_mtl(num_objectives=m),
  }


def _timed(fns: dict, repeats: int) -> dict:
  """Min over ``repeats`` rounds; each round runs every function once, in
  turn, so that load on the machine hits all of them alike."""
  for fn, args in fns.values():
    jax.block_until_ready(fn(*args))
  best = dict.fromkeys(fns, float("inf"))
  for _ in range(repeats):
    for name, (fn, args) in fns.items():
      t0 = time.perf_counter()
      jax.block_until_ready(fn(*args))
      best[name] = min(best[name], time.perf_counter() - t0)
  return best


def run(repeats: int, model_step: float | None) -> dict:
  key = jax.random.PRNGKey(0)
  params = {
    "w": 0.1 * jax.random.normal(key, (N_SOFT, D)),
    "h": jnp.zeros((N_H, D)),
  }
  x = jax.random.normal(jax.random.PRNGKey(1), (8, N_H, D))
  results = {}
  for m in (2, 5):
    f = _objectives(m)
    fns = {
      "jacobian": (
        jax.jit(lambda p, x, f=f: j6jax.objective_jacobian(f, p, x)[1]),
        (params, x),
      )
    }
    for name, tx in _methods(m).items():

      @jax.jit
      def full(p, s, x, f=f, tx=tx):
        _, jac = j6jax.objective_jacobian(f, p, x)
        return tx.update(jac, s, p)[0]

      fns[name] = (full, (params, tx.init(params), x))
    best = _timed(fns, repeats)
    base = best["jacobian"]
    rows = {"jacobian": {"seconds": base}}
    lin = best["linear"] - base
    for name, t in best.items():
      if name == "jacobian":
        continue
      own = t - base
      rows[name] = {
        "seconds": t,
        "own": own,
        "ratio_to_jacobian": t / base,
        "own_ratio_to_linear": own / lin if lin > 0 else None,
        "total_ratio_to_linear": t / best["linear"],
      }
      if model_step:
        rows[name]["own_share_of_model_step"] = own / model_step
    results[f"m={m}"] = rows
  return results


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument(
    "--out", default="benchmarks/results/aggregation_overhead.json"
  )
  p.add_argument("--repeats", type=int, default=30)
  p.add_argument("--model-step-seconds", type=float, default=None)
  args = p.parse_args()
  res = run(args.repeats, args.model_step_seconds)
  meta = {
    "date": date.today().isoformat(),
    "machine": f"{platform.machine()}, {jax.devices()[0].device_kind}",
    "backend": jax.default_backend(),
    "jax": jax.__version__,
    "shapes": {"w": [N_SOFT, D], "h": [N_H, D]},
  }
  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps({"meta": meta, "results": res}, indent=2))
  for m, rows in res.items():
    print(f"\n{m}: jacobian alone {rows['jacobian']['seconds'] * 1e3:.3f} ms")
    print(
      f"{'method':12s} {'total ms':>9s} {'own ms':>8s} {'x jacobian':>10s} "
      f"{'own/linear':>10s} {'total/linear':>12s}"
    )
    for name, r in rows.items():
      if name == "jacobian":
        continue
      ratio = r["own_ratio_to_linear"]
      ratio = "n/a" if ratio is None else f"{ratio:.2f}"
      print(
        f"{name:12s} {r['seconds'] * 1e3:9.3f} {r['own'] * 1e3:8.3f} "
        f"{r['ratio_to_jacobian']:10.2f} {ratio:>10s} "
        f"{r['total_ratio_to_linear']:12.2f}"
      )
      if "own_share_of_model_step" in r:
        print(
          f"{'':12s} share of a model step: "
          f"{100 * r['own_share_of_model_step']:.3f} %"
        )
  print(f"\nwritten: {out}")


if __name__ == "__main__":
  main()
