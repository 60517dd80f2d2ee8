"""The ``j6jax`` command line: train, eval, report, demo."""

from __future__ import annotations

import csv
import json
import logging
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(
  help=(
    "Tune the prompt parameters (w: soft prompt, h: residual insertions) of "
    "a frozen LLM for factuality and confidence with J6 or a baseline, "
    "evaluate on multiple-choice questions, and plot the J6 components."
  ),
  no_args_is_help=True,
  add_completion=False,
  pretty_exceptions_enable=False,
)
log = logging.getLogger("j6jax")

DataOpt = Annotated[
  str,
  typer.Option(
    help=(
      "'capitals' (built-in, from the countryinfo package), a TruthfulQA "
      "CSV, or your own .jsonl/.csv with question, correct, incorrect."
    )
  ),
]
ModelOpt = Annotated[
  str,
  typer.Option(
    help="'default' (SmolLM2-135M-Instruct), a .gguf file or an HF folder."
  ),
]


def _fail(msg: str) -> None:
  typer.secho(f"error: {msg}", fg="red", err=True)
  raise typer.Exit(2)


def _load_items(spec: str, limit: int | None = None):
  from j6jax._src import data

  if spec == "capitals":
    items = data.capitals()
  else:
    path = Path(spec)
    if not path.is_file():
      raise data.DataError(f"{path}: data file not found.")
    header = []
    if path.suffix.lower() == ".csv":
      with path.open(newline="", encoding="utf-8") as f:
        header = next(csv.reader(f), [])
    if "Best Answer" in header:
      items = data.load_truthfulqa(path)
    else:
      items = data.load_mc(path)
  return items[:limit] if limit else items


def _load_model(spec: str):
  from j6jax import models

  t0 = time.perf_counter()
  lm = models.load_default() if spec == "default" else models.load_model(spec)
  log.info("model loaded in %.1f s", time.perf_counter() - t0)
  return lm


def _splits(items, seed: int):
  from j6jax._src import data

  return data.split(items, seed=seed)


def _parse_sets(sets: list[str]) -> dict[str, Any]:
  out = {}
  for s in sets:
    if "=" not in s:
      _fail(f"--set takes KEY=VALUE, got {s!r}.")
    k, v = s.split("=", 1)
    try:
      out[k] = json.loads(v)
    except json.JSONDecodeError:
      out[k] = v
  return out


def _progress(desc: str):
  from tqdm.auto import tqdm

  return lambda it: tqdm(it, desc=desc, leave=False, file=sys.stderr)


@app.callback()
def _main(
  verbose: Annotated[
    bool, typer.Option("--verbose", "-v", help="Log progress messages.")
  ] = False,
):
  logging.basicConfig(
    level=logging.INFO if verbose else logging.WARNING,
    format="%(levelname)s %(name)s: %(message)s",
  )


@app.command()
def train(
  run_dir: Annotated[Path, typer.Argument(help="Run folder (resumed).")],
  data: DataOpt = "capitals",
  model: ModelOpt = "default",
  method: Annotated[
    str,
    typer.Option(
      help="j6, j6-hard, linear, mean, mgda, pcgrad, cagrad, upgrad, imtl_g, "
      "nash_mtl, dualproj or aligned_mtl."
    ),
  ] = "j6",
  method_kwargs: Annotated[
    str, typer.Option(help="JSON, e.g. '{\"temperature\": 0.5}'.")
  ] = "{}",
  steps: Annotated[int, typer.Option(help="Optimisation steps.")] = 20,
  learning_rate: Annotated[float, typer.Option(help="Adam's rate.")] = 1e-2,
  batch_questions: Annotated[int, typer.Option(help="Questions per step.")] = 4,
  seed: Annotated[int, typer.Option(help="Data order and init seed.")] = 0,
  split_seed: Annotated[
    int, typer.Option(help="Seed of the train/validation/test split.")
  ] = 0,
  overwrite: Annotated[
    bool, typer.Option(help="Wipe a run folder holding another run.")
  ] = False,
  set_: Annotated[
    list[str],
    typer.Option(
      "--set",
      help=(
        "Other run settings, KEY=JSON, repeatable: n_soft, h_layers (e.g. "
        "[10,20]), h_positions (all|answer|question), max_true, max_false, "
        "factuality (mc|nll), confidence (choice_entropy|answer_entropy), "
        "style (plain|chat), w_init (text|random), w_init_text, max_len, "
        "eval_every, eval_questions, checkpoint_every."
      ),
    ),
  ] = [],  # noqa: B006
  mesh: Annotated[
    str,
    typer.Option(
      help=(
        "Device mesh, e.g. 'data=4,model=2': questions split over 'data', "
        "weights and prompt over 'model' (sizes multiply to the device "
        "count). Empty: one device."
      )
    ),
  ] = "",
  distributed: Annotated[
    bool,
    typer.Option(
      help=(
        "Call jax.distributed.initialize() before the model and mesh "
        "(multi-host: run the same command on every host; without --mesh, "
        "all devices of all hosts on 'data'; see the README)."
      )
    ),
  ] = False,
) -> None:
  """Tune w and h on the training split; validation metrics on the way."""
  from j6jax._src import train as tr
  from j6jax._src.data import DataError

  try:
    try:
      kwargs = json.loads(method_kwargs)
    except json.JSONDecodeError as e:
      raise ValueError(f"--method-kwargs is not JSON: {e}") from e
    base = dict(
      method=method,
      method_kwargs=kwargs,
      steps=steps,
      learning_rate=learning_rate,
      batch_questions=batch_questions,
      seed=seed,
    )
    cfg = tr.TrainConfig.from_dict({**base, **_parse_sets(set_)})
    if distributed:
      import jax

      jax.distributed.initialize()
    device_mesh = None
    if mesh or distributed:  # several processes: always one global mesh
      from j6jax.sharding import make_mesh

      device_mesh = make_mesh(mesh or None)
    split = _splits(_load_items(data), split_seed)
    lm = _load_model(model)
    summary = tr.train(
      lm,
      split.train,
      split.validation,
      cfg,
      run_dir,
      overwrite=overwrite,
      progress=_progress(f"train {method}"),
      mesh=device_mesh,
    )
  except (DataError, tr.RunDirError, ValueError) as e:
    _fail(str(e))
  except KeyboardInterrupt:
    typer.echo(f"interrupted; checkpoint written in {run_dir}", err=True)
    raise typer.Exit(130) from None
  typer.echo(json.dumps(summary.get("validation", summary), indent=2))
  typer.echo(f"run folder: {run_dir}")


