"""Execute every notebook in fast mode in a real Jupyter kernel; any error fails the test."""
from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))


def test_notebooks_exist():
    assert NOTEBOOKS, "no notebooks found"


def test_notebooks_are_committed_without_outputs():
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
        assert not dirty, f"{path.name}: cells {dirty} have outputs; strip with `python tools/nbtools.py strip`"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_fast_mode(path, synthetic_source, tmp_path, monkeypatch):
    monkeypatch.setenv("FSSLIB_FAST", "1")
    monkeypatch.setenv("FSSLIB_DATA", str(synthetic_source.root.parent))  # reuse the session's benchmark
    monkeypatch.setenv("FSSLIB_FIGURES", str(tmp_path / "figures"))
    monkeypatch.setenv("FSSLIB_RUNS", str(tmp_path / "runs"))
    # As on macOS, Windows or JupyterHub: no X display, Jupyter's own (inline) backend.
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("MPLBACKEND", raising=False)
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    figures = list((tmp_path / "figures").rglob("*.png"))
    assert figures or "save_figure" not in path.read_text(), f"{path.name} saved no figure"
    shown = sum("image/png" in output.get("data", {}) for cell in nb.cells for output in cell.get("outputs", []))
    if figures:  # a figure the notebook saves is one it draws, and it must show in the notebook too
        assert shown, f"{path.name} drew figures but its outputs hold no image/png (backend: not inline?)"
