"""The quality benchmark's program (``benchmarks/truthfulqa.py``) on the tiny
model: every method gets its runs, the table and the plot are written, the
hypervolume is the closed form, and a second call reuses the runs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from j6jax._src import metrics

BENCH = Path(__file__).parents[1] / "benchmarks" / "truthfulqa.py"


def _module():
  spec = importlib.util.spec_from_file_location("bench_truthfulqa", BENCH)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def test_quality_benchmark_end_to_end(tiny_lm, truthfulqa_csv, tmp_path):
  bench = _module()
  size = dict(
    max_tokens=100,  # byte-level tokens
    steps=2,
    batch_questions=2,
    max_true=1,
    max_false=2,
    test_questions=4,
    val_questions=3,
    seeds=(0, 1),
    h_layers=(1,),
  )
  methods = (
    ("j6 hard", "j6-hard", {}),
    ("linear 1:1", "linear", {"weights": [1.0, 1.0]}),
  )
  root = tmp_path / "tiny"
  res = bench.run(tiny_lm, truthfulqa_csv, root, size, "tiny", methods)
  best = res["meta"]["linear_best"]
  assert set(res["methods"]) == {"j6 hard", "linear 1:1", best}
  assert res["meta"]["questions"]["test"] == 4
  assert set(res["meta"]["linear_sweep"]) == {
    "linear 1:0.25",
    "linear 1:1",
    "linear 1:4",
  }
  for label, runs in res["runs"].items():
    assert [r["seed"] for r in runs] == [0, 1]
    assert all(r["steps"] == 2 for r in runs)
    assert all(
      r["passes_per_step"] == {"forward": 1, "backward": 2} for r in runs
    )
    hvs = [
      metrics.hypervolume_2d(
        [[r["test"]["factuality_mc"], r["test"]["choice_entropy"]]],
        res["meta"]["reference_point"],
      )
      for r in runs
    ]
    got = res["methods"][label]["hypervolume"]
    assert got["mean"] == pytest.approx(sum(hvs) / 2)
    assert got["std"] == pytest.approx(abs(hvs[0] - hvs[1]) / 2)
  # The reference point is dominated by nothing that was scored.
  ref = res["meta"]["reference_point"]
  pts = [bench.point(r) for r in res["untuned"].values()] + [
    bench.point(r["test"]) for rs in res["runs"].values() for r in rs
  ]
  assert all(p[0] < ref[0] and p[1] < ref[1] for p in pts)
  # J6 runs record which component each step chose (2 steps).
  assert sum(res["runs"]["j6 hard"][0]["j6_chosen_counts"]) == 2
  lines = (root / "results.md").read_text().splitlines()
  assert any(x.startswith("| untuned |") for x in lines)
  assert any(x.startswith("| j6 hard |") and "1+2" in x for x in lines)
  assert (root / "pareto.png").stat().st_size > 1000
  saved = json.loads((root / "results.json").read_text())
  assert saved["methods"] == res["methods"]
  # A second call reuses the finished runs (no new steps) ...
  steps = root / "runs" / "j6_hard" / "0" / "steps.jsonl"
  before = steps.read_text()
  (root / "runs" / "j6_hard" / "0" / "test.json").unlink()
  again = bench.run(tiny_lm, truthfulqa_csv, root, size, "tiny", methods)
  assert steps.read_text() == before
  # ... and scores the restored prompt as before.
  a, b = res["runs"]["j6 hard"][0]["test"], again["runs"]["j6 hard"][0]["test"]
  for k in ("mc1", "mc2", "factuality_mc", "choice_entropy"):
    assert b[k] == pytest.approx(a[k], rel=1e-5)


def test_reference_point_closed_form():
  bench = _module()
  got = bench.reference_point([[1.0, 2.0], [3.0, 1.0]], margin=0.1)
  assert got == pytest.approx((3.2, 2.1))
  # One point: a margin of its magnitude (at least 1), not zero.
  assert bench.reference_point([[2.0, 0.5]], margin=0.1) == pytest.approx(
    (2.2, 0.6)
  )
