"""``python -m fsslib benchmark-report``: properties the synthetic benchmark itself must have.

They are about the data, not about any method, and are measured with predictors that have no
method in them beyond prototype matching (``docs/benchmark-v3-plan.md``):

1. colour does not identify the class: a prototype of the raw RGB values scores within 10 mIoU
   of labelling everything foreground;
2. headroom: the trained ProtoNet at 1 shot is at least 10 mIoU below the oracle (the query's own
   mask as its support: the ceiling of prototype matching at the features' resolution);
3. more shots help the baseline: ProtoNet's 5-shot minus 1-shot on shot-paired episodes is at
   least +3 mIoU and resolved;
4. every recorded factor moves ProtoNet's 1-shot mIoU by at least 5 points between its worst and
   best bin (``fsslib.data.factors``; the bins' mIoU are over evaluation seeds here).

Intervals are over evaluation seeds of one trained ProtoNet (the default recipe's training seed 0).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ..data import build_source
from ..engine.protocol import EvalProtocol, evaluate
from ..engine.statistics import paired_difference, per_seed, with_interval
from ..models.ops import background_mask, cosine_logits, foreground_mask, masked_average_pooling, resize_to
from .ablation import train_variant
from .baselines import AllForeground
from .factors import factor_breakdown, factor_spread, with_factors
from .profiles import notebook_profile


class RawColourPrototype(nn.Module):
    """ProtoNet on the image itself: normalised RGB averaged over 8 x 8 cells (the stride of the
    methods' features), masked average pooling, cosine x 20. What colour alone can segment."""

    feature_stages = ("rgb",)
    stride = 8

    def extract(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"rgb": F.avg_pool2d(images, self.stride)}

    def head(self, query_feats, support_feats, support_masks, way, out_size):
        if way != 1:
            raise ValueError(f"RawColourPrototype is 1-way, got way={way}")
        supports = support_feats["rgb"].flatten(0, 1)  # [B*K, 3, h, w]
        masks = support_masks.flatten(0, 1)
        shots = support_masks.shape[1]
        prototypes = torch.stack([masked_average_pooling(supports, rule(masks), "upsample_features")
                                  .unflatten(0, (-1, shots)).mean(1)
                                  for rule in (lambda m: background_mask(m, "not_foreground"), foreground_mask)], 1)
        logits = cosine_logits(query_feats["rgb"], prototypes, 20.0)
        return {"logits": resize_to(logits, out_size, "bilinear", align_corners=False)}


@dataclass
class Property:
    name: str
    measured: str
    rule: str
    holds: bool | None  # None: not measurable on this benchmark


def measure(fold: int = 0, episodes: int = 1000, seeds: tuple[int, ...] = (0, 1, 2), progress: bool = True
            ) -> tuple[pd.DataFrame, list[Property]]:
    """Score the reference predictors on shot-paired episodes; returns (per-seed scores, properties)."""
    from .tables.main import PROTONET

    source = build_source("synthetic")
    protocol = EvalProtocol(episodes=episodes, seeds=seeds, shots=(1, 5))
    # The main table's ProtoNet run of `make reproduce` on a CPU (the notebooks' run too).
    protonet = train_variant(PROTONET, fold, 0, progress=progress, recipe_args=notebook_profile().recipe)
    caches: dict = {}
    episode_rows: list[dict] = []
    rows = pd.concat([
        evaluate(AllForeground(), source, fold, replace(protocol, shots=(1,)), method="all-foreground"),
        evaluate(RawColourPrototype(), source, fold, protocol, method="raw-RGB prototype"),
        evaluate(protonet, source, fold, protocol, method="ProtoNet", caches=caches, progress=progress,
                 episode_rows=episode_rows),
        evaluate(protonet, source, fold, replace(protocol, shots=(1,), supports="oracle"), method="oracle",
                 caches=caches),
    ], ignore_index=True)
    scores = per_seed(rows).pivot(index="seed", columns=["method", "shot"], values="miou")

    def gap(a, b):
        paired = paired_difference(scores[a], scores[b])
        return paired.mean, paired.half, with_interval(paired.mean, paired.half, sign=True)

    colour, _, colour_text = gap(("raw-RGB prototype", 1), ("all-foreground", 1))
    headroom, _, headroom_text = gap(("oracle", 1), ("ProtoNet", 1))
    shots, shots_half, shots_text = gap(("ProtoNet", 5), ("ProtoNet", 1))
    # Bins' mIoU with intervals over evaluation seeds (factor_breakdown pairs by "train_seed").
    episodes = with_factors(pd.DataFrame(episode_rows).assign(train_seed=lambda r: r["seed"]), source.factors("val"))
    spread = factor_spread(factor_breakdown(episodes), "ProtoNet", shot=1)
    spread_text = "; ".join(f"{r.factor} {r.gap:.1f} ({r.worst} {r.worst_miou:.1f} / {r.best} {r.best_miou:.1f})"
                            for r in spread.itertuples())
    properties = [
        Property("colour does not identify the class", f"raw-RGB prototype minus all-foreground {colour_text}",
                 "<= +10", colour <= 10),
        Property("headroom", f"oracle minus ProtoNet 1-shot {headroom_text}", ">= +10", headroom >= 10),
        Property("more shots help the baseline", f"ProtoNet 5-shot minus 1-shot (paired) {shots_text}",
                 ">= +3, resolved", shots >= 3 and shots - shots_half > 0),
        Property("every factor matters", f"ProtoNet 1-shot, best minus worst bin: {spread_text}",
                 ">= 5 points for every factor", bool((spread["gap"] >= 5).all())),
    ]
    return scores, properties


def format_report(scores: pd.DataFrame, properties: list[Property]) -> str:
    means = scores.mean().round(1)
    lines = ["mIoU, mean over evaluation seeds (shot-paired episodes):"]
    lines += [f"  {method:20s} {shot}-shot {value:5.1f}" for (method, shot), value in means.items()]
    lines += ["", "| property | measured | rule | holds |", "|---|---|---|---|"]
    for p in properties:
        holds = "not measurable" if p.holds is None else ("yes" if p.holds else "NO")
        lines.append(f"| {p.name} | {p.measured} | {p.rule} | {holds} |")
    return "\n".join(lines)
