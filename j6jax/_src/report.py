"""PNG plots of a run folder: components, weights, shares, conflicts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from j6jax._src.decomposition import component_index


def _lines(path: Path) -> list[dict]:
  if not path.exists():
    return []
  return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def make_report(run_dir: str | Path) -> list[Path]:
  """Draws the run's plots into ``run_dir`` and returns their paths.

  - ``components.png``: the six J6 components of each step's Jacobian;
  - ``alpha.png``: J6's weights over components as a stacked area (J6 runs),
    or the baseline's weights over objectives;
  - ``shares.png``: attribution share of each group in each objective;
  - ``conflicts.png``: interplay cosines per group and the global conflict;
  - ``validation.png``: validation factuality against choice entropy.

  Raises:
    FileNotFoundError: if ``run_dir`` has no ``steps.jsonl``.
  """
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  run_dir = Path(run_dir)
  steps = _lines(run_dir / "steps.jsonl")
  if not steps:
    raise FileNotFoundError(f"{run_dir}: no steps.jsonl with any step.")
  names_path = run_dir / "components.json"
  names = json.loads(names_path.read_text())["names"]
  x = np.array([r["step"] for r in steps])
  comps = np.array([r["j6_components"] for r in steps])  # [S, 6]
  index = component_index(2, 2)
  out = []

  def save(fig, name):
    path = run_dir / name
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    out.append(path)

  fig, ax = plt.subplots(figsize=(7, 4))
  for c, n in enumerate(names):
    ax.plot(x, comps[:, c], label=n, ls="-" if "role" in n else "--")
  ax.set_yscale("symlog", linthresh=1e-6)
  ax.set(xlabel="step", ylabel="component value", title="J6 components")
  ax.legend(fontsize=7, ncol=2)
  save(fig, "components.png")

  fig, ax = plt.subplots(figsize=(7, 4))
  if "alpha" in steps[0]:
    alpha = np.array([r["alpha"] for r in steps])
    ax.stackplot(x, alpha.T, labels=names)
    ax.set(ylabel="alpha", title="J6 weights over components")
  elif "weights" in steps[0]:
    w = np.array([r["weights"] for r in steps])
    ax.stackplot(x, np.abs(w).T, labels=["F", "C"][: w.shape[1]])
    ax.set(ylabel="|weight|", title="Baseline weights over objectives")
  ax.set(xlabel="step")
  ax.legend(fontsize=7, loc="upper left")
  save(fig, "alpha.png")

  roles = {(k, i): c for c, (k, i, j) in enumerate(index) if i == j}
  fig, ax = plt.subplots(figsize=(7, 4))
  for i, obj in enumerate("FC"):
    total = comps[:, roles[(0, i)]] + comps[:, roles[(1, i)]]
    share_h = np.where(
      total > 0, comps[:, roles[(0, i)]] / np.where(total > 0, total, 1), 0.5
    )
    ax.plot(x, share_h, label=f"share of h in {obj}")
    ax.plot(x, 1 - share_h, ls="--", label=f"share of w in {obj}")
  ax.set(xlabel="step", ylabel="attribution share", ylim=(0, 1))
  ax.legend(fontsize=7)
  save(fig, "shares.png")

  fig, ax = plt.subplots(figsize=(7, 4))
  glob = 0
  for k, g in enumerate("hw"):
    fc = [c for c, (kk, i, j) in enumerate(index) if kk == k and i != j][0]
    ff, cc = comps[:, roles[(k, 0)]], comps[:, roles[(k, 1)]]
    den = np.sqrt(np.maximum(ff * cc, 0))
    cos = np.where(den > 0, comps[:, fc] / np.where(den > 0, den, 1), 0)
    ax.plot(x, cos, label=f"cosine F,C on {g}")
    glob = glob + comps[:, fc]
  conflict = glob < 0
  ax.fill_between(
    x,
    -1,
    1,
    where=conflict,
    color="red",
    alpha=0.12,
    label="global conflict (G[F,C] < 0)",
  )
  ax.axhline(0, color="k", lw=0.5)
  ax.set(xlabel="step", ylabel="interference cosine", ylim=(-1.05, 1.05))
  ax.legend(fontsize=7)
  save(fig, "conflicts.png")

  evals = _lines(run_dir / "eval.jsonl")
  if evals:
    fig, ax = plt.subplots(figsize=(5, 4))
    f = [e["factuality_mc"] for e in evals]
    c = [e["choice_entropy"] for e in evals]
    ax.plot(f, c, "-o", ms=3)
    for e, fx, cx in zip(evals, f, c, strict=True):
      ax.annotate(str(e["step"]), (fx, cx), fontsize=7)
    ax.set(
      xlabel="validation factuality (MC loss)",
      ylabel="validation choice entropy",
      title="Validation: factuality vs entropy",
    )
    save(fig, "validation.png")
  return out
