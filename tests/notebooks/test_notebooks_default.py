"""Every notebook in its default mode (as a student runs it) on a fresh data and runs folder.

Slow (minutes each; the first one generates the synthetic benchmark and the fold's backbone is
pre-trained by the first notebook that needs it), so marked ``slow``: ``make test-all`` runs them
all, ``.ci/run`` the ones that fit its budget (``make test-slow-ci``).
"""
from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="session")
def fresh_folders(tmp_path_factory):
    """One data and one runs folder for the session's notebooks, empty at the start (a fresh clone's)."""
    root = tmp_path_factory.mktemp("fresh-clone")
    return {"FSSLIB_DATA": str(root / "data"), "FSSLIB_RUNS": str(root / "runs"),
            "FSSLIB_FIGURES": str(root / "figures")}


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_default_mode_on_fresh_folders(path, fresh_folders, monkeypatch):
    for name, value in fresh_folders.items():
        monkeypatch.setenv(name, value)
    for name in ("FSSLIB_FAST", "DISPLAY", "MPLBACKEND"):
        monkeypatch.delenv(name, raising=False)
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=3600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    outputs = [o for cell in nb.cells for o in cell.get("outputs", [])]
    setup = "".join(o.get("text", "") for o in nb.cells[[c.cell_type for c in nb.cells].index("code")].outputs)
    assert "device: " in setup and "mode:   default mode" in setup and fresh_folders["FSSLIB_RUNS"] in setup
    if "plt." in path.read_text():
        assert any("image/png" in o.get("data", {}) for o in outputs), f"{path.name} showed no figure"
