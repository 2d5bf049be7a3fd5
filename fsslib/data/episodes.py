"""Few-shot episodes: which image pairs with which supports, and the batch every model reads.

An *episode* of an N-way K-shot task is a query image, ``N*K`` support images (``K`` per
class, way-major) and the ``N`` classes to segment. Episodes are drawn from an
:class:`EpisodePool`, the classes of one fold and split with, for each class, the images that
may serve as query and as support:

- training (``split="train"``): the fold's *base* classes; an image qualifies for a class when
  it holds at least ``min_pixels`` of it (PASCAL-5i: 2*32*32). If the source says so, images
  that contain any novel class are dropped entirely; otherwise novel pixels are background.
- testing (``split="val"``): the fold's *novel* classes; any image holding the class can be the
  query, supports need ``min_pixels``.

The support never equals the query, and the ``K`` supports of a class are distinct.

Masks are coded per episode, not per dataset:

=====  ==============  ==================================================================
code   name            meaning
=====  ==============  ==================================================================
1      (``n``)         the episode's class (``n`` = its ``n``-th class in N-way queries)
0                      background: every other class, novel or base, as in PASCAL-5i
255    ``IGNORE``      void: the dataset's ignore label (VOC's object borders, COCO's crowd
                       regions) and pixels a transform invents (rotation corners, padding)
254    ``EXCLUDED``    supports only: neither foreground nor background of this support
=====  ==============  ==================================================================

``EXCLUDED`` marks, in N-way supports, the pixels of the episode's other classes, so that no
background prototype absorbs another target class (PANet, section 3.3); and, in weak supports
(:mod:`fsslib.data.weak`), the pixels a scribble leaves unlabelled. Query masks never hold it.

Void and excluded pixels are kept apart because methods disagree about void. Every method
leaves excluded pixels out of both foreground and background, and SSP, PFENet, MSPF and MSDNet
leave void out too: for them 254 means exactly what 255 means. The authors' code of PANet (Wang
et al., "PANet: Few-Shot Image Semantic Segmentation with Prototype Alignment", ICCV 2019) pools
void into the background prototype and labels it background in its alignment loss; PANet and
ProtoNet (PANet without that loss) follow it by default (their ``background`` option), and
telling void from another way's object is what the two codes are for.

Test episodes are a fixed list from a seed (:func:`sample_episodes`) that can be saved and
reloaded byte for byte (:func:`save_episodes`, :func:`load_episodes`); training episodes are
drawn from ``(seed, index)`` so a resumed run sees the same stream.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .folds import base_classes, fold_classes
from .sources import EXCLUDED, IGNORE, LABEL_IGNORE, DatasetError, SegmentationSource
from .weak import WEAK_ANNOTATIONS, weak_annotation


@dataclass(frozen=True)
class Episode:
    """One N-way K-shot episode, by image stems (way-major supports: ``supports[n*K + k]``)."""

    query: str
    supports: tuple[str, ...]
    classes: tuple[int, ...]

    @property
    def way(self) -> int:
        return len(self.classes)

    @property
    def shot(self) -> int:
        return len(self.supports) // len(self.classes)


class EpisodePool:
    """Classes and, per class, the images eligible as query and as support."""

    def __init__(self, source: SegmentationSource, split: str, classes: Sequence[int],
                 min_query_pixels: int = 1, exclude_images_with: Sequence[int] = ()):
        source.check_split(split)
        self.source, self.split, self.classes = source, split, [int(c) for c in classes]
        pairs = source.index(split)
        excluded = {p.stem for p in pairs if p.class_id in set(exclude_images_with)}
        wanted = set(self.classes)
        self.queries: dict[int, list[str]] = {c: [] for c in self.classes}
        self.supports: dict[int, list[str]] = {c: [] for c in self.classes}
        for p in pairs:
            if p.class_id not in wanted or p.stem in excluded:
                continue
            if p.pixels >= min_query_pixels:
                self.queries[p.class_id].append(p.stem)
            if p.pixels >= source.min_pixels:
                self.supports[p.class_id].append(p.stem)
        empty = [c for c in self.classes if not self.queries[c]]
        if empty:
            raise DatasetError(f"{source.benchmark} {split}: no image qualifies for classes {empty}")

    @classmethod
    def for_fold(cls, source: SegmentationSource, fold: int, split: str,
                 convention: str | None = None) -> "EpisodePool":
        """The pool of ``fold``: base classes for ``split="train"``, novel classes otherwise."""
        novel = fold_classes(source.benchmark, fold, convention)
        if split == "train":
            exclude = () if source.novel_in_train_images else novel
            return cls(source, split, base_classes(source.benchmark, fold, convention),
                       min_query_pixels=source.min_pixels, exclude_images_with=exclude)
        return cls(source, split, novel, min_query_pixels=1)

    def sample(self, rng: np.random.Generator, shot: int = 1, way: int = 1) -> Episode:
        """Draw one episode: the query's class uniformly, then the query, then the supports."""
        if not 1 <= way <= len(self.classes):
            raise ValueError(f"way must be in 1..{len(self.classes)} for this pool, got {way}")
        if shot < 1:
            raise ValueError(f"shot must be >= 1, got {shot}")
        first = self.classes[rng.integers(len(self.classes))]
        query = self.queries[first][rng.integers(len(self.queries[first]))]
        others = [c for c in self.classes if c != first]
        classes = [first] + [others[i] for i in rng.choice(len(others), size=way - 1, replace=False)]
        classes = [classes[i] for i in rng.permutation(way)]  # the query's class is not always way 0
        supports: list[str] = []
        for c in classes:
            candidates = [s for s in self.supports[c] if s != query]
            if len(candidates) < shot:
                raise DatasetError(
                    f"{self.source.benchmark} {self.split}: class {c} has {len(candidates)} support images "
                    f"besides the query, {shot} needed for {shot}-shot")
            # A prefix of a permutation: the random numbers drawn do not depend on ``shot``, so
            # the K-shot episode extends the 1-shot one (same query, same first support).
            supports += [candidates[i] for i in rng.permutation(len(candidates))[:shot]]
        return Episode(query, tuple(supports), tuple(int(c) for c in classes))


