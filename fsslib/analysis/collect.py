"""Prototypes collected over many episodes: what a method matches, and what it should match.

For each 1-way episode of a fold, with the model's own features at its matching stage:

========================  =====================================================================
``role``                  foreground (``region="fg"``) and background (``"bg"``) prototype
========================  =====================================================================
``"support"``             the supports' masked average pooling, mean over the K shots: what
                          the method matches the query with
``"query_gt"``            the query pooled with its ground truth: the prototype a perfect
                          support would give ("the query's own prototype")
``"query_pred"``          the query pooled with the model's prediction (``predictions=True``)
``"self_support"``        SSP only: the self-support prototypes ``SSFP`` / ``SSBP`` of the first
                          self-support round (``output["ssfp"]``, ``output["ssbp"]``)
========================  =====================================================================

Pooling follows the model: ``model.config.pooling`` when it has one (PANet and ProtoNet
upsample the features to the mask), else the mask resized to the features (SSP, PFENet), with
the model's ``eps``; so does the background, ``model.config.background`` when it has one (PANet
and ProtoNet count void as background by default), else the pixels coded 0. Masks are at the
network input size, where the prediction is made.

Episodes come from the fold's novel classes (``classes="novel"``, the test episodes) or from its
base classes (``"base"``), both drawn from the *validation* images: the two sets differ only in
whether the model saw the class in training, not in whether it saw the image.

PANet's prototype alignment analysis (section 5 of the paper) is the distance between the
support prototype and the query's own prototype, averaged over episodes: 32.2 with PAR vs 42.6
without (Euclidean, PASCAL-5i split 1, 5-shot, VGG-16). :func:`prototype_distances` measures it
on collected prototypes; :func:`support_query_distances` collects and measures in one call.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ..data import EpisodePool, base_classes, sample_episodes
from ..data.episodes import episode_mask
from ..engine.feature_cache import FeatureCache
from ..engine.protocol import EvalProtocol
from ..models.ops import background_mask, foreground_mask, hard_labels, masked_average_pooling
from ..runtime import default_device

__all__ = ["ROLES", "PrototypeSet", "collect_prototypes", "episode_pool", "matching_stage", "prototype_distances",
           "support_query_distances"]

#: The kinds of prototype an episode contributes (see the module docstring).
ROLES = ("support", "query_gt", "query_pred", "self_support")
#: Metadata of every prototype.
META_COLUMNS = ["label", "episode", "class", "classes", "role", "region", "area"]


@dataclass
class PrototypeSet:
    """Prototype vectors with one metadata row each.

    Attributes:
        vectors: float32 ``[N, C]``.
        meta: ``N`` rows: ``label`` (the model or checkpoint), ``episode`` (index in the episode
            list), ``class`` (dataset class id), ``classes`` (``"novel"`` or ``"base"``),
            ``role`` (:data:`ROLES`), ``region`` (``"fg"`` / ``"bg"``) and ``area``: the pixels
            pooled (mask pixels at the network input size; selected feature cells for
            ``self_support``; summed over the shots for ``support``).
    """

    vectors: np.ndarray
    meta: pd.DataFrame

    def __post_init__(self):
        if len(self.vectors) != len(self.meta):
            raise ValueError(f"{len(self.vectors)} vectors but {len(self.meta)} metadata rows")

    def __len__(self) -> int:
        return len(self.meta)

    def select(self, **where) -> "PrototypeSet":
        """The prototypes whose metadata match: ``select(role=("support", "query_gt"), region="fg")``.

        A value may be a single value or a tuple/list of accepted values.
        """
        keep = np.ones(len(self), dtype=bool)
        for column, value in where.items():
            if column not in self.meta:
                raise KeyError(f"no metadata column {column!r}; columns are {list(self.meta.columns)}")
            values = value if isinstance(value, (tuple, list, set)) else (value,)
            keep &= self.meta[column].isin(values).to_numpy()
        return PrototypeSet(self.vectors[keep], self.meta[keep].reset_index(drop=True))

    @staticmethod
    def concat(sets: Sequence["PrototypeSet"]) -> "PrototypeSet":
        """One set from several (e.g. novel and base classes, or several models of one feature space)."""
        return PrototypeSet(np.concatenate([s.vectors for s in sets]),
                            pd.concat([s.meta for s in sets], ignore_index=True))


def matching_stage(model: nn.Module) -> str:
    """The backbone stage whose features a method pools into prototypes."""
    stage = getattr(getattr(model, "config", None), "feature_stage", None)
    if stage is not None:
        return stage
    if len(model.feature_stages) == 1:
        return model.feature_stages[0]
    raise ValueError(f"{type(model).__name__} reads several stages {model.feature_stages} and has no "
                     "config.feature_stage; say which one to pool")


def episode_pool(source, fold: int, classes: str = "novel", convention: str | None = None) -> EpisodePool:
    """Episodes of the fold's novel or base classes, on the validation images (see the module docstring)."""
    if classes == "novel":
        return EpisodePool.for_fold(source, fold, "val", convention)
    if classes == "base":
        return EpisodePool(source, "val", base_classes(source.benchmark, fold, convention), min_query_pixels=1)
    raise ValueError(f"classes must be 'novel' or 'base', got {classes!r}")


