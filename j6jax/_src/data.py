"""Multiple-choice question data: TruthfulQA, user files, a built-in default.

Every source gives a list of :class:`MCItem`: a question, its best answer,
its true answers (the best one first) and its false answers. Bad input raises
:class:`DataError`, whose message names the file, the row and the field.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import random
from collections.abc import Sequence
from pathlib import Path

TRUTHFULQA_COLUMNS = (
  "Type",
  "Category",
  "Question",
  "Best Answer",
  "Correct Answers",
  "Incorrect Answers",
  "Source",
)


class DataError(ValueError):
  """Malformed data, with the file, row and field in the message."""


@dataclasses.dataclass(frozen=True)
class MCItem:
  """One multiple-choice question.

  Attributes:
    question: the question text.
    correct: true answers, the best answer first, without duplicates.
    incorrect: false answers, without duplicates.
    category: an optional category (TruthfulQA's ``Category``).
    origin: where it came from, ``"file:row"``, for error messages.
  """

  question: str
  correct: tuple[str, ...]
  incorrect: tuple[str, ...]
  category: str = ""
  origin: str = ""

  @property
  def best(self) -> str:
    """The best true answer (MC1's target)."""
    return self.correct[0]

  @property
  def answers(self) -> tuple[str, ...]:
    """All answers: true ones first (best at index 0), then false ones."""
    return self.correct + self.incorrect


def _dedupe(xs: Sequence[str]) -> tuple[str, ...]:
  seen, out = set(), []
  for x in xs:
    if x and x not in seen:
      seen.add(x)
      out.append(x)
  return tuple(out)


def _split_answers(text: str) -> list[str]:
  return [a.strip() for a in text.split(";") if a.strip()]


def make_item(
  question: str,
  correct: Sequence[str],
  incorrect: Sequence[str],
  *,
  best: str | None = None,
  category: str = "",
  origin: str = "",
  on_overlap: str = "error",
) -> MCItem:
  """Builds a validated :class:`MCItem`.

  Args:
    question: non-empty question text.
    correct: true answers (at least one, unless ``best`` is given).
    incorrect: false answers (at least one).
    best: the best true answer; default the first of ``correct``.
    category: optional category.
    origin: ``"file:row"`` used in error messages.
    on_overlap: an answer listed as both true and false is an error
      (``"error"``) or kept as true only (``"drop"``).

  Raises:
    DataError: for an empty question, no true answer, no false answer, or an
      answer that is both true and false (with ``on_overlap="error"``).
  """
  where = f"{origin}: " if origin else ""
  question = (question or "").strip()
  if not question:
    raise DataError(f"{where}field 'question' is empty.")
  correct = [c.strip() for c in correct if c and c.strip()]
  if best is not None and best.strip():
    correct = [best.strip(), *correct]
  correct = _dedupe(correct)
  incorrect = _dedupe([c.strip() for c in incorrect if c and c.strip()])
  if not correct:
    raise DataError(f"{where}field 'correct' has no true answer.")
  both = sorted(set(correct) & set(incorrect))
  if both and on_overlap == "error":
    raise DataError(f"{where}answer(s) {both} are listed as true and false.")
  incorrect = tuple(a for a in incorrect if a not in both)
  if not incorrect:
    raise DataError(f"{where}field 'incorrect' has no false answer.")
  return MCItem(question, correct, incorrect, category, origin)


def load_truthfulqa(path: str | Path) -> list[MCItem]:
  """Reads TruthfulQA from its CSV (answers separated by ``"; "``).

  Args:
    path: the CSV with columns Type, Category, Question, Best Answer, Correct
      Answers, Incorrect Answers, Source.

  Returns:
    One :class:`MCItem` per row, in file order (817 for the full set). An
    answer listed as both true and false (row 349 of the public file lists
    "Unknown" in both) is kept as a true answer only.

  Raises:
    DataError: a missing file, missing columns or a malformed row (named).
  """
  path = Path(path)
  if not path.is_file():
    raise DataError(f"{path}: TruthfulQA CSV not found.")
  with path.open(newline="", encoding="utf-8") as f:
    reader = csv.DictReader(f)
    missing = [
      c for c in TRUTHFULQA_COLUMNS[2:6] if c not in (reader.fieldnames or [])
    ]
    if missing:
      raise DataError(
        f"{path}: missing column(s) {missing}; found {reader.fieldnames}."
      )
    items = []
    for row_no, row in enumerate(reader, start=2):
      items.append(
        make_item(
          row["Question"],
          _split_answers(row["Correct Answers"] or ""),
          _split_answers(row["Incorrect Answers"] or ""),
          best=row["Best Answer"],
          category=row.get("Category") or "",
          origin=f"{path}:{row_no}",
          on_overlap="drop",
        )
      )
  if not items:
    raise DataError(f"{path}: no questions.")
  return items


def _as_list(value, field: str, where: str) -> list[str]:
  if isinstance(value, str):
    return _split_answers(value)
  if isinstance(value, list) and all(isinstance(v, str) for v in value):
    return value
  raise DataError(
    f"{where}: field '{field}' must be a list of strings or a "
    f"';'-separated string, got {type(value).__name__}."
  )


def load_mc(path: str | Path) -> list[MCItem]:
  """Reads the user's own multiple-choice data from JSONL or CSV.

  Each record has ``question``, ``correct`` (list of strings, or a
  ``;``-separated string), ``incorrect`` (likewise) and optionally ``best``
  and ``category``. The format is chosen by the suffix (``.jsonl``/``.json``
  lines, or ``.csv`` with those column names).

  Raises:
    DataError: naming the file, the row (1-based line) and the field.
  """
  path = Path(path)
  if not path.is_file():
    raise DataError(f"{path}: data file not found.")
  records: list[tuple[int, dict]] = []
  if path.suffix.lower() == ".csv":
    with path.open(newline="", encoding="utf-8") as f:
      reader = csv.DictReader(f)
      need = {"question", "correct", "incorrect"}
      missing = sorted(need - set(reader.fieldnames or []))
      if missing:
        raise DataError(
          f"{path}: missing column(s) {missing}; found {reader.fieldnames}."
        )
      records = [(i, r) for i, r in enumerate(reader, start=2)]
  elif path.suffix.lower() in (".jsonl", ".json"):
    with path.open(encoding="utf-8") as f:
      for i, line in enumerate(f, start=1):
        if not line.strip():
          continue
        try:
          rec = json.loads(line)
        except json.JSONDecodeError as e:
          raise DataError(f"{path}:{i}: invalid JSON ({e.msg}).") from e
        if not isinstance(rec, dict):
          raise DataError(f"{path}:{i}: each line must be a JSON object.")
        records.append((i, rec))
  else:
    raise DataError(
      f"{path}: unsupported suffix {path.suffix!r}; use .jsonl or .csv."
    )
  items = []
  for i, rec in records:
    where = f"{path}:{i}"
    for field in ("question", "correct", "incorrect"):
      if field not in rec or rec[field] is None:
        raise DataError(f"{where}: missing field '{field}'.")
    if not isinstance(rec["question"], str):
      raise DataError(f"{where}: field 'question' must be a string.")
    items.append(
      make_item(
        rec["question"],
        _as_list(rec["correct"], "correct", where),
        _as_list(rec["incorrect"], "incorrect", where),
        best=rec.get("best") or None,
        category=rec.get("category") or "",
        origin=where,
      )
    )
  if not items:
    raise DataError(f"{path}: no questions.")
  return items


def capitals(
  *, n_distractors: int = 3, seed: int = 0, limit: int | None = None
) -> list[MCItem]:
  """The built-in demo set: country capitals from the ``countryinfo`` package.

  Each country with a capital and a region gives the question ``"What is
  the capital of <country>?"`` with its capital as the true answer and
  ``n_distractors`` capitals of other countries of the same region (or the
  whole world when the region is too small), drawn with ``seed``.

  Args:
    n_distractors: false answers per question.
    seed: seed of the distractor draw and of the item order.
    limit: keep only the first ``limit`` items after shuffling.

  Returns:
    A list of :class:`MCItem`, reproducible for a given seed.
  """
  from countryinfo import all_countries

  rows = []
  for c in all_countries():
    try:
      name, cap, region = c.name(), c.capital(), c.region()
    except Exception:  # countryinfo raises on incomplete records.
      continue
    if name and cap and region and isinstance(cap, str):
      rows.append((name.title() if name.islower() else name, cap, region))
  rows.sort()
  rng = random.Random(seed)
  by_region: dict[str, list[str]] = {}
  for _, cap, region in rows:
    by_region.setdefault(region, []).append(cap)
  everything = sorted({cap for _, cap, _ in rows})
  items = []
  for name, cap, region in rows:
    pool = sorted(set(by_region[region]) - {cap})
    if len(pool) < n_distractors:
      pool = sorted(set(everything) - {cap})
    items.append(
      make_item(
        f"What is the capital of {name}?",
        [cap],
        rng.sample(pool, n_distractors),
        category=region,
        origin=f"countryinfo:{name}",
      )
    )
  rng.shuffle(items)
  return items[:limit] if limit is not None else items


@dataclasses.dataclass(frozen=True)
class Split:
  """Train / validation / test questions."""

  train: list[MCItem]
  validation: list[MCItem]
  test: list[MCItem]


def split(
  items: Sequence[MCItem],
  *,
  fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
  seed: int = 0,
) -> Split:
  """A seeded, reproducible split of whole questions.

  Raises:
    DataError: if the fractions are invalid or any split would be empty.
  """
  if len(fractions) != 3 or any(f < 0 for f in fractions):
    raise DataError(f"fractions must be three numbers >= 0, got {fractions}.")
  total = sum(fractions)
  if total <= 0:
    raise DataError(f"fractions must not all be zero, got {fractions}.")
  order = list(range(len(items)))
  random.Random(seed).shuffle(order)
  n = len(items)
  n_train = round(n * fractions[0] / total)
  n_val = round(n * fractions[1] / total)
  parts = (
    order[:n_train],
    order[n_train : n_train + n_val],
    order[n_train + n_val :],
  )
  for name, part, frac in zip(
    ("train", "validation", "test"), parts, fractions, strict=True
  ):
    if frac > 0 and not part:
      raise DataError(
        f"The {name} split is empty: {n} questions with fractions "
        f"{fractions}; give more questions or other fractions."
      )
  return Split(*([items[i] for i in part] for part in parts))
