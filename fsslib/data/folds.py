"""Fold splits: which classes are novel (tested) and which are base (trained) in each fold.

Few-shot segmentation benchmarks split their classes into folds. In fold ``i`` the
fold's classes are *novel*: they never appear as targets during training and every
test episode asks for one of them. All other classes are *base* classes, used for
(episodic) training.

- PASCAL-5i (Shaban et al., 2017): 20 VOC classes, 4 folds, fold ``i`` = ids ``5i+1 .. 5i+5``.
- COCO-20i: 80 classes (index = position 1..80 in ascending COCO category id), 4 folds,
  in one of two conventions found in the literature:
  ``interleaved`` (fold ``i`` = ``4k + i + 1``; PFENet, HSNet, MSDNet; the default) and
  ``contiguous`` (fold ``i`` = ``20i+1 .. 20i+20``; PANet, SSP).
- synthetic: 20 classes (arrangements of parts, ``fsslib.data.synthetic``), fold ``i`` = ids
  ``5i+1 .. 5i+5`` as in PASCAL-5i. Colour and texture come from a palette shared by all classes,
  so a novel class is new only in its structure.
"""
from __future__ import annotations

BENCHMARKS = ("pascal5i", "coco20i", "synthetic")
COCO_CONVENTIONS = ("interleaved", "contiguous")
NUM_FOLDS = 4

NUM_CLASSES = {"pascal5i": 20, "coco20i": 80, "synthetic": 20}


def fold_classes(benchmark: str, fold: int, convention: str | None = None) -> list[int]:
    """Novel class ids of ``fold`` (sorted ascending).

    ``convention`` only applies to ``coco20i`` (default ``"interleaved"``).
    """
    if benchmark not in BENCHMARKS:
        raise ValueError(f"benchmark must be one of {BENCHMARKS}, got {benchmark!r}")
    if not (isinstance(fold, int) and 0 <= fold < NUM_FOLDS):
        raise ValueError(f"fold must be an int in 0..{NUM_FOLDS - 1}, got {fold!r}")
    if convention is not None and benchmark != "coco20i":
        raise ValueError(f"convention applies to coco20i only, got convention={convention!r} for {benchmark}")

    if benchmark in ("pascal5i", "synthetic"):
        return list(range(5 * fold + 1, 5 * fold + 6))
    if benchmark == "coco20i":
        convention = convention or "interleaved"
        if convention not in COCO_CONVENTIONS:
            raise ValueError(f"coco20i convention must be one of {COCO_CONVENTIONS}, got {convention!r}")
        if convention == "interleaved":
            return [4 * k + fold + 1 for k in range(20)]
        return list(range(20 * fold + 1, 20 * fold + 21))
    raise AssertionError(benchmark)  # unreachable: BENCHMARKS is checked above


def base_classes(benchmark: str, fold: int, convention: str | None = None) -> list[int]:
    """All class ids that are not novel in ``fold``."""
    novel = set(fold_classes(benchmark, fold, convention))
    return [c for c in range(1, NUM_CLASSES[benchmark] + 1) if c not in novel]
