"""The evaluation protocol: fixed episode lists, one feature pass per image, class-wise IoU rows.

A protocol fixes everything that decides an evaluation's number: episodes per seed, the seeds,
the shots, N-way, the label resolution and the support annotation. Two methods evaluated with
one protocol on one fold answer exactly the same episodes.

In eval mode a model maps an image to the same features in every episode, so each test image
goes through the backbone **once per protocol run** (:class:`~fsslib.engine.feature_cache.FeatureCache`);
episodes are then assembled from cached features and only the method's head runs, in batches.

Results are rows ``(method, fold, shot, seed, class, intersection, union)``; class 0 holds the
background and class -1 the (class-agnostic) foreground counts of FB-IoU.
:func:`fsslib.engine.statistics.summarize` turns rows into mIoU and FB-IoU per seed, then a mean
and a 95% t-interval over seeds. ``evaluate(..., episode_rows=[])`` also
collects one row per 1-way episode (its query, supports, class and foreground counts): summed per
class they give the same IoU, and any subset of episodes, such as a factor's bin, gets its own.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..data import DEFAULT_SIZES, EpisodePool, oracle_episode, sample_episodes
from ..data.episodes import Episode, episode_mask
from ..data.folds import COCO_CONVENTIONS
from ..data.weak import WEAK_ANNOTATIONS, weak_annotation
from ..models.ops import hard_labels, resize_to
from ..runtime import default_device
from .evaluator import Evaluator, episode_counts
from .feature_cache import FeatureCache, backbone_frozen, cache_key
from .trainer import runs_dir

ROW_COLUMNS = ["method", "fold", "shot", "seed", "class", "intersection", "union"]
EPISODE_COLUMNS = ["method", "fold", "shot", "seed", "episode", "query", "supports", "class", "intersection", "union"]


@dataclass(frozen=True)
class EvalProtocol:
    """What an evaluation measures. Defaults: 1000 episodes x seeds 0-4, 1-shot, 1-way."""

    episodes: int = 1000
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    shots: tuple[int, ...] = (1,)
    way: int = 1
    #: "original": logits bilinearly upsampled to each query's untouched label, as SSP, PFENet
    #: and MSDNet score (they feed the image differently: SSP at its own size, PFENet padded);
    #: "resized": compared with the label resized to the network input (HSNet, PANet).
    labels: str = "original"
    #: Network input size; None = the benchmark's default (synthetic 128, PASCAL/COCO 473).
    image_size: int | None = None
    #: COCO-20i fold convention ("interleaved" or "contiguous"); None for other benchmarks.
    convention: str | None = None
    support_annotation: str = "dense"
    #: Episodes per head call.
    batch_size: int = 32
    #: "sampled" (the episode's supports) or "oracle" (the query as its own support, 1-way only).
    supports: str = "sampled"
    #: How K supports become one answer: "model" (the method's own rule, e.g. averaged prototypes)
    #: or "logit_mean" (the mean of the K one-shot logits: a reference row for every method).
    shot_fusion: str = "model"

    def __post_init__(self):
        """Reject a wrong type or value of any field, naming it, before a feature is computed."""
        def count(value, low: int = 1) -> bool:  # a bool is no int
            return isinstance(value, int) and not isinstance(value, bool) and value >= low

        for name in ("episodes", "way", "batch_size"):
            if not count(getattr(self, name)):
                raise ValueError(f"{name} must be an int >= 1, got {getattr(self, name)!r}")
        for name, low, example in (("seeds", 0, "0,1,2"), ("shots", 1, "1,5")):
            values = getattr(self, name)
            if not (isinstance(values, (tuple, list)) and values and all(count(v, low) for v in values)):
                raise ValueError(f"{name} must be ints >= {low} (e.g. {name}={example}), got {values!r}")
        if self.image_size is not None and not count(self.image_size):
            raise ValueError(f"image_size must be an int >= 1 or null, got {self.image_size!r}")
        if self.labels not in ("original", "resized"):
            raise ValueError(f"labels must be 'original' or 'resized', got {self.labels!r}")
        if self.support_annotation not in WEAK_ANNOTATIONS:
            raise ValueError(f"support_annotation must be one of {WEAK_ANNOTATIONS}, got {self.support_annotation!r}")
        if self.convention is not None and self.convention not in COCO_CONVENTIONS:
            raise ValueError(f"convention must be null or one of {COCO_CONVENTIONS}, got {self.convention!r}")
        if self.supports not in ("sampled", "oracle"):
            raise ValueError(f"supports must be 'sampled' or 'oracle', got {self.supports!r}")
        if self.shot_fusion not in ("model", "logit_mean"):
            raise ValueError(f"shot_fusion must be 'model' or 'logit_mean', got {self.shot_fusion!r}")
        if self.supports == "oracle" and self.way != 1:
            raise ValueError(f"supports='oracle' (the query as its own support) needs way=1, got way={self.way}")

    def size(self, benchmark: str) -> int:
        return self.image_size or DEFAULT_SIZES[benchmark]

    def episode_lists(self, pool: EpisodePool, shot: int) -> dict[int, list[Episode]]:
        """``{seed: episodes}`` of ``shot``: the same queries for every shot (``sample_episodes``)."""
        lists = {seed: sample_episodes(pool, self.episodes, shot, self.way, seed) for seed in self.seeds}
        if self.supports == "oracle":
            lists = {seed: [oracle_episode(e) for e in episodes] for seed, episodes in lists.items()}
        return lists


def evaluate(model: nn.Module, source, fold: int, protocol: EvalProtocol = EvalProtocol(), method: str = "model",
             device: str | torch.device | None = None, progress: bool = False,
             pool: EpisodePool | None = None, caches: dict | None = None,
             episode_rows: list[dict] | None = None) -> pd.DataFrame:
    """Evaluate ``model`` on ``fold`` under ``protocol``; returns IoU rows (see module docstring).

    ``caches``: a dict in which feature caches are kept and looked up by
    :func:`~fsslib.engine.feature_cache.cache_key` (backbone weights, stages, size, images), so
    several evaluations of the same weights (the test-time switches of one trained model, its
    weak-annotation rows) run the backbone over the test images once.

    ``episode_rows``: a list to which one row per episode is appended (``EPISODE_COLUMNS``,
    supports joined by spaces); 1-way protocols only.
    """
    if episode_rows is not None and protocol.way != 1:
        raise ValueError(f"episode rows are defined for 1-way protocols, got way={protocol.way}")
    device = default_device(device)
    model = model.to(device).eval()
    pool = pool or EpisodePool.for_fold(source, fold, "val", protocol.convention)
    size = protocol.size(source.benchmark)
    lists = {shot: protocol.episode_lists(pool, shot) for shot in protocol.shots}
    stems = {s for by_seed in lists.values() for eps in by_seed.values() for e in eps for s in (e.query, *e.supports)}
    # A backbone frozen entirely (PFENet, MSPF, MSDNet here) gives every run of every variant the
    # same test features: keep them in the shared store instead of recomputing them per run.
    store = runs_dir() / "feature-cache" if backbone_frozen(model) else None
    key = cache_key(model, sorted(stems), size) if caches is not None and hasattr(model, "backbone") else None
    cache = caches.get(key) if key else None
    if cache is None:
        cache = FeatureCache(model, source, stems, size, device, progress=progress, store=store)
        if key:
            caches[key] = cache

    rows = []
    for shot, by_seed in lists.items():
        for seed, episodes in by_seed.items():
            evaluator = Evaluator(pool.classes)
            rng = np.random.default_rng([seed, shot, 7])  # weak annotations, if any
            counts: list[tuple[int, int]] = []
            for start in range(0, len(episodes), protocol.batch_size):
                counts += _evaluate_batch(model, cache, episodes[start:start + protocol.batch_size], protocol,
                                          evaluator, size, device, rng)
            head = dict(method=method, fold=fold, shot=shot, seed=seed)
            rows += [dict(head, **r) for r in evaluator.rows() + evaluator.fb_rows()]
            if episode_rows is not None:
                episode_rows += [dict(head, episode=i, query=e.query, supports=" ".join(e.supports),
                                      **{"class": e.classes[0]}, intersection=inter, union=union)
                                 for i, (e, (inter, union)) in enumerate(zip(episodes, counts))]
    return pd.DataFrame(rows, columns=ROW_COLUMNS)


@torch.inference_mode()
def _evaluate_batch(model, cache: FeatureCache, episodes: list[Episode], protocol: EvalProtocol,
                    evaluator: Evaluator, size: int, device, rng) -> list[tuple[int, int]]:
    """Score a batch into ``evaluator``; returns each 1-way episode's foreground (intersection, union)."""
    way = episodes[0].way
    query_feats = cache.gather([e.query for e in episodes])
    support_feats = cache.gather([e.supports for e in episodes])
    support_masks = torch.stack([cache.support_masks(e) for e in episodes])
    if protocol.support_annotation != "dense":
        support_masks = torch.stack([torch.stack([weak_annotation(m, protocol.support_annotation, rng) for m in ms])
                                     for ms in support_masks])
    support_masks = support_masks.to(device)
    shot = episodes[0].shot
    if protocol.shot_fusion == "logit_mean" and shot > 1:
        logits = 0
        for k in range(shot):  # the k-th support of every way (supports are way-major)
            chosen = [n * shot + k for n in range(way)]
            one_shot = model.head(query_feats, {name: f[:, chosen] for name, f in support_feats.items()},
                                  support_masks[:, chosen], way, (size, size))
            logits = logits + one_shot["logits"].float() / shot
    else:
        logits = model.head(query_feats, support_feats, support_masks, way, (size, size))["logits"].float()
    class_ids = torch.tensor([e.classes for e in episodes]).squeeze(1) if way == 1 else \
        torch.tensor([e.classes for e in episodes])
    if protocol.labels == "resized":
        targets = [episode_mask(cache.labels[cache.row[e.query]], e.classes) for e in episodes]
    else:
        targets = [episode_mask(cache.original_labels[cache.row[e.query]], e.classes) for e in episodes]
    if all(t.shape == logits.shape[-2:] for t in targets):
        preds, targets = [hard_labels(logits).cpu()], [torch.stack(targets)]
    else:  # original labels differ in size from episode to episode
        preds = [hard_labels(resize_to(logits[i:i + 1], t.shape, "bilinear", align_corners=True)).cpu()
                 for i, t in enumerate(targets)]
        targets = [t[None] for t in targets]
    counts = []
    start = 0
    for pred, target in zip(preds, targets):
        evaluator.update(pred, target, class_ids[start:start + len(pred)])
        start += len(pred)
        if way == 1:
            counts += list(zip(*(c.tolist() for c in episode_counts(pred, target))))
    return counts
