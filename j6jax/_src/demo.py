"""The README's main command: J6 against equal scalar weights on capitals."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from j6jax._src import data
from j6jax._src import train as tr

METRICS = ("mc1", "mc2", "choice_entropy", "answer_entropy", "ece", "brier")


def _table(rows: dict[str, dict]) -> str:
  head = "| model | " + " | ".join(METRICS) + " |"
  sep = "|---|" + "---|" * len(METRICS)
  lines = [head, sep]
  for name, r in rows.items():
    lines.append(
      f"| {name} | " + " | ".join(f"{r[m]:.3f}" for m in METRICS) + " |"
    )
  return "\n".join(lines)


def run_demo(
  out: Path,
  *,
  steps: int = 20,
  questions: int = 120,
  model: str = "default",
  seed: int = 0,
  progress: Callable[[str], Callable] | None = None,
  lm=None,
) -> dict:
  """Untuned, J6 (soft) and ``linear([1, 1])`` on held-out capitals.

  Both methods get the same data order, initial prompt, optimiser, steps and
  passes per step (one forward, two backward). Writes ``demo.json``,
  ``demo.md`` and each run's folder with its plots under ``out``.
  """
  from j6jax import models
  from j6jax._src.report import make_report

  out = Path(out)
  out.mkdir(parents=True, exist_ok=True)
  t0 = time.perf_counter()
  if lm is None:
    lm = (
      models.load_default() if model == "default" else models.load_model(model)
    )
  items = data.capitals(seed=seed, limit=questions or None)
  split = data.split(items, fractions=(0.5, 0.1, 0.4), seed=seed)
  wrap = progress or (lambda desc: None)
  # Capitals have one true answer: no slot for a second one.
  base = dict(
    steps=steps,
    seed=seed,
    eval_every=0,
    checkpoint_every=5,
    max_true=1,
    max_false=3,
  )
  rows, runs = {}, {}
  untuned = tr.TrainConfig(**{**base, "h_layers": ()})
  rows["untuned"] = tr.evaluate_prompt(
    lm,
    models.init_prompt(lm.config, n_soft=0, layers=()),
    untuned,
    split.test,
    progress=wrap("eval untuned"),
  )
  for name, method in (("j6", "j6"), ("linear", "linear")):
    cfg = tr.TrainConfig(method=method, **base)
    runs[name] = tr.train(
      lm,
      split.train,
      split.validation,
      cfg,
      out / name,
      progress=wrap(f"train {name}"),
    )
    prompt, _ = tr.load_run_prompt(lm, out / name)
    rows[f"{name} ({steps} steps)"] = tr.evaluate_prompt(
      lm, prompt, cfg, split.test, progress=wrap(f"eval {name}")
    )
    make_report(out / name)
  table = _table(rows)
  result = {
    "table": table,
    "rows": rows,
    "questions": {
      "train": len(split.train),
      "validation": len(split.validation),
      "test": len(split.test),
    },
    "seconds": time.perf_counter() - t0,
    "runs": {k: v["run_dir"] for k, v in runs.items()},
  }
  (out / "demo.json").write_text(json.dumps(result, indent=2))
  (out / "demo.md").write_text(table + "\n")
  return result
