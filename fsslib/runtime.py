"""Process-wide conventions read from the environment: fast mode and the default device."""
from __future__ import annotations

import os

import torch


def fast_mode() -> bool:
    """``FSSLIB_FAST=1`` shrinks every notebook and runner to seconds (used by the tests)."""
    return os.environ.get("FSSLIB_FAST") == "1"


def default_device(device: str | torch.device | None = None) -> torch.device:
    """The argument, else CUDA when available, else CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
