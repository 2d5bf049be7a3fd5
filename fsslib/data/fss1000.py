"""FSS-1000 (Li et al., CVPR 2020): 1000 classes, 10 image/mask pairs each, one folder per class.

Expected tree under ``root``::

    <class_name>/1.jpg, 1.png, ..., 10.jpg, 10.png     # mask: object > 127, background otherwise

The standard class split (520 train / 240 val / 240 test, as HSNet and its successors use it)
ships with fsslib in ``data/splits/fss1000_*.txt``. Class ids are 1..1000 in the order train,
val, test. FSS-1000 has no folds: a split's classes are its episodes' classes, and every image
of a class holds it (object-centred photos), so the index does not read masks.
"""
from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image

from .sources import README_DATA, DatasetError, Pair, SegmentationSource, check_sizes, read_rgb

SPLITS_DIR = Path(__file__).parent / "splits"


def fss1000_class_names(split: str) -> list[str]:
    path = SPLITS_DIR / f"fss1000_{split}.txt"
    if not path.exists():
        raise ValueError(f"FSS-1000 split must be one of ('train', 'val', 'test'), got {split!r}")
    return path.read_text().split()


class FSS1000Source(SegmentationSource):
    benchmark = "fss1000"
    splits = ("train", "val", "test")
    min_pixels = 1

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"fss1000 root {self.root} does not exist. Expected one folder per class "
                               f"(e.g. {self.root}/bus/1.jpg and 1.png); see {README_DATA}.")
        self.num_classes = len(self.class_ids)

    @cached_property
    def class_ids(self) -> dict[str, int]:
        names = [n for split in self.splits for n in fss1000_class_names(split)]
        return {name: i + 1 for i, name in enumerate(names)}

    def split_classes(self, split: str) -> list[int]:
        self.check_split(split)
        return [self.class_ids[n] for n in fss1000_class_names(split)]

    def index(self, split: str) -> list[Pair]:
        self.check_split(split)
        names = fss1000_class_names(split)
        missing = [n for n in names if not (self.root / n).is_dir()]
        if missing:
            raise DatasetError(f"fss1000 root {self.root} lacks {len(missing)} class folders of the {split} split "
                               f"(e.g. {missing[:3]}); see {README_DATA}.")
        pairs = [Pair(f"{name}/{jpg.stem}", self.class_ids[name], 1)
                 for name in names for jpg in sorted((self.root / name).glob("*.jpg"))]
        check_sizes([(self.root / f"{p.stem}.jpg", self.root / f"{p.stem}.png") for p in pairs],
                    self.root / f".{split}_sizes_checked", what="mask")
        return pairs

    def load(self, stem: str) -> tuple[np.ndarray, np.ndarray]:
        name = stem.split("/")[0]
        if name not in self.class_ids:
            raise DatasetError(f"{stem!r}: {name!r} is not an FSS-1000 class")
        image = read_rgb(self.root / f"{stem}.jpg")
        mask_path = self.root / f"{stem}.png"
        try:
            with Image.open(mask_path) as im:
                mask = np.asarray(im.convert("L")) > 127
        except FileNotFoundError:
            raise DatasetError(f"mask file not found: {mask_path}") from None
        except (OSError, SyntaxError, ValueError) as e:
            raise DatasetError(f"cannot read mask {mask_path}: {e}") from None
        if mask.shape != image.shape[:2]:
            raise DatasetError(f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} but its image is "
                               f"{image.shape[1]}x{image.shape[0]}")
        return image, np.where(mask, self.class_ids[name], 0).astype(np.int32)
