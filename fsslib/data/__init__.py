"""Datasets, folds and few-shot episodes (see DESIGN.md, "The episode").

Typical use::

    source = build_source("synthetic")                   # or "pascal5i", "coco20i", "fss1000"
    pool = EpisodePool.for_fold(source, fold=0, split="val")
    episodes = sample_episodes(pool, n=1000, shot=1, seed=0)
    dataset = EpisodeDataset(pool, eval_transform(128), shot=1, episodes=episodes)
"""
from __future__ import annotations

import os
from pathlib import Path

from ..runtime import fast_mode
from .coco import COCOSource
from .episodes import (
    Episode,
    EpisodeDataset,
    EpisodePool,
    collate_episodes,
    episode_mask,
    first_shots,
    load_episodes,
    oracle_episode,
    sample_episodes,
    save_episodes,
)
from .folds import BENCHMARKS, base_classes, fold_classes
from .fss1000 import FSS1000Source
from .sources import EXCLUDED, IGNORE, DatasetError, Pair, SegmentationSource, VOCLayoutSource, data_root
from .synthetic import SyntheticConfig, SyntheticSource, generate, synthetic_class_name
from .transforms import denormalise, eval_transform, train_transform
from .weak import WEAK_ANNOTATIONS, weak_annotation

#: Where each benchmark lives under the data root unless a root is given.
DEFAULT_DIRS = {"pascal5i": "VOCdevkit/VOC2012", "coco20i": "COCO2014", "fss1000": "FSS-1000",
                "synthetic": "synthetic-v3"}
#: Network input size each benchmark is usually run at.
DEFAULT_SIZES = {"pascal5i": 473, "coco20i": 473, "fss1000": 400, "synthetic": 128}


def synthetic_config() -> SyntheticConfig:
    """The full benchmark, or its tiny version in fast mode."""
    return SyntheticConfig.fast() if fast_mode() else SyntheticConfig()


def dataset_dir(benchmark: str, root: str | os.PathLike | None = None) -> Path:
    """The folder of ``benchmark``: ``root`` if given, else its default folder under the data root."""
    if root is not None:
        return Path(root).expanduser().resolve()
    if benchmark not in DEFAULT_DIRS:
        raise ValueError(f"benchmark must be one of {tuple(DEFAULT_DIRS)}, got {benchmark!r}")
    name = DEFAULT_DIRS[benchmark] + ("-fast" if benchmark == "synthetic" and fast_mode() else "")
    return data_root() / name


def prepare_synthetic(root: str | os.PathLike | None = None, config: SyntheticConfig | None = None,
                      progress: bool = True) -> SyntheticSource:
    """Generate the synthetic benchmark once (reused afterwards) and open it."""
    path = generate(dataset_dir("synthetic", root), config or synthetic_config(), progress=progress)
    return SyntheticSource(path)


def build_source(benchmark: str, root: str | os.PathLike | None = None) -> SegmentationSource:
    """Open a benchmark's files (the synthetic one is generated on first use)."""
    path = dataset_dir(benchmark, root)
    if benchmark == "synthetic":
        return prepare_synthetic(path)
    if benchmark == "pascal5i":
        return VOCLayoutSource(path)
    if benchmark == "coco20i":
        return COCOSource(path)
    return FSS1000Source(path)


__all__ = [
    "BENCHMARKS", "DEFAULT_DIRS", "DEFAULT_SIZES", "EXCLUDED", "IGNORE", "WEAK_ANNOTATIONS",
    "COCOSource", "DatasetError", "Episode", "EpisodeDataset", "EpisodePool", "FSS1000Source", "Pair",
    "SegmentationSource", "SyntheticConfig", "SyntheticSource", "VOCLayoutSource",
    "base_classes", "build_source", "collate_episodes", "data_root", "dataset_dir", "denormalise", "episode_mask",
    "first_shots", "fold_classes", "generate", "load_episodes", "oracle_episode",
    "prepare_synthetic", "sample_episodes", "save_episodes",
    "synthetic_class_name", "synthetic_config", "eval_transform", "train_transform", "weak_annotation",
]