@torch.inference_mode()
def collect_prototypes(model: nn.Module, source, fold: int, episodes: int = 200, shot: int = 1,
                       classes: str = "novel", seed: int = 0, label: str | None = None, predictions: bool = True,
                       drop_empty: bool = True, convention: str | None = None, image_size: int | None = None,
                       batch_size: int = 32, device=None) -> PrototypeSet:
    """Support, query and (SSP) self-support prototypes of ``episodes`` seeded 1-way episodes.

    Args:
        model: a :class:`~fsslib.models.base.FewShotSegmenter`; put in eval mode.
        source: the dataset (``build_source(...)``).
        fold: the fold; ``classes`` picks its ``"novel"`` or ``"base"`` classes.
        episodes, shot, seed: the episode list (``sample_episodes(pool, episodes, shot, seed=seed)``,
            so ``classes="novel"`` gives the evaluation protocol's episodes of that seed).
        label: written to the ``label`` column (default: the model's class name).
        predictions: also run the head, for ``query_pred`` and ``self_support`` prototypes.
        drop_empty: leave out prototypes of empty masks (a prediction with no foreground, say):
            they are zero vectors, not prototypes. With ``False`` every episode has every role.
        image_size: network input size (default: the benchmark's, as in evaluation).
        batch_size: episodes per head call.

    Returns:
        a :class:`PrototypeSet`, rows ordered by episode.
    """
    device = default_device(device)
    model = model.to(device).eval()
    pool = episode_pool(source, fold, classes, convention)
    episode_list = sample_episodes(pool, episodes, shot, seed=seed)
    size = image_size or EvalProtocol().size(source.benchmark)
    cache = FeatureCache(model, source, {s for e in episode_list for s in (e.query, *e.supports)}, size, device)
    stage = matching_stage(model)
    pooling = getattr(model.config, "pooling", "resize_mask")
    eps = getattr(model.config, "eps", 1e-5)
    rule = getattr(model.config, "background", "labelled")
    label = label or type(model).__name__

    def background(mask: torch.Tensor) -> torch.Tensor:
        return background_mask(mask, rule)

    vectors, rows = [], []

    def add(start: int, role: str, region: str, protos: torch.Tensor, areas: torch.Tensor) -> None:
        for i, (vector, area) in enumerate(zip(protos.float().cpu().numpy(), areas.cpu().tolist())):
            if drop_empty and area == 0:
                continue
            vectors.append(vector)
            rows.append({"label": label, "episode": start + i, "class": episode_list[start + i].classes[0],
                         "classes": classes, "role": role, "region": region, "area": int(area)})

    for start in range(0, len(episode_list), batch_size):
        chunk = episode_list[start:start + batch_size]
        query_feats = cache.gather([e.query for e in chunk])
        support_feats = cache.gather([e.supports for e in chunk])
        support_masks = torch.stack([cache.support_masks(e) for e in chunk]).to(device)  # [B, K, H, W]
        query_masks = torch.stack([episode_mask(cache.labels[cache.row[e.query]], e.classes) for e in chunk]).to(device)

        fq, fs = query_feats[stage], support_feats[stage]
        flat_feats, flat_masks = fs.flatten(0, 1), support_masks.flatten(0, 1)
        for region, select in (("fg", foreground_mask), ("bg", background)):
            shots = masked_average_pooling(flat_feats, select(flat_masks), pooling, eps).unflatten(0, fs.shape[:2])
            add(start, "support", region, shots.mean(dim=1), select(support_masks).sum(dim=(1, 2, 3)))
            query_region = select(query_masks)
            add(start, "query_gt", region, masked_average_pooling(fq, query_region, pooling, eps),
                query_region.sum(dim=(1, 2)))
        if not predictions:
            continue
        output = model.head(query_feats, support_feats, support_masks, 1, (size, size))
        predicted = hard_labels(output["logits"])
        for region, select in (("fg", foreground_mask), ("bg", background)):
            pred_region = select(predicted)
            add(start, "query_pred", region, masked_average_pooling(fq, pred_region, pooling, eps),
                pred_region.sum(dim=(1, 2)))
        if "ssfp" in output:
            add(start, "self_support", "fg", output["ssfp"], output["fg_selected"].sum(dim=(1, 2)))
            add(start, "self_support", "bg", output["ssbp"], output["bg_selected"].sum(dim=(1, 2)))

    meta = pd.DataFrame(rows, columns=META_COLUMNS)
    channels = cache.features[stage].shape[1]
    array = np.stack(vectors).astype(np.float32) if vectors else np.zeros((0, channels), np.float32)
    order = np.lexsort((meta["region"].map({"fg": 0, "bg": 1}), meta["role"].map(ROLES.index), meta["episode"]))
    return PrototypeSet(array[order], meta.iloc[order].reset_index(drop=True))


