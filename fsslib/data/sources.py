"""Image sources: where images and label maps come from, and which classes each image holds.

A *source* knows one dataset's files. It exposes

- ``index(split)``: every (image, class, pixel count) triple of a split, one per class present;
- ``load(stem)``: the RGB image ``uint8 [H, W, 3]`` and its label map ``int32 [H, W]`` in the
  dataset's own class ids: 0 background, 1..C classes, ``LABEL_IGNORE = -1`` ignore. (VOC files
  store ignore as 255; it is moved to -1 on loading because FSS-1000 has a class 255.)

Everything about folds and episodes is built on these two calls (see ``episodes.py``), so the
PASCAL-5i, COCO-20i, FSS-1000 and synthetic benchmarks share one episode sampler.

Errors about files are :class:`DatasetError` and always name the file or folder and what was
expected there; they never surface as a bare traceback from PIL or numpy.
"""
from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

IGNORE = 255  # "ignore" (void) in episode masks and in VOC-style label files
# Support masks only: a pixel that is neither foreground nor background of this support (another
# class of the episode, or a pixel a weak annotation leaves unlabelled); see episodes.py.
EXCLUDED = 254
LABEL_IGNORE = -1  # "ignore" in label maps returned by load()
README_DATA = "README.md, section 'Datasets'"


class DatasetError(RuntimeError):
    """A dataset root, list or file is missing, corrupt or inconsistent."""


@dataclass(frozen=True)
class Pair:
    """One (image, class) occurrence: ``pixels`` of class ``class_id`` in image ``stem``."""

    stem: str
    class_id: int
    pixels: int


def data_root(root: str | os.PathLike | None = None) -> Path:
    """Data root: the argument, else ``$FSSLIB_DATA``, else the repository's ``data/``.

    Never the working directory: a notebook runs in ``notebooks/`` and must find the same data.
    """
    if root is None:
        root = os.environ.get("FSSLIB_DATA") or Path(__file__).resolve().parents[2] / "data"
    return Path(root).expanduser().resolve()


