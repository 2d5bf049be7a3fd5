"""Notebook tools: strip outputs, run every notebook in its default mode, the setup cell, badges, the book.

``python tools/nbtools.py strip notebooks/*.ipynb`` removes outputs and execution counts
(notebooks are committed without them).

``python tools/nbtools.py run --out DIR notebooks/*.ipynb`` executes each notebook top to bottom
in its default mode (as a student would: fast mode off, no X display), one after another, writes
the executed copies to DIR (the committed notebooks stay without outputs) and prints a table of
wall times and inline figures: the README's notebook table comes from it.

``python tools/nbtools.py setup-cells notebooks/*.ipynb`` makes :data:`SETUP_CELL` the first code
cell of each notebook (``--check`` only reports the ones that differ); ``badges`` prints the
README's table of "Open in Colab" links. Both take the repository's address from
:data:`REPOSITORY`, the one place it is written.

``python tools/nbtools.py book [--execute] [--fast]`` builds the static site (``make book``): with
``--execute`` it first runs every notebook (default mode unless ``--fast``) into
``docs/notebooks/`` (committed, outputs included); then it converts those to HTML with nbconvert
into ``docs/_build/`` beside an ``index.html`` that lists them in order with one figure each.
"""
from __future__ import annotations

import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
#: Where the project is published: the Colab badges and the setup cell's clone come from here.
REPOSITORY = "https://github.com/fsslib/fsslib"
BRANCH = "main"

#: The first code cell of every notebook: on Colab (or wherever fsslib is not installed) it clones
#: the repository and installs it; then it reports the device, the data and runs folders, the mode.
SETUP_CELL = f"""# Setup: where fsslib is missing (Colab), clone and install it (a minute); elsewhere nothing happens.
import importlib.util
import subprocess
import sys

if importlib.util.find_spec("fsslib") is None:
    subprocess.run(["git", "clone", "--quiet", "--depth=1", "{REPOSITORY}", "fsslib-repo"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "-e", "fsslib-repo"], check=True)
    sys.path.insert(0, "fsslib-repo")

from fsslib.analysis.notebook import notebook_setup

SETUP = notebook_setup()  # notebook_setup(data="...", runs="...") moves the data and runs folders"""


def colab_url(notebook: str | Path) -> str:
    owner_repo = REPOSITORY.removeprefix("https://github.com/")
    return f"https://colab.research.google.com/github/{owner_repo}/blob/{BRANCH}/notebooks/{Path(notebook).name}"


def badges(paths: list[str | Path]) -> str:
    """The README's table: one row per notebook, its title, its Colab badge, its executed copy."""
    rows = ["| notebook | run it | read it, executed |", "|---|---|---|"]
    badge = "https://colab.research.google.com/assets/colab-badge.svg"
    for path in map(Path, sorted(paths)):
        title = notebook_title(nbformat.read(str(path), as_version=4)) or path.stem
        rows.append(f"| [{title}](notebooks/{path.name}) | [![Open In Colab]({badge})]({colab_url(path)}) "
                    f"| [{path.stem}](docs/notebooks/{path.name}) |")
    return "\n".join(rows)


def setup_cell_index(nb) -> int | None:
    return next((i for i, c in enumerate(nb.cells) if c.cell_type == "code"), None)


def set_setup_cell(path: str | Path, check: bool = False) -> bool:
    """Make :data:`SETUP_CELL` the first code cell of ``path``; returns whether it already was."""
    nb = nbformat.read(str(path), as_version=4)
    index = setup_cell_index(nb)
    if index is not None and nb.cells[index].source == SETUP_CELL:
        return True
    if not check:
        if index is not None and nb.cells[index].source.startswith("# Setup:"):
            nb.cells[index].source = SETUP_CELL
        else:
            first_code = index if index is not None else len(nb.cells)
            nb.cells.insert(first_code, nbformat.v4.new_code_cell(SETUP_CELL))
        nbformat.write(nb, str(path))
    return False


