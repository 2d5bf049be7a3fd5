"""A benchmark's shape at a glance: classes, folds, and images per split."""
from __future__ import annotations

import pandas as pd

from .episodes import EpisodePool
from .folds import NUM_FOLDS
from .sources import SegmentationSource


def fold_summary(source: SegmentationSource, convention: str | None = None) -> pd.DataFrame:
    """One row per fold: its novel classes and how many images/pairs train and test can draw on."""
    rows = []
    for fold in range(NUM_FOLDS):
        train = EpisodePool.for_fold(source, fold, "train", convention)
        test = EpisodePool.for_fold(source, fold, "val", convention)
        rows.append({
            "fold": fold,
            "novel classes": " ".join(map(str, test.classes)),
            "train images": len({s for stems in train.queries.values() for s in stems}),
            "train (image, class) pairs": sum(map(len, train.queries.values())),
            "test images": len({s for stems in test.queries.values() for s in stems}),
            "test (image, class) pairs": sum(map(len, test.queries.values())),
        })
    return pd.DataFrame(rows).set_index("fold")


def split_sizes(source: SegmentationSource) -> dict[str, int]:
    return {split: len({p.stem for p in source.index(split)}) for split in source.splits}