def read_rgb(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))
    except FileNotFoundError:
        raise DatasetError(f"image file not found: {path}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"cannot read image {path}: {e} (corrupt or not an image?)") from None


def read_label(path: Path) -> np.ndarray:
    """Read a label PNG without any colour conversion (palette indices are the class ids)."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L", "I", "I;16"):
                raise DatasetError(
                    f"label map {path} has mode {im.mode!r}; expected a single-channel PNG "
                    "(palette 'P' or greyscale 'L') whose values are class ids"
                )
            return np.array(im)
    except FileNotFoundError:
        raise DatasetError(f"label file not found: {path}") from None
    except DatasetError:
        raise
    except (OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"cannot read label map {path}: {e} (corrupt or not a PNG?)") from None


def check_label(label: np.ndarray, num_classes: int, path: Path, image_shape: tuple[int, ...]) -> np.ndarray:
    """Reject labels whose size differs from the image or whose ids are out of range (never remap).

    Returns ``int32`` with the file's 255 (ignore) moved to ``LABEL_IGNORE``.
    """
    if label.shape != tuple(image_shape[:2]):
        raise DatasetError(
            f"label map {path} is {label.shape[1]}x{label.shape[0]} but its image is "
            f"{image_shape[1]}x{image_shape[0]} (width x height); they must match"
        )
    values = np.unique(label)
    bad = values[(values > num_classes) & (values != IGNORE)]
    if bad.size:
        raise DatasetError(
            f"label map {path} holds class ids {bad.tolist()[:10]} outside 0..{num_classes} and {IGNORE} (ignore)"
        )
    label = label.astype(np.int32)
    label[label == IGNORE] = LABEL_IGNORE
    return label


def header_size(path: Path, what: str = "image") -> tuple[int, int]:
    """``(width, height)`` of an image file from its header (PIL decodes no pixel on ``open``)."""
    try:
        with Image.open(path) as im:
            return im.size
    except FileNotFoundError:
        raise DatasetError(f"{what} file not found: {path}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"cannot read {what} {path}: {e} (corrupt or not an image?)") from None


def check_sizes(pairs: Sequence[tuple[Path, Path | tuple[int, int]]], marker: Path, what: str = "label map") -> None:
    """Raise :class:`DatasetError` for the first ``(image, label)`` pair whose sizes differ, naming
    the label, its image and both sizes; a label may also be a ``(width, height)`` it must match.

    Run when a dataset is indexed, so that a bad file fails at once rather than when an episode
    first draws it. Only file headers are read, and only once per file list: ``marker`` records the
    list's digest (when the dataset folder is writable), so later calls cost nothing.
    """
    from tqdm.auto import tqdm

    digest = hashlib.sha1("\n".join(f"{a}\t{b}" for a, b in pairs).encode()).hexdigest()
    try:
        if marker.read_text().strip() == digest:
            return
    except OSError:
        pass
    for image, label in tqdm(pairs, desc="checking image and label sizes", leave=False, disable=None):
        image_size = header_size(image)
        label_size = label if isinstance(label, tuple) else header_size(label, what)
        if label_size == image_size:
            continue
        (w, h), (label_w, label_h) = image_size, label_size
        if isinstance(label, tuple):
            raise DatasetError(f"image {image} is {w}x{h} but its annotation says {label_w}x{label_h} (width x height)")
        raise DatasetError(f"{what} {label} is {label_w}x{label_h} but its image {image} is {w}x{h} "
                           "(width x height); they must match")
    try:
        tmp = marker.with_name(f"{marker.name}.{os.getpid()}.tmp")
        marker.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(digest + "\n")
        os.replace(tmp, marker)
    except OSError:
        pass  # a read-only dataset folder: checked again next time


def index_from_label(stem: str, label: np.ndarray) -> list[Pair]:
    ids, counts = np.unique(label, return_counts=True)
    return [Pair(stem, int(c), int(n)) for c, n in zip(ids, counts) if c not in (0, IGNORE, LABEL_IGNORE)]


def write_index(path: Path, pairs: list[Pair]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        f.write("stem\tclass\tpixels\n")
        for p in pairs:
            f.write(f"{p.stem}\t{p.class_id}\t{p.pixels}\n")
    os.replace(tmp, path)  # atomic: an interrupted write never leaves a truncated index


def read_index(path: Path) -> list[Pair]:
    pairs = []
    with open(path) as f:
        header = f.readline().rstrip("\n")
        if header != "stem\tclass\tpixels":
            raise DatasetError(f"index file {path} has header {header!r}; expected 'stem<TAB>class<TAB>pixels'")
        for lineno, line in enumerate(f, start=2):
            try:
                stem, cls, pixels = line.rstrip("\n").split("\t")
                pairs.append(Pair(stem, int(cls), int(pixels)))
            except ValueError:
                raise DatasetError(f"index file {path}, line {lineno}: expected 'stem<TAB>class<TAB>pixels', "
                                   f"got {line!r}") from None
    return pairs


class SegmentationSource(ABC):
    """A labelled image collection with a per-split (image, class, pixels) index."""

    benchmark: str
    num_classes: int
    splits: tuple[str, ...] = ("train", "val")
    #: Support images (and training queries) need at least this many pixels of their class.
    min_pixels: int = 2 * 32 * 32
    #: Whether a fold's training images may contain its novel classes (as background).
    novel_in_train_images: bool = True

    @abstractmethod
    def index(self, split: str) -> list[Pair]:
        """All (image, class, pixels) triples of ``split``, one per class present in an image."""

    @abstractmethod
    def load(self, stem: str) -> tuple[np.ndarray, np.ndarray]:
        """``(image uint8 [H, W, 3], label int32 [H, W])``: dataset class ids, ``LABEL_IGNORE`` = ignore."""

    def check_split(self, split: str) -> None:
        if split not in self.splits:
            raise ValueError(f"split must be one of {self.splits} for {self.benchmark}, got {split!r}")


class VOCLayoutSource(SegmentationSource):
    """PASCAL VOC on-disk layout: ``JPEGImages/``, ``SegmentationClassAug/`` and split lists.

    Expected tree under ``root``::

        JPEGImages/<stem>.jpg
        SegmentationClassAug/<stem>.png        # palette PNG: 0 bg, 1..20 classes, 255 border
        ImageSets/Segmentation/train_aug.txt   # SBD + VOC train stems, VOC val removed
        ImageSets/Segmentation/val.txt         # VOC2012 val stems (test queries)

    The per-split index ``ImageSets/FewShot/<split>_index.tsv`` (image, class, pixels) is built
    on first use by reading every label once, and reused afterwards; before it, every label's size
    is checked against its image's (file headers, once per split list). The synthetic benchmark is
    written in this same layout, so both are read by this one class.
    """

    SPLIT_LISTS = {"train": "train_aug.txt", "val": "val.txt"}

    def __init__(self, root: str | os.PathLike, benchmark: str = "pascal5i", num_classes: int = 20,
                 image_ext: str = ".jpg", min_pixels: int = 2 * 32 * 32, novel_in_train_images: bool = True):
        self.root = Path(root)
        self.benchmark = benchmark
        self.num_classes = num_classes
        self.image_ext = image_ext
        self.min_pixels = min_pixels
        self.novel_in_train_images = novel_in_train_images
        self._index: dict[str, list[Pair]] = {}
        self._check_layout()

    def _check_layout(self) -> None:
        expected = ["JPEGImages/", "SegmentationClassAug/"] + [
            f"ImageSets/Segmentation/{name}" for name in self.SPLIT_LISTS.values()]
        missing = [e for e in expected if not (self.root / e.rstrip("/")).exists()]
        if missing:
            what = "does not exist" if not self.root.exists() else f"lacks {', '.join(missing)}"
            raise DatasetError(
                f"{self.benchmark} root {self.root} {what}. Expected {', '.join(expected)} under it "
                f"(VOC2012 with the SBD-augmented labels 'SegmentationClassAug'); see {README_DATA}."
            )

    def image_path(self, stem: str) -> Path:
        return self.root / "JPEGImages" / f"{stem}{self.image_ext}"

    def label_path(self, stem: str) -> Path:
        return self.root / "SegmentationClassAug" / f"{stem}.png"

    def stems(self, split: str) -> list[str]:
        self.check_split(split)
        path = self.root / "ImageSets" / "Segmentation" / self.SPLIT_LISTS[split]
        with open(path) as f:
            first = [line.split()[0] for line in f if line.strip()]
        # Plain stems ('2007_000032') or the SBD-aug lists' '/JPEGImages/2007_000032.jpg /SegmentationClassAug/...'
        return [Path(t).stem if "/" in t else t for t in first]

    def index_path(self, split: str) -> Path:
        return self.root / "ImageSets" / "FewShot" / f"{split}_index.tsv"

    def index(self, split: str) -> list[Pair]:
        self.check_split(split)
        if split not in self._index:
            # Before the index is built: no index is written from labels that do not fit their images.
            check_sizes([(self.image_path(s), self.label_path(s)) for s in self.stems(split)],
                        self.index_path(split).with_name(f"{split}_sizes_checked"))
            path = self.index_path(split)
            if not path.exists():
                self._build_index(split, path)
            self._index[split] = read_index(path)
        return self._index[split]

    def _build_index(self, split: str, path: Path) -> None:
        from tqdm.auto import tqdm

        pairs = []
        for stem in tqdm(self.stems(split), desc=f"indexing {self.benchmark} {split} labels", leave=False):
            label_path = self.label_path(stem)
            label = read_label(label_path)
            pairs += index_from_label(stem, check_label(label, self.num_classes, label_path, label.shape))
        try:
            write_index(path, pairs)
        except OSError as e:
            raise DatasetError(f"cannot write the index {path} ({e}); make the dataset root writable once") from None

    def load(self, stem: str) -> tuple[np.ndarray, np.ndarray]:
        image = read_rgb(self.image_path(stem))
        label_path = self.label_path(stem)
        return image, check_label(read_label(label_path), self.num_classes, label_path, image.shape)
