"""COCO-20i from the official COCO 2014 annotation files (pycocotools).

Expected tree under ``root``::

    annotations/instances_train2014.json
    annotations/instances_val2014.json
    train2014/<file_name>.jpg
    val2014/<file_name>.jpg

Class index = position 1..80 of the category in ascending COCO category id (so class 1 is
``person``, id 1, and class 80 is ``toothbrush``, id 90). Label maps are rasterised from the
instance polygons/RLEs on loading; crowd regions are ignore (-1), so a crowd of the target class
is neither foreground nor background. Pixel counts in the index are the summed instance areas
from the JSON (no rasterisation needed to build folds).
"""
from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from .sources import LABEL_IGNORE, README_DATA, DatasetError, Pair, SegmentationSource, check_sizes, read_rgb

ANNOTATION_FILES = {"train": "annotations/instances_train2014.json", "val": "annotations/instances_val2014.json"}
IMAGE_DIRS = {"train": "train2014", "val": "val2014"}


class COCOSource(SegmentationSource):
    benchmark = "coco20i"
    num_classes = 80

    def __init__(self, root: str | os.PathLike, min_pixels: int = 2 * 32 * 32):
        self.root = Path(root)
        self.min_pixels = min_pixels
        expected = list(ANNOTATION_FILES.values()) + [d + "/" for d in IMAGE_DIRS.values()]
        missing = [e for e in expected if not (self.root / e.rstrip("/")).exists()]
        if missing:
            what = "does not exist" if not self.root.exists() else f"lacks {', '.join(missing)}"
            raise DatasetError(f"coco20i root {self.root} {what}. Expected {', '.join(expected)} "
                               f"(COCO 2014 images and instance annotations); see {README_DATA}.")
        self._coco: dict = {}
        self._stems: dict[str, tuple[str, int]] = {}  # stem -> (split, image id)

    def api(self, split: str):
        """The pycocotools ``COCO`` object of ``split``, loaded on first use."""
        self.check_split(split)
        if split not in self._coco:
            from pycocotools.coco import COCO

            path = self.root / ANNOTATION_FILES[split]
            try:
                coco = COCO(str(path))
            except (ValueError, KeyError, OSError) as e:
                raise DatasetError(f"cannot read COCO annotations {path}: {e}") from None
            self.category_to_class = {cat: i + 1 for i, cat in enumerate(sorted(coco.getCatIds()))}
            if len(self.category_to_class) != self.num_classes:
                raise DatasetError(f"{path} defines {len(self.category_to_class)} categories; COCO-20i needs 80")
            unknown = sorted({a["category_id"] for a in coco.anns.values()} - set(self.category_to_class))
            if unknown:  # rejected here, not remapped or a KeyError in index()
                raise DatasetError(f"{path} has annotations of category ids {unknown[:10]} that its "
                                   "'categories' list does not define")
            for image_id, info in coco.imgs.items():
                self._stems[Path(info["file_name"]).stem] = (split, image_id)
            self._coco[split] = coco
        return self._coco[split]

    def index(self, split: str) -> list[Pair]:
        coco = self.api(split)
        pairs = []
        for image_id, info in coco.imgs.items():
            area: dict[int, float] = defaultdict(float)
            for ann in coco.imgToAnns.get(image_id, []):
                if not ann.get("iscrowd", 0):
                    area[self.category_to_class[ann["category_id"]]] += ann["area"]
            stem = Path(info["file_name"]).stem
            pairs += [Pair(stem, c, int(a)) for c, a in sorted(area.items())]
        # Label maps are drawn at the annotation's size: each image must have it.
        check_sizes([(self.root / IMAGE_DIRS[split] / info["file_name"], (info["width"], info["height"]))
                     for info in coco.imgs.values()], self.root / "annotations" / f".{split}_sizes_checked")
        return pairs

    def load(self, stem: str) -> tuple[np.ndarray, np.ndarray]:
        if stem not in self._stems:
            for split in self.splits:
                self.api(split)
        if stem not in self._stems:
            raise DatasetError(f"image {stem!r} is in neither COCO annotation file under {self.root}")
        split, image_id = self._stems[stem]
        coco = self._coco[split]
        info = coco.imgs[image_id]
        path = self.root / IMAGE_DIRS[split] / info["file_name"]
        image = read_rgb(path)
        if image.shape[:2] != (info["height"], info["width"]):
            raise DatasetError(f"image {path} is {image.shape[1]}x{image.shape[0]} but its annotation says "
                               f"{info['width']}x{info['height']}")
        label = np.zeros(image.shape[:2], dtype=np.int32)
        anns = sorted(coco.imgToAnns.get(image_id, []), key=lambda a: -a["area"])  # small objects on top
        for ann in anns:
            if ann["category_id"] not in self.category_to_class:
                raise DatasetError(f"annotation {ann.get('id')} of {path} has unknown category {ann['category_id']}")
            region = coco.annToMask(ann).astype(bool)
            label[region] = LABEL_IGNORE if ann.get("iscrowd", 0) else self.category_to_class[ann["category_id"]]
        return image, label
