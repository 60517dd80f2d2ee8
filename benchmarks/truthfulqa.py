"""Does J6 beat the baselines on TruthfulQA? Quality of every method.

Every method tunes the same prompt parameters ``{"h", "w"}`` of the same
frozen SmolLM2-135M-Instruct, from the same initial prompt (``w`` from the
embeddings of a text, ``h`` zero), with the same data split, optimiser (Adam),
learning rate, steps, batches and seeds; every step of every method costs one
forward and two backward passes (the Jacobian of the two objectives), which
the results record. Training uses the train split only; the weight sweep of
``linear`` is decided on the validation split (seed 0); the test split is
used for the report alone: MC1, MC2, the mean entropies, ECE, and the
hypervolume of the point (factuality loss, choice entropy) against a fixed
reference point, as mean and spread over seeds, with a Pareto plot.

Sizes (``--size``):

- ``cpu``: questions whose every answer fits 40 tokens (711 of the 817), 30
  steps of 2 questions (1 true + 3 false answers each), 64 test questions
  with all their answers, 3 seeds: 38 runs of 65 to 170 s of training plus
  about a minute of evaluation each, 1 h 40 min in all on 2 cores.
- ``full``: all questions, 300 steps of 8 questions (2 true + 4 false), the
  whole test split, 3 seeds; for a GPU.
- ``smoke``: 2 steps, 4 test questions, one seed: a check of the program.

Every run has its own folder under ``--out``/runs (resumed if interrupted;
finished runs and their test scores are reused), so the program can be
stopped and started again.

Usage: ``python benchmarks/truthfulqa.py --size cpu
[--csv ../shared/data/TruthfulQA.csv] [--out benchmarks/results/truthfulqa]``
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from datetime import date
from pathlib import Path

import jax
import numpy as np

from j6jax import models
from j6jax._src import data, metrics
from j6jax._src import train as tr

log = logging.getLogger("truthfulqa")

SIZES = {
  "cpu": dict(
    max_tokens=40,
    steps=30,
    batch_questions=2,
    max_true=1,
    max_false=3,
    test_questions=64,
    val_questions=32,
    seeds=(0, 1, 2),
  ),
  "full": dict(
    max_tokens=None,
    steps=300,
    batch_questions=8,
    max_true=2,
    max_false=4,
    test_questions=0,
    val_questions=0,
    seeds=(0, 1, 2),
  ),
  "smoke": dict(
    max_tokens=40,
    steps=2,
    batch_questions=2,
    max_true=1,
    max_false=3,
    test_questions=4,
    val_questions=4,
    seeds=(0,),
  ),
}

# (label, method, method_kwargs). "linear best" is added after the sweep.
METHODS = (
  ("j6 hard", "j6-hard", {}),
  ("j6 soft T=1", "j6", {"temperature": 1.0}),
  ("j6 soft T=0.25", "j6", {"temperature": 0.25}),
  ("linear 1:1", "linear", {"weights": [1.0, 1.0]}),
  ("mean", "mean", {}),
  ("mgda", "mgda", {}),
  ("pcgrad", "pcgrad", {}),
  ("cagrad", "cagrad", {}),
  ("upgrad", "upgrad", {}),
  ("imtl_g", "imtl_g", {}),
  ("nash_mtl", "nash_mtl", {}),
)
SWEEP = ([1.0, 0.25], [1.0, 1.0], [1.0, 4.0])
"""Weights (factuality, confidence) of the ``linear`` sweep."""

MARGIN = 0.1
"""The hypervolume reference point is the nadir of every point the benchmark
scores (all methods, all seeds, the untuned model and the initial prompt) plus
this fraction of each coordinate's range: one point for all methods, set by a
rule that does not know which method gave which point. (A constant chosen
before the CPU run, (2.5, 2.0) nats, lay below every test factuality loss,
about 3 nats, and gave every method zero.)"""


def point(r: dict) -> tuple[float, float]:
  """(factuality loss, choice entropy) of one evaluation."""
  return (r["factuality_mc"], r["choice_entropy"])


def reference_point(points, margin: float = MARGIN) -> tuple[float, float]:
  """The nadir of ``points`` ``[n, 2]`` plus ``margin`` times their range."""
  pts = np.asarray(points, np.float64).reshape(-1, 2)
  hi, lo = pts.max(0), pts.min(0)
  span = np.where(hi > lo, hi - lo, np.maximum(np.abs(hi), 1.0))
  return tuple(float(x) for x in hi + margin * span)


METRICS = (
  "mc1",
  "mc2",
  "factuality_mc",
  "choice_entropy",
  "answer_entropy",
  "ece",
  "hypervolume",
)


def fits(lm, item: data.MCItem, max_tokens: int | None) -> bool:
  """True when every answer of ``item`` with its question fits."""
  if max_tokens is None:
    return True
  for a in item.answers:
    ctx, cont = tr.encode_answer(lm.tokenizer, item.question, a, "plain")
    if len(ctx) + len(cont) > max_tokens:
      return False
  return True


def load_split(lm, csv: str, size: dict) -> data.Split:
  items = [
    i for i in data.load_truthfulqa(csv) if fits(lm, i, size["max_tokens"])
  ]
  s = data.split(items, fractions=(0.5, 0.1, 0.4), seed=0)
  return data.Split(
    s.train,
    s.validation[: size["val_questions"] or None],
    s.test[: size["test_questions"] or None],
  )


def run_one(lm, sp, size, label, method, kwargs, seed, root: Path) -> dict:
  """Trains one (method, seed), or reuses its folder; scores it on test."""
  folder = root / "runs" / label.replace(" ", "_").replace(":", "-") / str(seed)
  done = folder / "test.json"
  if done.exists():
    return json.loads(done.read_text())
  cfg = tr.TrainConfig(
    method=method,
    method_kwargs=kwargs,
    steps=size["steps"],
    batch_questions=size["batch_questions"],
    max_true=size["max_true"],
    max_false=size["max_false"],
    h_layers=size.get("h_layers", (15,)),
    seed=seed,
    eval_every=0,
    checkpoint_every=10,
  )
  t0 = time.perf_counter()
  summary = tr.train(lm, sp.train, [], cfg, folder)
  seconds = time.perf_counter() - t0
  prompt, _ = tr.load_run_prompt(lm, folder)
  steps = [
    json.loads(x)
    for x in (folder / "steps.jsonl").read_text().splitlines()
    if x.strip()
  ]
  last = steps[-5:]
  res = {
    "label": label,
    "method": method,
    "method_kwargs": kwargs,
    "seed": seed,
    "train_seconds": seconds,
    "passes_per_step": summary["passes_per_step"],
    "steps": summary["steps_done"],
    "train_factuality_last5": float(np.mean([r["factuality"] for r in last])),
    "train_confidence_last5": float(np.mean([r["confidence"] for r in last])),
    "test": tr.evaluate_prompt(lm, prompt, cfg, sp.test),
  }
  if sp.validation and method == "linear":
    res["validation"] = tr.evaluate_prompt(lm, prompt, cfg, sp.validation)
  if "chosen" in steps[-1]:
    counts = np.bincount([r["chosen"] for r in steps], minlength=6)
    res["j6_chosen_counts"] = counts.tolist()
  done.write_text(json.dumps(res, indent=2))
  log.info("%s seed %d: %.0f s", label, seed, seconds)
  return res


def hv(r: dict, ref) -> float:
  return metrics.hypervolume_2d([point(r)], ref)


def untuned_rows(lm, sp, size) -> dict:
  base = dict(max_true=size["max_true"], max_false=size["max_false"])
  layers = size.get("h_layers", (15,))
  rows = {}
  cfg0 = tr.TrainConfig(h_layers=(), n_soft=0, **base)
  rows["untuned"] = tr.evaluate_prompt(
    lm, models.init_prompt(lm.config, n_soft=0, layers=()), cfg0, sp.test
  )
  cfg = tr.TrainConfig(h_layers=layers, **base)
  rows["initial prompt"] = tr.evaluate_prompt(
    lm, tr.initial_prompt(lm, cfg), cfg, sp.test
  )
  return rows


def summarise(runs: list[dict], ref) -> dict:
  out = {"seeds": [r["seed"] for r in runs]}
  for m in METRICS:
    vals = [
      hv(r["test"], ref) if m == "hypervolume" else r["test"][m] for r in runs
    ]
    out[m] = {"mean": float(np.mean(vals)), "std": float(np.std(vals))}
  out["passes_per_step"] = runs[0]["passes_per_step"]
  out["train_seconds"] = float(np.mean([r["train_seconds"] for r in runs]))
  return out


def table(untuned: dict, rows: dict) -> str:
  """Mean ± spread (std over seeds) per method; the last column is the mean
  hypervolume relative to ``linear 1:1``'s."""
  base = rows.get("linear 1:1", {}).get("hypervolume", {}).get("mean", 0.0)
  head = "| method | " + " | ".join(METRICS) + " | HV vs linear 1:1 |"
  head += " fwd+bwd/step |"
  lines = [head, "|---|" + "---|" * (len(METRICS) + 2)]
  for name, r in untuned.items():
    cells = " | ".join(f"{r[m]:.3f}" for m in METRICS)
    rel = f"{r['hypervolume'] / base - 1:+.1%}" if base > 0 else "n/a"
    lines.append(f"| {name} | {cells} | {rel} | 0 |")
  for name, r in rows.items():
    cells = " | ".join(
      f"{r[m]['mean']:.3f} ± {r[m]['std']:.3f}" for m in METRICS
    )
    hv_mean = r["hypervolume"]["mean"]
    rel = f"{hv_mean / base - 1:+.1%}" if base > 0 else "n/a"
    p = r["passes_per_step"]
    lines.append(
      f"| {name} | {cells} | {rel} | {p['forward']}+{p['backward']} |"
    )
  return "\n".join(lines)


