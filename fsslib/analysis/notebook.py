"""What the first cell of every notebook sets up and prints: the device, the folders, the mode.

A notebook opened on Colab, in JupyterLab on a laptop, or executed by the tests must say where it
stands before it trains anything: which device the training cells use (the GPU when torch sees
one), where the synthetic benchmark is generated and read (``$FSSLIB_DATA``), where runs and
figures go (``$FSSLIB_RUNS``), and whether it runs in the tests' fast mode (``FSSLIB_FAST=1``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import __version__
from ..data.sources import data_root
from ..engine.trainer import runs_dir
from ..runtime import default_device, fast_mode

#: The repository a clone of fsslib runs from; paths inside it print relative to it.
REPOSITORY_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class NotebookSetup:
    device: torch.device
    data: Path
    runs: Path
    fast: bool

    def describe(self) -> str:
        gpu = (f" ({torch.cuda.get_device_name(self.device)})" if self.device.type == "cuda"
               else " (no GPU visible: training cells run on the CPU)")
        mode = "fast mode (FSSLIB_FAST=1: a tiny benchmark and seconds of training)" if self.fast else "default mode"
        return (f"fsslib {__version__}, torch {torch.__version__}\n"
                f"device: {self.device}{gpu}\n"
                f"data:   {shown(self.data)}\n"
                f"runs:   {shown(self.runs)}\n"
                f"mode:   {mode}")


def shown(path: Path) -> str:
    """``path`` as a notebook prints it: relative to the repository when inside it (an executed
    notebook shows the same text on every machine), else in full."""
    path = Path(path).resolve()
    if path.is_relative_to(REPOSITORY_ROOT):
        return f"<repository>/{path.relative_to(REPOSITORY_ROOT).as_posix()}"
    return str(path)


def notebook_setup(data: str | os.PathLike | None = None, runs: str | os.PathLike | None = None,
                   device: str | torch.device | None = None) -> NotebookSetup:
    """Point ``$FSSLIB_DATA`` / ``$FSSLIB_RUNS`` at ``data`` / ``runs`` when given, print and return
    the setup. Without arguments nothing moves: the environment's folders, else the repository's
    ``data/`` and ``runs/``."""
    if data is not None:
        os.environ["FSSLIB_DATA"] = str(Path(data).expanduser().resolve())
    if runs is not None:
        os.environ["FSSLIB_RUNS"] = str(Path(runs).expanduser().resolve())
    setup = NotebookSetup(default_device(device), data_root(), runs_dir(), fast_mode())
    print(setup.describe())
    return setup
