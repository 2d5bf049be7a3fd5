"""Helpers to author notebooks as Python lists of cells and to strip outputs.

``python tools/nbtools.py strip notebooks/*.ipynb`` removes outputs and execution counts
(notebooks are committed without them).
"""
from __future__ import annotations

import sys
from pathlib import Path

import nbformat


def build(path: str | Path, cells: list[tuple[str, str]]) -> None:
    """Write a notebook from ``(kind, source)`` pairs; kind is "md", "code" or "params"."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for kind, source in cells:
        source = source.strip("\n")
        if kind == "md":
            nb.cells.append(nbformat.v4.new_markdown_cell(source))
        else:
            cell = nbformat.v4.new_code_cell(source)
            if kind == "params":
                cell.metadata["tags"] = ["parameters"]
            nb.cells.append(cell)
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:02d}"  # stable ids keep diffs small
    nbformat.write(nb, str(path))


def strip(path: str | Path) -> None:
    nb = nbformat.read(str(path), as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nbformat.write(nb, str(path))


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] != "strip":
        sys.exit("usage: python tools/nbtools.py strip NOTEBOOK...")
    for p in sys.argv[2:]:
        strip(p)
