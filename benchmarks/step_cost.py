"""What a training step costs: plain gradient, Jacobian, J6 and baselines.

SmolLM2-135M-Instruct, prompt parameters ``{"h", "w"}`` (4 soft vectors, ``h``
after layer 15), a batch of 8 sequences (2 TruthfulQA questions x 4 answers)
padded to 48 tokens, float32 on the CPU, the job's own objectives (MC
contrastive loss, choice entropy). Measured side by side in one run, as the
minimum over interleaved rounds (medians recorded too), with the compiled
temporary memory of each program (``memory_analysis``):

- (a) ``grad``: ``jax.grad`` of the summed objectives and an Adam update;
- (b) ``jacobian``: ``objective_jacobian`` alone;
- (c) a full J6 step, soft and hard (Jacobian, J6, Adam, update);
- (d) a full step of every baseline;

with each ratio to (a) in a markdown table. The TorchJD side of issue 5 (the
same workload on the PyTorch model) is not part of this script yet.

Usage: ``python benchmarks/step_cost.py [--csv ../shared/data/TruthfulQA.csv]
[--repeats 3] [--out benchmarks/results/step_cost.json]``
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import date
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

import j6jax
from j6jax import models
from j6jax._src import data
from j6jax._src import train as tr


def _setup(csv: str):
  lm = models.load_default()
  cfg = tr.TrainConfig(max_true=1, max_false=3, n_soft=4, h_layers=(15,))
  items = data.load_truthfulqa(csv)[:2]
  enc = tr.encode_items(lm.tokenizer, items, max_true=1, max_false=3, length=48)
  batch = tr.MCBatch(*map(jnp.asarray, enc))
  prompt = tr.initial_prompt(lm, cfg)
  model_fn = tr.make_model_fn(lm.config, cfg.h_layers)
  return lm, cfg, batch, prompt, model_fn


def _programs(lm, cfg, batch, prompt, model_fn) -> dict:
  def objectives(p, weights, b):
    ll, ent = tr.answer_scores(model_fn, p, weights, b)
    return tr.objective_values(ll, ent, b)

  adam = optax.adam(1e-2)

  @jax.jit
  def grad_step(p, s, weights, b):
    g = jax.grad(lambda q: jnp.sum(objectives(q, weights, b)))(p)
    u, s = adam.update(g, s, p)
    return optax.apply_updates(p, u), s

  @jax.jit
  def jacobian(p, weights, b):
    return j6jax.objective_jacobian(objectives, p, weights, b)

  progs = {
    "grad": (grad_step, (prompt, adam.init(prompt), lm.weights, batch)),
    "jacobian": (jacobian, (prompt, lm.weights, batch)),
  }
  for name in tr.METHODS:
    tx = optax.chain(tr.make_method(name), optax.adam(1e-2))
    step = tr.make_train_step(model_fn, tx, cfg)
    label = "j6 soft" if name == "j6" else name.replace("j6-hard", "j6 hard")
    progs[label] = (step, (prompt, tx.init(prompt), lm.weights, batch))
  return progs


def _temp_mb(fn, args) -> float | None:
  analysis = fn.lower(*args).compile().memory_analysis()
  if analysis is None:
    return None
  return analysis.temp_size_in_bytes / 2**20


def run(csv: str, repeats: int) -> dict:
  progs = _programs(*_setup(csv))
  rows = {}
  for name, (fn, args) in progs.items():
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    rows[name] = {
      "first_call_s": time.perf_counter() - t0,
      "temp_mb": _temp_mb(fn, args),
      "times": [],
    }
  for _ in range(repeats):
    for name, (fn, args) in progs.items():
      t0 = time.perf_counter()
      jax.block_until_ready(fn(*args))
      rows[name]["times"].append(time.perf_counter() - t0)
  base = min(rows["grad"]["times"])
  for r in rows.values():
    r["min_s"] = min(r["times"])
    r["median_s"] = statistics.median(r["times"])
    r["ratio_to_grad"] = r["min_s"] / base
  return rows


def table(rows: dict) -> str:
  lines = [
    "| step | min s | median s | x grad | temp MB |",
    "|---|---|---|---|---|",
  ]
  for name, r in rows.items():
    mb = "n/a" if r["temp_mb"] is None else f"{r['temp_mb']:.0f}"
    lines.append(
      f"| {name} | {r['min_s']:.2f} | {r['median_s']:.2f} | "
      f"{r['ratio_to_grad']:.2f} | {mb} |"
    )
  return "\n".join(lines)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--csv", default="../shared/data/TruthfulQA.csv")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--out", default="benchmarks/results/step_cost.json")
  args = p.parse_args()
  rows = run(args.csv, args.repeats)
  meta = {
    "date": date.today().isoformat(),
    "machine": f"{platform.machine()}, {jax.devices()[0].device_kind}",
    "backend": jax.default_backend(),
    "jax": jax.__version__,
    "workload": "SmolLM2-135M f32, 8 x 48 tokens, w 4 x 576, h after 15",
  }
  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
  md = table(rows)
  out.with_suffix(".md").write_text(md + "\n")
  print(md)
  print(f"\nwritten: {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
  main()