def prototype_distances(prototypes: PrototypeSet, a: tuple[str, str] = ("support", "fg"),
                        b: tuple[str, str] = ("query_gt", "fg")) -> pd.DataFrame:
    """Per episode, the Euclidean and cosine distance between two of its prototypes.

    Args:
        prototypes: from :func:`collect_prototypes` (one label; the episode index identifies a pair).
        a, b: ``(role, region)`` of the two prototypes; by default PANet's support vs query
            foreground prototype.

    Returns:
        one row per episode that has both: ``label``, ``episode``, ``class``, ``classes``,
        ``euclidean`` = ``||p_a - p_b||_2`` and ``cosine_distance`` = ``1 - cos(p_a, p_b)``.
    """
    keys = ["label", "classes", "episode"]
    first, second = prototypes.select(role=a[0], region=a[1]), prototypes.select(role=b[0], region=b[1])
    left = first.meta[keys + ["class"]].assign(_i=np.arange(len(first)))
    pairs = left.merge(second.meta[keys].assign(_j=np.arange(len(second))), on=keys)
    pa = torch.from_numpy(first.vectors[pairs["_i"].to_numpy()])
    pb = torch.from_numpy(second.vectors[pairs["_j"].to_numpy()])
    return pd.DataFrame({
        "label": pairs["label"], "episode": pairs["episode"], "class": pairs["class"], "classes": pairs["classes"],
        "euclidean": (pa - pb).norm(dim=1).numpy(),
        "cosine_distance": (1 - F.cosine_similarity(pa, pb, dim=1)).numpy(),
    })


def support_query_distances(model, source, fold: int, episodes: int = 1000, shot: int = 1, seed: int = 0,
                            device=None) -> pd.DataFrame:
    """One row per novel-class episode: class, Euclidean and cosine distance of the support vs the
    query foreground prototype (the query's pooled from its ground truth, both with the model's
    own features and pooling). PANet: 32.2 with PAR vs 42.6 without (Euclidean)."""
    prototypes = collect_prototypes(model, source, fold, episodes, shot, "novel", seed, predictions=False,
                                    drop_empty=False, device=device)
    return prototype_distances(prototypes)[["class", "euclidean", "cosine_distance"]]