@app.command("eval")
def eval_(
  run_dir: Annotated[
    Path | None, typer.Argument(help="Run folder; omit with --untuned.")
  ] = None,
  untuned: Annotated[bool, typer.Option(help="Score the plain model.")] = False,
  data: DataOpt = "capitals",
  model: ModelOpt = "default",
  split: Annotated[str, typer.Option(help="train, validation, test, all")] = (
    "test"
  ),
  split_seed: int = 0,
  limit: Annotated[int, typer.Option(help="First N questions (0: all).")] = 0,
  out: Annotated[Path | None, typer.Option(help="Write JSON here.")] = None,
) -> None:
  """MC1, MC2, entropies, ECE and Brier of a run (or the plain model)."""
  from j6jax import models
  from j6jax._src import train as tr
  from j6jax._src.data import DataError

  if (run_dir is None) == (not untuned):
    _fail("give a RUN_DIR or --untuned (not both).")
  try:
    items = _load_items(data)
    if split != "all":
      parts = _splits(items, split_seed)
      if split not in ("train", "validation", "test"):
        _fail(f"--split must be train, validation, test or all, not {split}.")
      items = getattr(parts, split)
    items = items[:limit] if limit else items
    lm = _load_model(model)
    if untuned:
      cfg = tr.TrainConfig(h_layers=())
      prompt = models.init_prompt(lm.config, n_soft=0, layers=())
    else:
      prompt, cfg = tr.load_run_prompt(lm, run_dir)
    res = tr.evaluate_prompt(lm, prompt, cfg, items, progress=_progress("eval"))
  except (DataError, tr.RunDirError, ValueError) as e:
    _fail(str(e))
  res["split"] = split
  text = json.dumps(res, indent=2)
  if out is None and run_dir is not None:
    out = run_dir / f"eval_{split}.json"
  if out is not None:
    out.write_text(text)
  typer.echo(text)


@app.command()
def report(
  run_dir: Annotated[Path, typer.Argument(help="Run folder.")],
) -> None:
  """Draw PNG plots of a run: components, alpha, shares, conflicts."""
  from j6jax._src.report import make_report

  try:
    paths = make_report(run_dir)
  except FileNotFoundError as e:
    _fail(str(e))
  for p in paths:
    typer.echo(str(p))


@app.command()
def demo(
  out: Annotated[Path, typer.Option(help="Folder for runs and results.")] = (
    Path("runs/demo")
  ),
  steps: int = 20,
  questions: Annotated[
    int, typer.Option(help="Questions of the capitals set used (0: all).")
  ] = 120,
  model: ModelOpt = "default",
  seed: int = 0,
) -> None:
  """Tune SmolLM2 on capitals with J6 and with equal weights; compare.

  Both methods get the same budget; the before/after table is on held-out
  questions.
  """
  from j6jax._src import demo as demo_mod

  try:
    result = demo_mod.run_demo(
      out,
      steps=steps,
      questions=questions,
      model=model,
      seed=seed,
      progress=_progress,
    )
  except KeyboardInterrupt:
    typer.echo(f"interrupted; checkpoints are in {out}", err=True)
    raise typer.Exit(130) from None
  typer.echo(result["table"])
  typer.echo(f"\nresults: {out / 'demo.json'} and {out / 'demo.md'}")
  typer.echo(f"plots: {out / 'j6'}/*.png and {out / 'linear'}/*.png")


if __name__ == "__main__":
  app()
