"""The course around the notebooks: the setup cell, the Colab badges, the exercises, the book."""
from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import nbformat
import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
EXECUTED = REPO / "docs" / "notebooks"


def nbtools():
    spec = importlib.util.spec_from_file_location("nbtools", REPO / "tools" / "nbtools.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_notebook_starts_with_the_setup_cell():
    tools = nbtools()
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        assert nb.cells[tools.setup_cell_index(nb)].source == tools.SETUP_CELL, \
            f"{path.name}: run `python tools/nbtools.py setup-cells notebooks/*.ipynb`"


def test_the_setup_cell_reports_device_folders_and_mode(tmp_path, monkeypatch, capsys):
    from fsslib.analysis.notebook import notebook_setup

    monkeypatch.delenv("FSSLIB_FAST", raising=False)
    setup = notebook_setup(data=tmp_path / "d", runs=tmp_path / "r", device="cpu")
    printed = capsys.readouterr().out
    assert setup.data == (tmp_path / "d").resolve() and setup.runs == (tmp_path / "r").resolve()
    assert f"data:   {setup.data}" in printed and f"runs:   {setup.runs}" in printed
    assert "device: cpu (no GPU visible: training cells run on the CPU)" in printed and "default mode" in printed


def test_readme_has_a_colab_badge_for_every_notebook():
    readme = (REPO / "README.md").read_text()
    table = nbtools().badges(NOTEBOOKS)
    assert table in readme, "README's notebook badges are stale: `python tools/nbtools.py badges notebooks/*.ipynb`"
    assert len(re.findall(r"colab-badge\.svg", table)) == len(NOTEBOOKS)


@pytest.mark.parametrize("number", ["02", "03", "04", "05", "06"])
def test_notebooks_02_to_06_have_exercises_with_checks_and_collapsed_solutions(number):
    from fsslib.analysis.exercises import EXERCISES

    (path,) = [p for p in NOTEBOOKS if p.name.startswith(number)]
    cells = nbformat.read(path, as_version=4).cells
    checks = [c for c in cells if c.cell_type == "code" and re.search(r"\.check\(my_\w+\)$", c.source.strip())]
    solutions = [c for c in cells if "solution" in c.metadata.get("tags", [])]
    assert 1 <= len(checks) <= 3 and len(solutions) == len(checks), path.name
    for check, solution in zip(checks, solutions):
        name = re.search(r'EXERCISES\["([^"]+)"\]', check.source).group(1)
        assert name in EXERCISES
        assert solution.metadata["jupyter"]["source_hidden"]
        assert f'EXERCISES["{name}"].check(solution_' in solution.source and "must_pass=True" in solution.source


def test_executed_notebooks_are_committed_with_their_figures():
    """docs/notebooks holds every notebook executed (make book): same cells as the source, outputs
    included, a figure in each that draws one, no error output."""
    for path in NOTEBOOKS:
        executed = EXECUTED / path.name
        assert executed.exists(), f"{executed} missing: run `make book`"
        source_cells = nbformat.read(path, as_version=4).cells
        cells = nbformat.read(executed, as_version=4).cells
        assert [c.source for c in cells] == [c.source for c in source_cells], \
            f"{executed.name} is stale (its cells differ from notebooks/{path.name}): run `make book`"
        outputs = [o for c in cells for o in c.get("outputs", [])]
        assert not [o for o in outputs if o.output_type == "error"], f"{executed.name} holds an error"
        if "plt." in path.read_text():
            assert any("image/png" in o.get("data", {}) for o in outputs), f"{executed.name} shows no figure"


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _render(page: Path, screenshot: Path) -> str:
    """Screenshot ``page`` in headless Chromium and return the DOM it rendered."""
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={screenshot.parent / ('profile-' + screenshot.stem)}", "--window-size=1280,1600",
             "--virtual-time-budget=5000"]
    subprocess.run([_chromium(), *flags, f"--screenshot={screenshot}", page.as_uri()], check=True,
                   capture_output=True, timeout=120)
    dom = subprocess.run([_chromium(), *flags, "--dump-dom", page.as_uri()], check=True, capture_output=True,
                         text=True, timeout=120)
    return dom.stdout


@pytest.mark.skipif(_chromium() is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_the_book_renders_with_figures_and_no_python_error(tmp_path):
    """Built from the committed executed notebooks, seen as a reader sees it: the index and two
    notebook pages screenshot in headless Chromium; each must show a figure and no traceback."""
    site = tmp_path / "site"
    index = nbtools().build_site(EXECUTED, site)
    pages = [index, site / "03_prior_masks.html", site / "11_your_own_images.html"]
    for page in pages:
        shot = tmp_path / f"{page.stem}.png"
        dom = _render(page, shot)
        text = re.sub(r"<[^>]+>", " ", dom)
        assert "Traceback (most recent call last)" not in text and not re.search(r"\b\w+Error: ", text), page.name
        images = re.findall(r"<img[^>]+src=\"(data:image/png|figures/)", dom)
        assert images, f"{page.name} shows no figure"
        pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
        assert pixels.shape == (1600, 1280) and pixels.std() > 10, f"{page.name}: the screenshot is blank"
    assert len(re.findall(r"<img", (site / "index.html").read_text())) == len(NOTEBOOKS)
