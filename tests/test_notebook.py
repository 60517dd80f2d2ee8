"""Executes notebooks/quickstart.ipynb on a tiny model so it cannot rot."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

NOTEBOOK = (
  Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"
)


def test_quickstart_notebook_runs(monkeypatch):
  nbformat = pytest.importorskip("nbformat")
  nbclient = pytest.importorskip("nbclient")
  monkeypatch.setenv("J6JAX_QUICKSTART_SMALL", "1")
  monkeypatch.setenv("MPLBACKEND", "Agg")
  nb = nbformat.read(NOTEBOOK, as_version=4)
  client = nbclient.NotebookClient(
    nb,
    timeout=600,
    kernel_name="python3",
    resources={"metadata": {"path": str(NOTEBOOK.parent)}},
  )
  client.execute()
  outputs = [
    o.get("text", "")
    for c in nb.cells
    if c.cell_type == "code"
    for o in c.get("outputs", [])
  ]
  text = "".join(outputs)
  assert "role:F@h" in text and "interplay:F,C@w" in text
  assert os.environ["J6JAX_QUICKSTART_SMALL"] == "1"