def pareto_plot(untuned: dict, runs: dict[str, list[dict]], path: Path):
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(7.5, 5.5))
  cmap = plt.get_cmap("tab20")
  for k, (name, rs) in enumerate(runs.items()):
    pts = np.array(
      [[r["test"]["factuality_mc"], r["test"]["choice_entropy"]] for r in rs]
    )
    c = cmap(k % 20)
    marker = "*" if name.startswith("j6") else "o"
    ax.scatter(pts[:, 0], pts[:, 1], color=c, alpha=0.4, s=20, marker=marker)
    ax.scatter(
      *pts.mean(0), color=c, s=90, marker=marker, label=name, edgecolor="k"
    )
  for name, r in untuned.items():
    ax.scatter(
      r["factuality_mc"], r["choice_entropy"], color="k", marker="x", s=80
    )
    ax.annotate(name, (r["factuality_mc"], r["choice_entropy"]), fontsize=8)
  ax.set(
    xlabel="test factuality loss (MC contrastive, nats)",
    ylabel="test choice entropy (nats)",
    title="TruthfulQA test: lower-left is better (small: seeds, big: mean)",
  )
  ax.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def run(
  lm, csv: str, root: Path, size: dict, name: str, methods=METHODS
) -> dict:
  """The whole benchmark into ``root`` (runs reused); returns the results."""
  t0 = time.perf_counter()
  root.mkdir(parents=True, exist_ok=True)
  sp = load_split(lm, csv, size)
  untuned = untuned_rows(lm, sp, size)
  runs: dict[str, list[dict]] = {}

  # The linear sweep, decided on validation (seed 0).
  sweep = {}
  for w in SWEEP:
    label = f"linear {w[0]:g}:{w[1]:g}"
    r = run_one(lm, sp, size, label, "linear", {"weights": w}, 0, root)
    sweep[label] = {"weights": w, "validation": point(r["validation"])}
  val_ref = reference_point([v["validation"] for v in sweep.values()])
  for v in sweep.values():
    v["validation_hypervolume"] = metrics.hypervolume_2d(
      [v["validation"]], val_ref
    )
  best = max(sweep, key=lambda k: sweep[k]["validation_hypervolume"])
  methods = list(methods)
  if best != "linear 1:1":
    methods.insert(4, (best, "linear", {"weights": sweep[best]["weights"]}))
  for label, method, kwargs in methods:
    runs[label] = [
      run_one(lm, sp, size, label, method, kwargs, s, root)
      for s in size["seeds"]
    ]
  ref = reference_point(
    [point(r) for r in untuned.values()]
    + [point(r["test"]) for rs in runs.values() for r in rs]
  )
  for r in untuned.values():
    r["hypervolume"] = hv(r, ref)
  rows = {k: summarise(v, ref) for k, v in runs.items()}
  for k in rows:
    if k == best:
      rows[k]["best_of_sweep"] = True
  md = table(untuned, rows)
  base = rows.get("linear 1:1", {}).get("hypervolume", {}).get("mean", 0.0)
  meta = {
    "date": date.today().isoformat(),
    "machine": f"{platform.machine()}, {jax.devices()[0].device_kind}",
    "backend": jax.default_backend(),
    "jax": jax.__version__,
    "size": name,
    "settings": {**size, "seeds": list(size["seeds"])},
    "questions": {
      "train": len(sp.train),
      "validation": len(sp.validation),
      "test": len(sp.test),
    },
    "reference_point": ref,
    "reference_rule": f"nadir of all scored points + {MARGIN} x range",
    "validation_reference_point": val_ref,
    "linear_sweep": sweep,
    "linear_best": best,
    "seconds_this_call": time.perf_counter() - t0,
    "train_seconds_all_runs": float(
      sum(r["train_seconds"] for rs in runs.values() for r in rs)
    ),
  }
  result = {
    "meta": meta,
    "untuned": untuned,
    "methods": rows,
    "hypervolume_vs_linear_1_1": {
      k: (r["hypervolume"]["mean"] / base - 1.0) if base > 0 else None
      for k, r in rows.items()
    },
    "table": md,
    "runs": runs,
  }
  (root / "results.json").write_text(json.dumps(result, indent=2))
  (root / "results.md").write_text(
    f"TruthfulQA, size {name}, {meta['date']}, {meta['machine']}; "
    f"{meta['questions']}; hypervolume reference point "
    f"({ref[0]:.3f}, {ref[1]:.3f}) (nadir + {MARGIN:g} x range); linear sweep "
    f"best on validation: {best}.\n\n{md}\n"
  )
  pareto_plot(untuned, runs, root / "pareto.png")
  return result


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--size", choices=sorted(SIZES), default="cpu")
  p.add_argument("--csv", default="../shared/data/TruthfulQA.csv")
  p.add_argument("--out", default="benchmarks/results/truthfulqa")
  p.add_argument("--model", default="default")
  args = p.parse_args()
  logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
  log.setLevel(logging.INFO)
  root = Path(args.out) / args.size
  # The same programs recur over seeds and methods: compile each once.
  jax.config.update("jax_compilation_cache_dir", str(root / ".jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  if args.model == "default":
    lm = models.load_default()
  else:
    lm = models.load_model(args.model)
  result = run(lm, args.csv, root, SIZES[args.size], args.size)
  print(result["table"])
  print(f"\nwritten: {root}/results.json, results.md, pareto.png")


if __name__ == "__main__":
  main()