def strip(path: str | Path) -> None:
    nb = nbformat.read(str(path), as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nbformat.write(nb, str(path))


def run(paths: list[str], out: Path, timeout: int = 3600, fast: bool = False) -> list[dict]:
    """Execute ``paths`` in default mode (``fast``: the tests' fast mode), in order; returns one row
    per notebook (printed as it goes)."""
    import os
    import time

    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    for name in ("FSSLIB_FAST", "DISPLAY", "MPLBACKEND"):
        os.environ.pop(name, None)
    if fast:
        os.environ["FSSLIB_FAST"] = "1"
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    print("| notebook | minutes | inline figures | result |\n|---|---|---|---|", flush=True)
    for path in map(Path, paths):
        nb = nbformat.read(str(path), as_version=4)
        start, result = time.perf_counter(), "ran top to bottom"
        try:
            NotebookClient(nb, timeout=timeout, kernel_name="python3",
                           resources={"metadata": {"path": str(path.resolve().parent)}}).execute()
        except CellExecutionError as error:
            result = "FAILED: " + str(error).strip().splitlines()[-1][:200]
        minutes = (time.perf_counter() - start) / 60
        figures = sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
        nbformat.write(nb, str(out / path.name))
        rows.append(dict(notebook=path.stem, minutes=minutes, figures=figures, result=result))
        print(f"| {path.stem} | {minutes:.1f} | {figures} | {result} |", flush=True)
    return rows


def notebook_title(nb) -> str:
    """The first markdown heading of a notebook, without its ``#``."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return ""


def first_figure(nb) -> bytes | None:
    """The PNG bytes of the first figure a notebook shows."""
    import base64

    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if "image/png" in data:
                return base64.b64decode(data["image/png"])
    return None


def build_site(executed: Path, site: Path) -> Path:
    """HTML of every executed notebook in ``executed`` (nbconvert's lab template, images inline)
    and ``index.html`` listing them in order with each one's first figure; returns the index."""
    import html

    from nbconvert import HTMLExporter

    site.mkdir(parents=True, exist_ok=True)
    (site / "figures").mkdir(exist_ok=True)
    exporter = HTMLExporter(template_name="lab")
    entries = []
    for path in sorted(executed.glob("*.ipynb")):
        nb = nbformat.read(str(path), as_version=4)
        body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": notebook_title(nb) or path.stem}})
        (site / f"{path.stem}.html").write_text(body, encoding="utf-8")
        figure = first_figure(nb)
        if figure is not None:
            (site / "figures" / f"{path.stem}.png").write_bytes(figure)
        entries.append((path.stem, notebook_title(nb) or path.stem, figure is not None))
    items = "\n".join(
        f'<li><a href="{stem}.html"><h2>{html.escape(title)}</h2>'
        + (f'<img src="figures/{stem}.png" alt="first figure of {stem}">' if has_figure else "<p>(no figure)</p>")
        + "</a></li>" for stem, title, has_figure in entries)
    index = site / "index.html"
    index.write_text(f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>fsslib notebooks</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}}
ol{{list-style:none;padding:0;display:grid;grid-template-columns:repeat(auto-fill,minmax(320px,1fr));gap:1.5em}}
li a{{color:inherit;text-decoration:none}} h2{{font-size:1.05em}} img{{width:100%;border:1px solid #ddd}}</style>
</head><body><h1>fsslib: the notebooks, executed</h1>
<p>Each notebook as it ran top to bottom in its default mode, outputs included. The sources, without outputs,
are in the repository's <code>notebooks/</code>; open them in JupyterLab or Colab to run them.</p>
<ol>
{items}
</ol></body></html>
""", encoding="utf-8")
    return index


def book(execute: bool = False, fast: bool = False, executed: Path | None = None, site: Path | None = None) -> Path:
    """``make book``: optionally execute every notebook into ``docs/notebooks/``, then build the site."""
    executed = executed or ROOT / "docs" / "notebooks"
    site = site or ROOT / "docs" / "_build"
    if execute:
        rows = run(sorted(str(p) for p in (ROOT / "notebooks").glob("*.ipynb")), executed, fast=fast)
        failed = [r["notebook"] for r in rows if r["result"] != "ran top to bottom"]
        if failed:
            sys.exit(f"notebooks failed: {failed}; the site was not built")
    index = build_site(executed, site)
    print(f"wrote {index}")
    return index


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "strip":
        for p in sys.argv[2:]:
            strip(p)
    elif len(sys.argv) >= 3 and sys.argv[1] == "setup-cells":
        check = "--check" in sys.argv
        stale = [p for p in sys.argv[2:] if p != "--check" and not set_setup_cell(p, check)]
        print(("differ: " if check else "updated: ") + (", ".join(stale) or "none"))
        sys.exit(1 if check and stale else 0)
    elif len(sys.argv) >= 3 and sys.argv[1] == "badges":
        print(badges(sys.argv[2:]))
    elif len(sys.argv) >= 2 and sys.argv[1] == "book":
        book(execute="--execute" in sys.argv, fast="--fast" in sys.argv)
    elif len(sys.argv) >= 5 and sys.argv[1] == "run" and sys.argv[2] == "--out":
        failed = [r for r in run(sys.argv[4:], Path(sys.argv[3])) if r["result"] != "ran top to bottom"]
        sys.exit(1 if failed else 0)
    else:
        sys.exit("usage: python tools/nbtools.py strip NOTEBOOK... | run --out DIR NOTEBOOK... | "
                 "setup-cells [--check] NOTEBOOK... | badges NOTEBOOK... | book [--execute] [--fast]")
