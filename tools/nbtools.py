"""Notebook tools: strip outputs, run every notebook in its default mode.

``python tools/nbtools.py strip notebooks/*.ipynb`` removes outputs and execution counts
(notebooks are committed without them).

``python tools/nbtools.py run --out DIR notebooks/*.ipynb`` executes each notebook top to bottom
in its default mode (as a student would: fast mode off, no X display), one after another, writes
the executed copies to DIR (the committed notebooks stay without outputs) and prints a table of
wall times and inline figures: the README's notebook table comes from it.
"""
from __future__ import annotations

import sys
from pathlib import Path

import nbformat


def strip(path: str | Path) -> None:
    nb = nbformat.read(str(path), as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nbformat.write(nb, str(path))


def run(paths: list[str], out: Path, timeout: int = 3600) -> list[dict]:
    """Execute ``paths`` in default mode, in order; returns one row per notebook (printed as it goes)."""
    import os
    import time

    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    for name in ("FSSLIB_FAST", "DISPLAY", "MPLBACKEND"):
        os.environ.pop(name, None)
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


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "strip":
        for p in sys.argv[2:]:
            strip(p)
    elif len(sys.argv) >= 5 and sys.argv[1] == "run" and sys.argv[2] == "--out":
        failed = [r for r in run(sys.argv[4:], Path(sys.argv[3])) if r["result"] != "ran top to bottom"]
        sys.exit(1 if failed else 0)
    else:
        sys.exit("usage: python tools/nbtools.py strip NOTEBOOK... | run --out DIR NOTEBOOK...")
