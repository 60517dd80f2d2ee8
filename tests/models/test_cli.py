"""The command line on a tiny fabricated GGUF model: train, eval, report."""

from __future__ import annotations

import json

import pytest

typer_testing = pytest.importorskip("typer.testing")

from j6jax.cli import app  # noqa: E402

QUESTIONS = [
  ("2+2?", ["4"], ["5", "22"]),
  ("Sky?", ["blue"], ["green", "red"]),
  ("Ice?", ["cold"], ["hot"]),
  ("Fire?", ["hot"], ["cold", "wet"]),
  ("Sun?", ["star"], ["planet"]),
  ("Fish?", ["swim"], ["fly"]),
  ("Grass?", ["green"], ["blue"]),
  ("Night?", ["dark"], ["bright"]),
  ("Snow?", ["white"], ["black"]),
  ("Sea?", ["salty"], ["sweet"]),
]


@pytest.fixture()
def setup(tmp_path, tiny_gguf, monkeypatch):
  monkeypatch.setenv("J6JAX_CACHE", str(tmp_path / "cache"))
  data = tmp_path / "qa.jsonl"
  data.write_text(
    "".join(
      json.dumps({"question": q, "correct": c, "incorrect": i}) + "\n"
      for q, c, i in QUESTIONS
    )
  )
  return tmp_path, data, str(tiny_gguf[0])


def test_train_eval_report(setup):
  tmp, data, model = setup
  runner = typer_testing.CliRunner()
  run = tmp / "run"
  common = ["--data", str(data), "--model", model]
  res = runner.invoke(
    app,
    [
      "train",
      str(run),
      *common,
      "--steps",
      "2",
      "--batch-questions",
      "2",
      "--set",
      "h_layers=[1]",
      "--set",
      "eval_every=1",
    ],
  )
  assert res.exit_code == 0, res.output
  assert "run folder" in res.output
  steps = (run / "steps.jsonl").read_text().splitlines()
  assert len(steps) == 2 and "alpha" in json.loads(steps[0])
  res = runner.invoke(app, ["eval", str(run), *common, "--split", "test"])
  assert res.exit_code == 0, res.output
  out = json.loads((run / "eval_test.json").read_text())
  assert 0 <= out["mc1"] <= 1 and out["n_questions"] == 2
  res = runner.invoke(app, ["eval", "--untuned", *common, "--split", "all"])
  assert res.exit_code == 0, res.output
  assert json.loads(res.stdout)["n_questions"] == 10
  res = runner.invoke(app, ["report", str(run)])
  assert res.exit_code == 0, res.output
  for name in ("components", "alpha", "shares", "conflicts", "validation"):
    assert (run / f"{name}.png").stat().st_size > 1000


def test_cli_errors_are_clear(setup):
  tmp, data, model = setup
  runner = typer_testing.CliRunner()
  common = ["--model", model]

  def train(*extra, data_file=data):
    args = ["train", str(tmp / "r"), "--data", str(data_file), *common]
    return runner.invoke(app, [*args, *extra])

  res = runner.invoke(app, ["train", str(tmp / "r"), "--data", "nope.jsonl"])
  assert res.exit_code == 2 and "nope.jsonl: data file not found" in res.output
  bad = tmp / "bad.jsonl"
  bad.write_text('{"question": "q", "correct": ["a"]}\n')
  res = train(data_file=bad)
  assert res.exit_code == 2 and "bad.jsonl:1: missing field" in res.output
  res = train("--method", "adamw")
  assert res.exit_code == 2 and "Unknown method 'adamw'" in res.output
  res = train("--set", "h_layers=[7]")
  assert res.exit_code == 2 and "7" in res.output
  res = train("--set", "n_sofft=3")
  assert res.exit_code == 2
  assert "Unknown config key(s) ['n_sofft']" in res.output
  res = train("--method-kwargs", '{"temprature": 0.5}')
  assert res.exit_code == 2 and "do not fit method 'j6'" in res.output
  res = train("--mesh", "data=64")
  assert res.exit_code == 2 and "needs 64 devices, but there are" in res.output
  res = train("--mesh", "pipe=2")
  assert res.exit_code == 2 and "Unknown mesh axes ['pipe']" in res.output
  # Failed runs left the folder usable: a correct command now works, here
  # on a one-device mesh (8 devices: tests/mesh_checks.py).
  res = train(
    "--steps",
    "1",
    "--set",
    "h_layers=[1]",
    "--set",
    "eval_every=0",
    "--mesh",
    "data=1",
  )
  assert res.exit_code == 0, res.output
  summary = json.loads((tmp / "r" / "summary.json").read_text())
  assert summary["mesh"] == {"data": 1, "model": 1}
  res = runner.invoke(app, ["eval", "--data", str(data), *common])
  assert res.exit_code == 2 and "RUN_DIR or --untuned" in res.output
  res = runner.invoke(app, ["report", str(tmp / "empty")])
  assert res.exit_code == 2 and "no steps.jsonl" in res.output