def sample_episodes(pool: EpisodePool, n: int, shot: int = 1, way: int = 1, seed: int = 0) -> list[Episode]:
    """A fixed, seeded list of test episodes: the same seed gives the same list on every machine.

    Lists of one seed are paired across shots: the K-shot list has the 1-shot list's queries, and
    each 1-shot support is the first of the K-shot supports (``first_shots``), so "K-shot minus
    1-shot" is a difference on identical episodes.
    """
    rng = np.random.default_rng(seed)
    return [pool.sample(rng, shot, way) for _ in range(n)]


def first_shots(episode: Episode, shot: int) -> Episode:
    """``episode`` with only the first ``shot`` supports of each way."""
    if not 1 <= shot <= episode.shot:
        raise ValueError(f"shot must be in 1..{episode.shot} for this episode, got {shot}")
    k = episode.shot
    supports = tuple(s for n in range(episode.way) for s in episode.supports[n * k:n * k + shot])
    return Episode(episode.query, supports, episode.classes)


def oracle_episode(episode: Episode) -> Episode:
    """The query as its own support (its ground-truth mask the support mask): the ceiling of
    prototype matching at the features' resolution, whatever the supports could show."""
    if episode.way != 1:
        raise ValueError(f"the oracle support is defined for 1-way episodes, got {episode.way}-way")
    return Episode(episode.query, (episode.query,) * episode.shot, episode.classes)


def episodes_to_json(episodes: Sequence[Episode]) -> str:
    rows = [{"query": e.query, "supports": list(e.supports), "classes": list(e.classes)} for e in episodes]
    return json.dumps(rows, separators=(",", ":"))


def save_episodes(path: str | os.PathLike, episodes: Sequence[Episode]) -> None:
    Path(path).write_text(episodes_to_json(episodes) + "\n")


def load_episodes(path: str | os.PathLike) -> list[Episode]:
    path = Path(path)
    try:
        rows = json.loads(path.read_text())
        return [Episode(r["query"], tuple(r["supports"]), tuple(int(c) for c in r["classes"])) for r in rows]
    except FileNotFoundError:
        raise DatasetError(f"episode list not found: {path}") from None
    except (ValueError, KeyError, TypeError) as e:
        raise DatasetError(f"{path} is not an episode list saved by save_episodes ({e})") from None


def episode_mask(label: torch.Tensor, classes: Sequence[int], exclude: Sequence[int] = ()) -> torch.Tensor:
    """Code a label map (dataset ids) for one episode: ``n+1`` for ``classes[n]``, 0 background,
    ``IGNORE`` (255) for the label's void (``LABEL_IGNORE``) pixels and ``EXCLUDED`` (254) for
    pixels of the ``exclude`` classes (N-way supports: the episode's other classes).
    """
    mask = torch.zeros_like(label, dtype=torch.long)
    for n, c in enumerate(classes):
        mask[label == c] = n + 1
    for c in exclude:
        mask[label == c] = EXCLUDED
    mask[label == LABEL_IGNORE] = IGNORE
    return mask


