"""The prototype baseline: masked average pooling and cosine matching, nothing learned in the head.

This is PANet without its alignment loss (Wang et al., "PANet: Few-Shot Image Semantic
Segmentation with Prototype Alignment", ICCV 2019, section 3.2-3.3). With a backbone that has
had no episodic training it is the paper's "PANet-init" row.

For an episode with supports ``I_{n,k}`` (way n, shot k), features ``F_{n,k}`` and masks
``M_{n,k}``:

.. math::
    p_n = \\frac{1}{K} \\sum_k \\frac{\\sum_{x,y} F_{n,k}(x,y)\\, [M_{n,k}(x,y)=1]}
                                    {\\sum_{x,y} [M_{n,k}(x,y)=1] + \\epsilon}

    p_{bg} = \\frac{1}{NK} \\sum_{n,k} \\frac{\\sum_{x,y} F_{n,k}(x,y)\\, B_{n,k}(x,y)}
                                          {\\sum_{x,y} B_{n,k}(x,y) + \\epsilon}

    \\tilde M_q(j, x, y) = \\operatorname{softmax}_j\\big(\\alpha \\cos(F_q(x,y), p_j)\\big),
    \\quad j \\in \\{bg, 1..N\\}

with features upsampled to the mask size (PANet's convention), ``epsilon = 1e-5``, ``alpha = 20``.
``B_{n,k}`` is the support's background, chosen by ``background`` (see
:func:`~fsslib.models.ops.background_mask`):

- ``"not_foreground"`` (default; PANet's public code, ``getMask`` in
  ``dataloaders/customized.py``): ``B = [M \\in \\{0, 255\\}]``, every pixel that is neither
  the support's class nor another class of the episode, void included;
- ``"labelled"``: ``B = [M = 0]``, void left out, as SSP and PFENet pool their background.

Under both, pixels coded 254 (the episode's other classes in N-way supports, unlabelled pixels of
a scribble) are in neither ``p_n`` nor ``p_bg``. The loss is the cross-entropy of the query
prediction with 255 ignored. Shapes as in :mod:`fsslib.models.base`; the prototypes are
``[B, 1 + N, C]``.

This file is the plain computation. With ``config.fast_paths`` (the default) the matching runs its
twin in :mod:`fsslib.models.fast`, which computes the same logits.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from . import fast
from .base import FewShotSegmenter, ModelConfig
from .ops import background_mask, foreground_mask, masked_average_pooling, resize_to
from .record import MethodRecord

#: The paper's training recipe (section 4.1), used for PANet and for ProtoNet (PANet without PAR):
#: VGG-16 from ImageNet, trained end to end by SGD (momentum 0.9, weight decay 5e-4), 30,000
#: iterations of one episode, learning rate 1e-3 divided by 10 every 10,000 iterations, 417x417
#: input. Keys are :class:`fsslib.engine.trainer.TrainConfig` fields (``model_args`` holds
#: config fields). The paper gives one recipe; COCO-20i uses it too.
_PAPER_RECIPE = {
    "model_args": {"backbone": "vgg16", "weights": "imagenet", "frozen_stages": (), "freeze_bn": False},
    "optimizer": "sgd", "lr": 1e-3, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "step",
    "step_size": 10_000, "gamma": 0.1, "steps": 30_000, "batch_size": 1, "image_size": 417,
}
REAL_DATA_RECIPE = {"pascal": _PAPER_RECIPE, "coco": _PAPER_RECIPE}

@dataclass
class ProtoNetConfig(ModelConfig):
    #: Backbone stage whose features are pooled and matched.
    feature_stage: str = "layer4"
    #: The cosine similarity is multiplied by this before the softmax (PANet: 20).
    scale: float = 20.0
    #: "upsample_features" (PANet) or "resize_mask" (SSP, PFENet); see ops.masked_average_pooling.
    pooling: str = "upsample_features"
    eps: float = 1e-5
    #: Which support pixels are background: "not_foreground" (the authors' code: every pixel that
    #: is neither the class nor another episode class, void included) or "labelled" (only pixels
    #: coded 0). PANet's alignment loss labels its support pixels by the same rule.
    background: str = "not_foreground"


def episode_prototypes(support_feats: Tensor, support_masks: Tensor, way: int, pooling: str,
                       eps: float, background: str = "not_foreground") -> Tensor:
    """Background and per-way foreground prototypes ``[B, 1 + N, C]`` of ``[B, N*K, C, h, w]`` supports.

    ``background`` is the rule of :func:`~fsslib.models.ops.background_mask`.
    """
    b, s = support_feats.shape[:2]
    feats, masks = support_feats.flatten(0, 1), support_masks.flatten(0, 1)
    fg = masked_average_pooling(feats, foreground_mask(masks), pooling, eps).view(b, way, s // way, -1)
    bg = masked_average_pooling(feats, background_mask(masks, background), pooling, eps).view(b, s, -1)
    return torch.cat([bg.mean(dim=1, keepdim=True), fg.mean(dim=2)], dim=1)


def prototype_logits(features: Tensor, prototypes: Tensor, scale: float) -> Tensor:
    """``[B, P, h, w]``: ``scale * cos(F(x, y), p_j)`` for every prototype ``j`` of ``[B, P, C]``.

    ``F.cosine_similarity`` clamps each norm at ``1e-8``, so a zero prototype scores 0, not NaN.
    """
    return scale * F.cosine_similarity(features.unsqueeze(1), prototypes[..., None, None], dim=2)


class ProtoNet(FewShotSegmenter):
    config_class = ProtoNetConfig

    def __init__(self, config: ProtoNetConfig):
        super().__init__(config)
        self.feature_stages = (config.feature_stage,)

    def logits(self, features: Tensor, prototypes: Tensor) -> Tensor:
        """:func:`prototype_logits` with the configured scale, at the features' resolution."""
        logits_of = fast.prototype_logits if self.config.fast_paths else prototype_logits
        return logits_of(features, prototypes, self.config.scale)

    def head(self, query_feats, support_feats, support_masks, way, out_size):
        stage = self.config.feature_stage
        prototypes = episode_prototypes(support_feats[stage], support_masks, way, self.config.pooling,
                                        self.config.eps, self.config.background)
        logits = self.logits(query_feats[stage], prototypes)
        return {"logits": resize_to(logits, out_size, "bilinear", align_corners=False), "prototypes": prototypes}


# ---------------------------------------------------------------------- record
#: The plain prototype model is every table's reference. Its real-data recipe is PANet's (ProtoNet
#: is PANet without PAR).
RECORD = MethodRecord(
    name="protonet", display_name="ProtoNet", model_class=ProtoNet,
    paper="Wang, Liew, Zou, Zhou and Feng, PANet: Few-Shot Image Semantic Segmentation with Prototype "
          "Alignment, ICCV 2019 (the model without its alignment loss)",
    real_data_recipe=REAL_DATA_RECIPE,
    main_row="ProtoNet (MAP + cosine)", job_cost=2,
)
