"""Process-wide conventions read from the environment: fast mode and the default device."""
from __future__ import annotations

import os

import torch


def fast_mode() -> bool:
    """``FSSLIB_FAST=1`` shrinks every notebook and runner to seconds (used by the tests)."""
    return os.environ.get("FSSLIB_FAST") == "1"


def mode_suffix() -> str:
    """``"-fast"`` in fast mode, else empty: in the names of runs and stored evaluations, so that the
    tests' few-step runs never stand in for (or collide with) the real ones."""
    return "-fast" if fast_mode() else ""


def default_device(device: str | torch.device | None = None) -> torch.device:
    """The argument, else CUDA when available, else CPU; asking for CUDA where there is none is an error
    here, not a failure deep inside the first tensor move."""
    if device is not None:
        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r}: torch {torch.__version__} sees no CUDA device on this machine")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