def check_support_mask(mask: torch.Tensor, original: np.ndarray | torch.Tensor, stem: str, class_id: int) -> None:
    """Reject a coded support ``mask`` without a pixel of its class (code 1): its prototype would
    average nothing, silently (ProtoNet then predicts background everywhere).

    ``original`` is the support's label as loaded (dataset ids): it tells a label that lacks the
    class from an object lost in the resize to the network input (nearest neighbour drops rows and
    columns, so an object a few pixels thin can vanish). An object that only a random augmentation
    moved out of the frame passes: that is a rare draw of the training stream, not bad data, and
    raising would stop a run at a random step.
    """
    if bool((mask == 1).any()):
        return
    present = torch.as_tensor(np.asarray(original) == class_id)
    if not bool(present.any()):
        raise DatasetError(f"support image {stem!r} has no pixel of class {class_id} in its label (all background "
                           "or ignore); fix the label, or remove the image from the split list (and delete the "
                           "dataset's index if it is stale)")
    size = tuple(mask.shape[-2:])
    if bool(F.interpolate(present[None, None].float(), size=size, mode="nearest").any()):
        return  # the plain resize keeps it: the augmentation cropped it out
    raise DatasetError(f"support image {stem!r} has {int(present.sum())} pixels of class {class_id}, but none left "
                       f"once its label is resized to the network input ({size[1]}x{size[0]}): the object is too "
                       "small or thin at that size; use a larger image_size or raise the source's min_pixels")


class EpisodeDataset(Dataset):
    """Episodes as training/evaluation samples in the data contract of DESIGN.md.

    Either a fixed list (``episodes``) or ``length`` episodes drawn from ``(seed, index)``.
    ``transform(image, label)`` is a paired transform from :mod:`fsslib.data.transforms`; it is
    seeded per episode, so item ``i`` is identical whatever the worker or the order of access.
    ``support_annotation`` replaces dense support masks by ``"scribble"`` or ``"box"`` ones.
    """

    def __init__(self, pool: EpisodePool, transform: Callable, shot: int = 1, way: int = 1,
                 episodes: Sequence[Episode] | None = None, length: int = 1000, seed: int = 0,
                 support_annotation: str = "dense"):
        if support_annotation not in WEAK_ANNOTATIONS:
            raise ValueError(f"support_annotation must be one of {WEAK_ANNOTATIONS}, got {support_annotation!r}")
        self.pool, self.transform = pool, transform
        self.shot, self.way, self.seed = shot, way, seed
        self.episodes = list(episodes) if episodes is not None else None
        self.length = len(self.episodes) if self.episodes is not None else length
        self.support_annotation = support_annotation

    def __len__(self) -> int:
        return self.length

    def episode(self, index: int) -> Episode:
        if self.episodes is not None:
            return self.episodes[index]
        return self.pool.sample(np.random.default_rng([self.seed, index]), self.shot, self.way)

    def __getitem__(self, index: int) -> dict:
        episode = self.episode(index)
        source = self.pool.source
        generator_seed = int(np.random.default_rng([self.seed, index, 1]).integers(2**62))
        with torch.random.fork_rng(devices=[]):  # transforms draw from torch's global RNG
            torch.manual_seed(generator_seed)
            image, label = source.load(episode.query)
            query_img, query_label = self.transform(image, label)
            support_imgs, support_masks = [], []
            for n, stem in enumerate(episode.supports):
                support_image, support_label = source.load(stem)
                img, lab = self.transform(support_image, support_label)
                target = episode.classes[n // episode.shot]
                others = [c for c in episode.classes if c != target]
                support_imgs.append(img)
                support_masks.append(episode_mask(lab, [target], exclude=others))
                check_support_mask(support_masks[-1], support_label, stem, target)
        if self.support_annotation != "dense":
            rng = np.random.default_rng([self.seed, index, 2])
            support_masks = [weak_annotation(m, self.support_annotation, rng) for m in support_masks]
        classes = torch.tensor(episode.classes, dtype=torch.long)
        return {
            "support_imgs": torch.stack(support_imgs),
            "support_masks": torch.stack(support_masks),
            "query_img": query_img,
            "query_mask": episode_mask(query_label, episode.classes),
            "query_mask_orig": episode_mask(torch.from_numpy(label), episode.classes),
            "class_id": classes[0] if episode.way == 1 else classes,
            "support_classes": classes,
            "query_name": episode.query,
            "support_names": list(episode.supports),
        }


def collate_episodes(items: list[dict]) -> dict:
    """Stack episodes into a batch; original-resolution labels and names stay lists."""
    batch = {}
    for key in items[0]:
        values = [item[key] for item in items]
        if isinstance(values[0], dict):  # cached features: {stage: tensor}
            batch[key] = {stage: torch.stack([v[stage] for v in values]) for stage in values[0]}
        elif isinstance(values[0], torch.Tensor) and key != "query_mask_orig":
            batch[key] = torch.stack(values)
        else:
            batch[key] = values
    return batch
