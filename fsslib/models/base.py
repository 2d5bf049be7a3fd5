"""The base class of every few-shot segmentation method.

A method is a backbone (``images -> {stage: features}``) followed by a *head* that works on
feature tensors only. Keeping the two apart means that

- a head can be checked against its paper's equations on small hand-made tensors, and
- evaluation can compute each test image's features once and reuse them in every episode that
  image appears in (``fsslib.engine.protocol``), since a model in eval mode maps an image to the
  same features whatever the episode.

Shapes (B episodes, S = N*K supports, way-major; h x w = feature size; H x W = input size):

- ``query_feats[stage]``: ``[B, C, h, w]``
- ``support_feats[stage]``: ``[B, S, C, h, w]``
- ``support_masks``: long ``[B, S, H, W]`` (1 = the support's class, 0 = background, 255 = void,
  254 = excluded: another class of the episode, or unlabelled in a weak support; see
  :mod:`fsslib.data.episodes`)
- output ``"logits"``: ``[B, 1 + N, H, W]`` (background, then one channel per way)
"""
from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbones import Backbone, build_backbone
from .ops import IGNORE_INDEX, hard_labels


@dataclass
class ModelConfig:
    """Fields every method has; each method's config extends it with its own constants."""

    backbone: str = "smallcnn"
    #: None (random init), "imagenet", or the path of a backbone checkpoint (e.g. a pre-training run).
    weights: str | None = None
    #: Backbone stages whose parameters are frozen ("all" or a list of stage names).
    frozen_stages: tuple[str, ...] | str = ()
    #: Hold BatchNorm statistics fixed (eval mode) even while training.
    freeze_bn: bool = False
    #: Run the fast twins of :mod:`fsslib.models.fast` where a method has them; False runs the
    #: plain code of the method file, which computes the same outputs (tests/test_fast_paths.py)
    #: more slowly. Every stored result was computed with the fast twins.
    fast_paths: bool = True


class FewShotSegmenter(nn.Module):
    """Base of every method: one batched backbone pass, then a feature-only head."""

    config_class: type[ModelConfig] = ModelConfig
    #: Backbone stages the head reads; the backbone runs up to the deepest of them.
    feature_stages: tuple[str, ...] = ("layer4",)
    #: Stages the head reads from the supports when they are fewer (default: ``feature_stages``).
    #: PFENet and MSPF run layer4 on the *masked* support features and never read the support
    #: image's own layer4, so their supports stop at layer3: five layer4 passes saved at 5-shot.
    support_stages: tuple[str, ...] | None = None

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.backbone: Backbone = build_backbone(config.backbone, config.weights, config.frozen_stages,
                                                 config.freeze_bn)

    # ------------------------------------------------------------------ features
    def extract(self, images: Tensor) -> dict[str, Tensor]:
        """``images [N, 3, H, W]`` -> the stages the head reads, ``{stage: [N, C, h, w]}``."""
        deepest = max(self.feature_stages, key=self.backbone.stage_names.index)
        features = self.backbone(images, upto=deepest)
        return {stage: features[stage] for stage in self.feature_stages}

    def forward(self, batch: dict) -> dict[str, Tensor]:
        """Segment the query of every episode in ``batch`` (the data contract of DESIGN.md)."""
        way = batch["support_classes"].shape[1] if "support_classes" in batch else 1
        out_size = tuple((batch["query_img"] if "query_img" in batch else batch["query_mask"]).shape[-2:])
        query_feats, support_feats = self.episode_features(batch)
        return self.head(query_feats, support_feats, batch["support_masks"], way, out_size)

    def episode_features(self, batch: dict) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """``(query_feats {stage: [B, C, h, w]}, support_feats {stage: [B, S, C, h, w]})`` of a batch.

        Query and supports go through the backbone in one call; a batch that already carries
        features (``engine.feature_cache``) is passed through.
        """
        if "query_feats" in batch:
            return batch["query_feats"], batch["support_feats"]
        query_img, support_imgs = batch["query_img"], batch["support_imgs"]
        b, s = support_imgs.shape[:2]
        order = self.backbone.stage_names.index
        support_stages = self.support_stages or self.feature_stages
        shared = max(support_stages, key=order)
        features = self.backbone(torch.cat([query_img, support_imgs.flatten(0, 1)]), upto=shared)
        query = {k: v[:b] for k, v in features.items() if k in self.feature_stages}
        # Stages only the query needs continue from the last shared one, on the query alone.
        x = features[shared][:b]
        for stage in self.backbone.stage_names[order(shared) + 1:order(max(self.feature_stages, key=order)) + 1]:
            x = self.backbone.run_stage(stage, x)
            if stage in self.feature_stages:
                query[stage] = x
        return query, {k: features[k][b:].unflatten(0, (b, s)) for k in support_stages}

    @abstractmethod
    def head(self, query_feats: dict[str, Tensor], support_feats: dict[str, Tensor], support_masks: Tensor,
             way: int, out_size: tuple[int, int]) -> dict[str, Tensor]:
        """Return at least ``{"logits": [B, 1 + way, *out_size]}``, plus named auxiliary outputs."""

    # ------------------------------------------------------------------ training
    def loss(self, output: dict[str, Tensor], batch: dict) -> tuple[Tensor, dict[str, float]]:
        """Cross-entropy of the query prediction, 255 ignored. Methods add their own terms."""
        ce = F.cross_entropy(output["logits"], batch["query_mask"], ignore_index=IGNORE_INDEX)
        return ce, {"query_ce": ce.item()}

    @staticmethod
    def predict(output: dict[str, Tensor]) -> Tensor:
        """Hard prediction ``long [B, H, W]``: 0 background, n = the n-th way."""
        return hard_labels(output["logits"])

    def learnable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
