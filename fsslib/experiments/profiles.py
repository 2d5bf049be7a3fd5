"""Profiles of ``reproduce``: which folds, seeds, recipe and protocol, and where their outputs go.

Everything that names a profile's files lives here, below the modules that produce those files
(``report``, ``factors``, ``reproduce``), so that they import it and never each other.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..engine.protocol import EvalProtocol
from ..engine.trainer import runs_dir
from ..models.registry import records
from ..runtime import fast_mode


@dataclass(frozen=True)
class Profile:
    name: str
    folds: tuple[int, ...]
    seeds: tuple[int, ...]
    #: TrainConfig overrides of the standard recipe ({} = the standard recipe).
    recipe: dict = field(default_factory=dict)
    episodes: int = 1000
    shots: tuple[int, ...] = (1, 5)
    jobs: int = 2
    #: "synthetic", or a real benchmark ("pascal5i", "coco20i") under ``$FSSLIB_DATA``: the papers'
    #: recipes from ImageNet weights (see ``configs.real_data_recipe``), meant for a GPU.
    benchmark: str = "synthetic"
    #: Test image size; None = the benchmark's usual size (synthetic 128, PASCAL/COCO 473).
    image_size: int | None = None


#: ``default`` fits 57 training runs and 132 evaluations in 45 minutes of a 2-core CPU (30 minutes
#: measured on a fresh clone, benchmark v3): 150 steps of 4 episodes instead of 1000 of 8 (7.5% of
#: the standard recipe's training episodes), and 300 test episodes per shot instead of 1000. On the
#: previous benchmark, in so few steps the PFENet and MSPF heads, trained from scratch at the
#: standard 5e-4, predicted background everywhere for every seed (0 mIoU, measured); at 2e-3 some
#: seeds still did, until the synthetic recipe's prior shortcut (``pfenet.PRIOR_SHORTCUT``, chosen by
#: ``python -m fsslib collapse``). MSDNet takes 1e-3 (44 mIoU vs 38 at 5e-4, previous benchmark).
#: ``fast`` runs the FSSLIB_FAST recipe (6 steps of 2 episodes) on the tiny benchmark.
DEFAULT_RECIPE = {"steps": 150, "batch_size": 4,
                  "by_method": {r.name: r.short_recipe for r in records() if r.short_recipe}}
PROFILES = {
    "fast": Profile("fast", folds=(0,), seeds=(0,), episodes=8, shots=(1, 5), jobs=1),
    "default": Profile("default", folds=(0,), seeds=(0, 1, 2), recipe=DEFAULT_RECIPE, episodes=300),
    "full": Profile("full", folds=(0, 1, 2, 3), seeds=(0, 1, 2)),
    # A CUDA machine: the default profile's tables with the standard recipe (1000 steps of 8
    # episodes) and 1000 test episodes per shot; four worker processes share the GPU.
    "gpu": Profile("gpu", folds=(0,), seeds=(0, 1, 2), jobs=4),
    # Real data (a GPU, the datasets and the ImageNet weights supplied by the user): the same
    # tables with each paper's recipe, one training seed, 1000 test episodes per shot and fold.
    "pascal5i": Profile("pascal5i", folds=(0, 1, 2, 3), seeds=(0,), jobs=1, benchmark="pascal5i"),
    "coco20i": Profile("coco20i", folds=(0, 1, 2, 3), seeds=(0,), jobs=1, benchmark="coco20i"),
}


def results_root(profile: Profile) -> Path:
    """``results/`` for the default profile (what the README shows), ``results/<profile>/`` otherwise."""
    root = runs_dir().parent / "results"
    return root if profile.name == "default" else root / profile.name


def evaluations_dir(profile: Profile) -> Path:
    """Where the evaluation of each run is stored for reuse: working state beside the runs (never
    committed), so that a fresh clone trains and evaluates everything; ``results/`` holds the outputs."""
    return runs_dir() / "evaluations" / profile.name


def notebook_profile() -> Profile:
    """The profile a notebook follows: ``fast`` in fast mode (the tests), else ``default``. A
    notebook trains the profile's runs (the same folders as ``make reproduce``, so either reuses
    the other's) and shows the profile's stored tables."""
    return PROFILES["fast" if fast_mode() else "default"]


def stored_rows(key: str, profile: Profile) -> pd.DataFrame | None:
    """``results/<key>.csv`` as ``reproduce --profile <profile>`` wrote it (committed for the
    default profile), or None. A read-only reference: it is shown, never used in place of a run."""
    path = results_root(profile) / f"{key}.csv"
    return pd.read_csv(path) if path.exists() else None


def protocol_of(profile: Profile) -> EvalProtocol:
    """One evaluation seed; its episode lists are shot-paired (``data.sample_episodes``)."""
    return EvalProtocol(episodes=profile.episodes, seeds=(0,), shots=profile.shots, image_size=profile.image_size)


def figures_of(profile) -> Path:
    """Where ``reproduce`` draws: the committed ``figures/`` for the default profile
    (``$FSSLIB_FIGURES`` in the tests), ``figures/<profile>/`` for the others (``fast/`` is ignored
    by git: a smoke run never overwrites a committed figure)."""
    root = Path(os.environ.get("FSSLIB_FIGURES") or runs_dir().parent / "figures")
    return root if profile.name == "default" else root / profile.name


def default_profile_name() -> str:
    """``gpu`` where torch sees a CUDA device, else ``default`` (the 2-core CPU profile)."""
    import torch

    return "gpu" if torch.cuda.is_available() else "default"
