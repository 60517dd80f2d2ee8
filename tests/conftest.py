"""Shared fixtures: paths to the shared data beside the checkout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def cases() -> dict:
  """The failure cases of ``../shared/cases.json``, keyed by id."""
  path = SHARED / "cases.json"
  if not path.exists():
    pytest.skip(f"{path} not found (the shared folder beside the checkout)")
  data = json.loads(path.read_text())
  return {c["id"]: c for c in data["cases"]}


@pytest.fixture(scope="session")
def truthfulqa_csv() -> Path:
  """Path of the real TruthfulQA CSV in ``../shared/data``."""
  path = SHARED / "data" / "TruthfulQA.csv"
  if not path.exists():
    pytest.skip(f"{path} not found (the shared folder beside the checkout)")
  return path
