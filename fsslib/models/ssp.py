"""SSP: self-support matching for few-shot segmentation.

Fan, Pei, Tai and Tang, "Self-Support Few-Shot Semantic Segmentation", ECCV 2022. Equations and
constants follow the paper (section 3) and the authors' implementation (``model/SSP_matching.py``
and the loss in ``main.py`` of github.com/fanq15/SSP).

Idea: pixels of one object resemble each other more than they resemble another object of the
same class. So after a first, support-driven prediction, the confident query pixels are pooled
into *query* prototypes that then segment the query itself.

Notation: query features ``F`` ``[C, h, w]`` (ResNet ``layer3``: 1024 channels at stride 8),
``F(x)`` one pixel's vector, ``cos`` the cosine similarity, ``up`` bilinear upsampling to the
input size with ``align_corners=True``. All logits have two channels, (background, foreground):

.. math::
    \\operatorname{match}(P_f, P_b)(x) = 10 \\cdot \\big(\\cos(F(x), P_b(x)),\\ \\cos(F(x), P_f(x))\\big)

where a prototype is either one vector ``[C]`` or one vector per pixel ``[C, h, w]``.

**Support prototypes.** Masked average pooling with the mask bilinearly resized to the feature
size (``align_corners=True``), ``epsilon = 1e-5``; foreground ``M = 1``, background ``M = 0``
(void 255 and excluded 254 in neither); K shots: the mean of the per-shot prototypes ``FP``,
``BP``. The plain prototype prediction is ``out0 = match(FP, BP)``.

**Self-support module (SSM)**, at feature resolution, from logits ``out``:
``p = softmax(out)`` over the two channels and

.. math::
    S_f = \\{x : p_f(x) > 0.7\\}, \\qquad S_b = \\{x : p_b(x) > 0.6\\}

each replaced by the 12 pixels of highest ``p_f`` (resp. ``p_b``) when empty. Then

.. math::
    SSFP = \\frac{1}{|S_f|} \\sum_{x \\in S_f} F(x), \\qquad
    SSBP = \\frac{1}{|S_b|} \\sum_{x \\in S_b} F(x)

and the adaptive self-support background prototype (ASBP), one vector per query pixel ``x``:

.. math::
    a(x, y) = \\frac{\\exp(2 \\cos(F(x), F(y)))}{\\sum_{y' \\in S_b} \\exp(2 \\cos(F(x), F(y')))},
    \\quad y \\in S_b, \\qquad
    ASBP(x) = \\sum_{y \\in S_b} a(x, y)\\, F(y).

**Self-support matching** (round 1):

.. math::
    FP_1 = 0.5\\, FP + 0.5\\, SSFP, \\qquad BP_1 = 0.3\\, SSBP + 0.7\\, ASBP, \\qquad
    out_1 = \\operatorname{match}(FP_1, BP_1)

**Refinement** (round 2, ``refine=True``): the SSM again, from ``out_1``, giving
``SSFP_2, SSBP_2, ASBP_2``, and

.. math::
    FP_2 = 0.5\\, FP + 0.2\\, FP_1 + 0.3\\,(0.5\\, FP + 0.5\\, SSFP_2)

    BP_2 = 0.5\\, BP + 0.2\\, BP_1 + 0.3\\,(0.3\\, SSBP_2 + 0.7\\, ASBP_2)

    out_2 = 0.7\\, \\operatorname{match}(FP_2, BP_2) + 0.3\\, out_1

The prediction is ``up(out_2)`` (``up(out_1)`` without refinement).

**Self-support loss (SSL)**, training only. Prototypes pooled with the *ground truth* segment the
image they come from: ``q``, the query features matched against ``MAP(F_q, M_q = 1)`` and
``MAP(F_q, M_q = 0)``, and for each support shot k, ``s_k``, its features matched against its own
prototypes (not the K-shot mean). With CE the
cross-entropy averaged over the pixels not labelled 255,

.. math::
    \\mathcal L = CE(up(out_2), M_q) + CE(up(out_1), M_q) + CE(up(q), M_q)
        + 0.2\\, CE(up(s), M_s)

Choices, checked against the authors' code where the paper is silent:

- The SSM runs at feature resolution (``h x w``): the thresholds act on the softmax of the
  feature-resolution logits, and ASBP is ``[C, h, w]``. Selections are hard (strict ``>``), so
  no gradient flows through the thresholds; gradients flow through every feature that is pooled
  or attended, the attention weights included. Nothing is detached.
- ``BP_1`` does not contain the support background ``BP`` (it enters again only in ``BP_2``).
- The background cosine with ASBP is taken pixel by pixel, ``cos(F(x), BP_1(x))``.
- ASBP attends over the selected background pixels only (the similarities of every other pixel
  are masked with ``-inf`` before the softmax); the query pixel itself is among them if it is
  selected. Features are normalised with ``F.normalize`` (norms clamped at ``1e-8``, as
  ``F.cosine_similarity`` clamps them: a zero feature vector gives similarity 0, where the
  authors' plain division would give NaN); the weighted sum is over the *unnormalised* features.
- The authors' code also builds an adaptive *foreground* prototype but never uses it; it is
  omitted here.
- Logits are combined at feature resolution and upsampled once (bilinear, ``align_corners=True``,
  to ``out_size``); upsampling is linear, so the order does not matter.
- "out1" is always the first self-support pass. In training with refinement both ``out_2``
  (``"logits"``) and ``out_1`` are supervised; without refinement ``out_1`` is the prediction and
  is counted once. ``out0`` (the plain prediction) is never supervised.
- The support self-matching loss pools every shot's pixels into one mean (the authors concatenate
  the shots along the batch), each support's logits upsampled to its own mask size.
- Fallback: ``min(12, h*w)`` pixels when the feature map has fewer than 12; ties in ``topk`` are
  broken by ``torch.topk``, as in the authors' code. Probabilities are computed in float32 for
  the selection, also under mixed precision.
- SSM needs one foreground channel: only 1-way episodes (``way > 1`` raises ``ValueError``).

**Switches** (read at forward time from ``model.config``, so one trained model can be evaluated
in every ablation row):

- ``use_ssfp``: ``FP_1 = FP`` when off (and ``0.5 FP + 0.5 SSFP_2`` becomes ``FP`` in round 2).
- ``use_ssbp``, ``use_asbp``: the self-support background is ``0.3 SSBP + 0.7 ASBP`` with both,
  ``SSBP`` or ``ASBP`` alone with one, and the support's ``BP`` with neither (so ``BP_1 = BP``).
- ``refine``: the second round.
- ``out1_loss``, ``ssl_query``, ``ssl_support``: the loss terms after the first.

With ``use_ssfp = use_ssbp = use_asbp = False`` every prototype equals the support's, so the
output is the plain prototype baseline (``out0``, with or without refinement, since
``0.7 out0 + 0.3 out0 = out0``) and, with the SSL terms off too, so is the loss.
:class:`~fsslib.models.protonet.ProtoNet` with ``feature_stage="layer3"``, ``scale=10``,
``pooling="resize_mask"``, ``background="labelled"`` computes the same feature-resolution logits
(it upsamples with ``align_corners=False``, so compare at feature resolution).

**Backbone** (the authors' training recipe, the defaults here): stages ``layer1`` (for ResNets:
stem + layer1, the authors' layer0-layer1) frozen, every BatchNorm frozen (running statistics and
affine parameters), ``layer2``-``layer3`` trained. Stages after ``feature_stage`` never run, so
their parameters are frozen too; the optimiser and parameter counts see only what is used.

**Outputs** of :meth:`SSP.head` (``H x W`` = ``out_size``, ``h x w`` = feature size, K shots):

- ``"logits"`` ``[B, 2, H, W]``: the prediction (``out_2``, or ``out_1`` without refinement).
- ``"logits_out1"``, ``"logits_plain"`` ``[B, 2, H, W]``: ``out_1`` and ``out0``.
- ``"prototypes"`` ``[B, 2, C]``: ``(BP, FP)``; ``"support_prototypes"`` ``[B, K, 2, C]`` per shot.
- ``"probs_plain"`` ``[B, 2, h, w]``: ``softmax(out0)``, what round 1 thresholds.
- with any self-support component on: ``"fg_selected"``, ``"bg_selected"`` bool ``[B, h, w]``
  (``S_f``, ``S_b`` of round 1), ``"ssfp"``, ``"ssbp"`` ``[B, C]``, ``"asbp"`` ``[B, C, h, w]``
  (when ``use_asbp``), ``"fg_proto_1"`` ``[B, C]``, ``"bg_proto_1"`` ``[B, C]`` or ``[B, C, h, w]``.
- with refinement and a self-support component on, also: ``"probs_out1"`` ``[B, 2, h, w]``, ``"fg_selected_2"``,
  ``"bg_selected_2"``, ``"fg_proto_2"``, ``"bg_proto_2"``.
- ``"query_features"`` ``[B, C, h, w]`` and ``"support_features"`` ``[B, K, C, h, w]`` (the
  tensors themselves, for the loss and for figures).

The ASBP attention ``a(x, .)`` of chosen query pixels: :meth:`SSP.background_attention` (or
:func:`adaptive_background_attention`).

This file is the plain computation. With ``config.fast_paths`` (the default) the head and the loss
run their twins in :mod:`fsslib.models.fast`, which compute the same outputs.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..reference import published
from . import fast
from .base import FewShotSegmenter, ModelConfig
from .ops import (
    COSINE_EPS,
    IGNORE_INDEX,
    background_mask,
    excluded_as_ignore,
    foreground_mask,
    masked_average_pooling,
    resize_to,
)
from .record import BenchSettings, MethodRecord

#: The authors' training recipe (``main.py`` of fanq15/SSP): ResNet-50 from ImageNet with the stem,
#: layer1 and every BatchNorm frozen (the SSPConfig defaults), SGD (momentum 0.9, weight decay
#: 5e-4), learning rate 1e-3 divided by 10 after one and two thirds of training, 24,000 training
#: episodes in batches of 4 (6,000 steps), 473x473 crops. The stored sources give no separate COCO
#: values, so COCO-20i uses the same. Keys are :class:`fsslib.engine.trainer.TrainConfig` fields
#: (``model_args`` holds :class:`SSPConfig` fields).
_AUTHORS_RECIPE = {
    "model_args": {"backbone": "resnet50", "weights": "imagenet"},
    "optimizer": "sgd", "lr": 1e-3, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "step",
    "step_size": 2_000, "gamma": 0.1, "steps": 6_000, "batch_size": 4, "image_size": 473,
}
REAL_DATA_RECIPE = {"pascal": _AUTHORS_RECIPE, "coco": _AUTHORS_RECIPE}
#: Refinement: FP_2 / BP_2 = w0 * (support) + w1 * (round 1) + w2 * (round-2 self-support mix).
REFINE_PROTOTYPE_WEIGHTS = (0.5, 0.2, 0.3)
#: Refinement: out_2 = w * match(FP_2, BP_2) + (1 - w) * out_1.
REFINE_OUTPUT_WEIGHT = 0.7


@dataclass
class SSPConfig(ModelConfig):
    #: Backbone stage whose features are pooled and matched (ResNet layer3: 1024 channels, stride 8).
    feature_stage: str = "layer3"
    #: The authors' recipe: stem + layer1 frozen, BatchNorm statistics frozen ...
    frozen_stages: tuple[str, ...] | str = ("layer1",)
    freeze_bn: bool = True
    #: ... and BatchNorm weights and biases frozen too (requires_grad=False), in every stage.
    freeze_bn_affine: bool = True
    #: The authors' ResNet ends layer3 without its ReLU (``last_relu=False``): matched features
    #: can be negative, so cosines span [-1, 1] rather than [0, 1].
    remove_final_relu: bool = True
    #: Cosine similarities are multiplied by this before the softmax.
    scale: float = 10.0
    #: Masked average pooling of the supports (and of the ground truth in the SSL).
    eps: float = 1e-5
    # --- components (each can be switched off at inference time)
    use_ssfp: bool = True
    use_ssbp: bool = True
    use_asbp: bool = True
    refine: bool = True
    # --- self-support constants
    #: Query pixels with foreground probability above this form SSFP.
    fg_threshold: float = 0.7
    #: Query pixels with background probability above this form SSBP and the ASBP candidates.
    bg_threshold: float = 0.6
    #: When no pixel passes a threshold, the most confident ``fallback_topk`` pixels are used.
    fallback_topk: int = 12
    #: ASBP attention: softmax of this times the cosine similarity.
    asbp_scale: float = 2.0
    #: FP_1 = (1 - w) FP + w SSFP.
    ssfp_weight: float = 0.5
    #: BP_1 = (1 - w) SSBP + w ASBP (when both are on).
    asbp_weight: float = 0.7
    # --- loss terms (training only)
    #: With refinement, also supervise out_1.
    out1_loss: bool = True
    #: SSL: the query's ground-truth prototypes segment the query.
    ssl_query: bool = True
    ssl_query_weight: float = 1.0
    #: SSL: every support's own prototypes segment that support.
    ssl_support: bool = True
    ssl_support_weight: float = 0.2


# ---------------------------------------------------------------------- equations
def support_prototypes(support_feats: Tensor, support_masks: Tensor, eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    """Per-shot foreground and background prototypes of 1-way supports.

    Masked average pooling with the mask bilinearly resized to the features (``align_corners=True``).

    Args:
        support_feats: ``[B, K, C, h, w]``.
        support_masks: long ``[B, K, H, W]`` (1 foreground, 0 background, 255 and 254 in neither).

    Returns:
        ``(fg, bg)``, each ``[B, K, C]``; the K-shot prototypes are their means over ``K``.
    """
    b, k = support_feats.shape[:2]
    feats, masks = support_feats.flatten(0, 1), support_masks.flatten(0, 1)
    fg = masked_average_pooling(feats, foreground_mask(masks), "resize_mask", eps)
    bg = masked_average_pooling(feats, background_mask(masks), "resize_mask", eps)
    return fg.unflatten(0, (b, k)), bg.unflatten(0, (b, k))


def match(features: Tensor, fg: Tensor, bg: Tensor, scale: float) -> Tensor:
    """Two-channel cosine logits ``[B, 2, h, w]`` = ``scale * (cos(F, bg), cos(F, fg))``.

    Args:
        features: ``[B, C, h, w]``.
        fg, bg: ``[B, C]`` (one prototype) or ``[B, C, h, w]`` (one prototype per pixel).
    """
    def cos(prototype: Tensor) -> Tensor:
        if prototype.dim() == 2:  # one vector for every pixel
            prototype = prototype[..., None, None]
        return F.cosine_similarity(features, prototype, dim=1)

    return scale * torch.stack([cos(bg), cos(fg)], dim=1)


def confident_pixels(prob: Tensor, threshold: float, fallback_topk: int) -> Tensor:
    """bool ``[B, P]``: ``prob > threshold``; where no pixel of an episode passes, its top-k pixels.

    Args:
        prob: probabilities ``[B, P]`` (P pixels, flattened).
    """
    selected = prob > threshold
    k = min(fallback_topk, prob.shape[-1])
    top = torch.zeros_like(selected).scatter_(-1, prob.topk(k, dim=-1).indices, True)
    return torch.where(selected.any(dim=-1, keepdim=True), selected, top)


def selected_mean(features: Tensor, selection: Tensor) -> Tensor:
    """Mean ``[B, C]`` of the feature vectors ``[B, C, P]`` at the selected pixels ``bool [B, P]``:
    ``SSFP = (F * S_f).sum / S_f.sum``."""
    s = selection.unsqueeze(1).to(features.dtype)  # [B, 1, P]
    return (features * s).sum(dim=-1) / s.sum(dim=-1)


def adaptive_background_attention(features: Tensor, selection: Tensor, scale: float = 2.0,
                                  query_index: Tensor | None = None) -> Tensor:
    """ASBP weights: softmax over the selected pixels of ``scale * cos(F(x), F(y))``, as full maps.

    Args:
        features: ``[B, C, h, w]`` or flattened ``[B, C, P]``.
        selection: bool ``[B, P]`` (or ``[B, h, w]``), the candidate background pixels ``S_b``;
            at least one per episode.
        scale: 2 in SSP.
        query_index: flat indices (``y * w + x``) of the query pixels ``x`` to return, long ``[Q]``
            (the same for every episode) or ``[B, Q]``; None = every pixel.

    Returns:
        ``[B, Q, P]`` (``Q = P`` when ``query_index`` is None); each row sums to 1 over ``S_b``
        and is 0 elsewhere.
    """
    unit = F.normalize(features.flatten(2), dim=1, eps=COSINE_EPS)  # [B, C, P]
    similarity = scale * unit.transpose(1, 2) @ unit  # [B, P, P]: scale * cos(F(x), F(y))
    in_background = selection.flatten(1).unsqueeze(1)  # [B, 1, P], over y
    attention = similarity.masked_fill(~in_background, float("-inf")).softmax(dim=-1)
    if query_index is None:
        return attention
    query_index = query_index.to(attention.device)
    if query_index.dim() == 1:
        return attention[:, query_index]
    return attention.gather(1, query_index.unsqueeze(-1).expand(-1, -1, attention.shape[-1]))


def adaptive_background_prototype(features: Tensor, selection: Tensor, scale: float = 2.0) -> Tensor:
    """ASBP ``[B, C, h, w]``: ``ASBP(x) = sum_y a(x, y) F(y)`` with ``a`` the attention over ``S_b``.

    Args:
        features: ``[B, C, h, w]``.
        selection: bool ``[B, h, w]``, ``S_b``.
    """
    attention = adaptive_background_attention(features, selection, scale)  # [B, P(x), P(y)]
    return torch.einsum("bxy,bcy->bcx", attention, features.flatten(2)).view_as(features)


class SelfSupport(NamedTuple):
    """One pass of the self-support module (feature resolution)."""

    probs: Tensor  #: ``[B, 2, h, w]``, softmax of the logits it started from
    fg_selected: Tensor  #: bool ``[B, h, w]``, ``S_f``
    bg_selected: Tensor  #: bool ``[B, h, w]``, ``S_b``
    ssfp: Tensor  #: ``[B, C]``
    ssbp: Tensor  #: ``[B, C]``
    asbp: Tensor | None  #: ``[B, C, h, w]``, None when not asked for


def self_support(features: Tensor, logits: Tensor, fg_threshold: float = 0.7, bg_threshold: float = 0.6,
                 fallback_topk: int = 12, asbp_scale: float = 2.0, adaptive: bool = True) -> SelfSupport:
    """The self-support module: query prototypes from the confident pixels of a prediction.

    Args:
        features: query features ``[B, C, h, w]``.
        logits: ``[B, 2, h, w]`` (background, foreground) at the same resolution.
        adaptive: compute ASBP (off when ``use_asbp`` is).
    """
    b, c, h, w = features.shape
    probs = logits.float().softmax(dim=1)  # float32 for the thresholds, also under mixed precision
    p_b, p_f = probs.flatten(2).unbind(1)  # [B, P] each
    s_f = confident_pixels(p_f, fg_threshold, fallback_topk)
    s_b = confident_pixels(p_b, bg_threshold, fallback_topk)
    ssfp = selected_mean(features.flatten(2), s_f)
    ssbp = selected_mean(features.flatten(2), s_b)
    asbp = adaptive_background_prototype(features, s_b, asbp_scale) if adaptive else None
    return SelfSupport(probs, s_f.view(b, h, w), s_b.view(b, h, w), ssfp, ssbp, asbp)


def self_support_prototypes(config: SSPConfig, fp: Tensor, bp: Tensor, ss: SelfSupport) -> tuple[Tensor, Tensor]:
    """One round's mix ``(0.5 FP + 0.5 SSFP, 0.3 SSBP + 0.7 ASBP)``, with the switches applied.

    Returns:
        ``(FP_1, BP_1)``: ``[B, C]``, and ``[B, C]`` or ``[B, C, h, w]`` (with ASBP).
    """
    w_ssfp, w_asbp = config.ssfp_weight, config.asbp_weight
    fg = (1 - w_ssfp) * fp + w_ssfp * ss.ssfp if config.use_ssfp else fp
    if config.use_ssbp and config.use_asbp:
        bg = (1 - w_asbp) * ss.ssbp[..., None, None] + w_asbp * ss.asbp
    elif config.use_ssbp:
        bg = ss.ssbp
    elif config.use_asbp:
        bg = ss.asbp
    else:
        bg = bp
    return fg, bg


def self_matching_logits(features: Tensor, mask: Tensor, scale: float = 10.0, eps: float = 1e-5) -> Tensor:
    """SSL: an image segmented by the prototypes of its own ground truth.

    Args:
        features: ``[N, C, h, w]``.
        mask: long ``[N, H, W]`` (1 / 0 / 255, and 254 in support masks).

    Returns:
        ``[N, 2, H, W]``, upsampled to the mask size (bilinear, ``align_corners=True``).
    """
    fg = masked_average_pooling(features, foreground_mask(mask), "resize_mask", eps)
    bg = masked_average_pooling(features, background_mask(mask), "resize_mask", eps)
    return resize_to(match(features, fg, bg, scale), mask.shape[-2:], "bilinear", align_corners=True)


# ---------------------------------------------------------------------- model
class SSP(FewShotSegmenter):
    """Self-Support Prototype network (1-way, K-shot); see the module docstring."""

    config_class = SSPConfig

    def __init__(self, config: SSPConfig):
        super().__init__(config)
        self.feature_stages = (config.feature_stage,)
        stages = self.backbone.stage_names
        if config.feature_stage not in stages:
            raise ValueError(f"unknown feature_stage '{config.feature_stage}'; stages are {list(stages)}")
        if config.remove_final_relu:
            self.backbone.remove_final_relu(config.feature_stage)
        unused = stages[stages.index(config.feature_stage) + 1:]
        if unused:  # never run: keep them out of the optimiser and the parameter counts
            self.backbone.freeze(unused, freeze_bn=self.backbone.bn_frozen)
        if config.freeze_bn_affine:
            for module in self.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.requires_grad_(False)

    # ------------------------------------------------------------------ head
    def _self_support(self, features: Tensor, logits: Tensor) -> SelfSupport:
        cfg = self.config
        return self_support(features, logits, cfg.fg_threshold, cfg.bg_threshold, cfg.fallback_topk,
                            cfg.asbp_scale, adaptive=cfg.use_asbp)

    def head(self, query_feats, support_feats, support_masks, way, out_size):
        if way != 1:
            raise ValueError(f"SSP's self-support module is defined for 1-way episodes (one foreground "
                             f"channel to threshold); got way={way}")
        cfg = self.config
        stage = cfg.feature_stage
        fq, fs = query_feats[stage], support_feats[stage]
        if cfg.fast_paths:
            return fast.ssp_head(self, fq, fs, support_masks, out_size, equations=sys.modules[__name__])

        def up(logits: Tensor) -> Tensor:
            return resize_to(logits, out_size, "bilinear", align_corners=True)

        fg_shots, bg_shots = support_prototypes(fs, support_masks, cfg.eps)
        fp, bp = fg_shots.mean(dim=1), bg_shots.mean(dim=1)
        out0 = match(fq, fp, bp, cfg.scale)
        output = {
            "logits_plain": up(out0),
            "probs_plain": out0.float().softmax(dim=1),
            "prototypes": torch.stack([bp, fp], dim=1),
            "support_prototypes": torch.stack([bg_shots, fg_shots], dim=2),
            "query_features": fq,
            "support_features": fs,
        }
        self_supported = cfg.use_ssfp or cfg.use_ssbp or cfg.use_asbp

        # round 1: FP_1 = 0.5 FP + 0.5 SSFP, BP_1 = 0.3 SSBP + 0.7 ASBP
        if not self_supported:
            fp1, bp1, out1 = fp, bp, out0
        else:
            ss1 = self._self_support(fq, out0)
            fp1, bp1 = self_support_prototypes(cfg, fp, bp, ss1)
            out1 = match(fq, fp1, bp1, cfg.scale)
            output.update(fg_selected=ss1.fg_selected, bg_selected=ss1.bg_selected, ssfp=ss1.ssfp, ssbp=ss1.ssbp,
                          fg_proto_1=fp1, bg_proto_1=bp1)
            if ss1.asbp is not None:
                output["asbp"] = ss1.asbp
        output["logits_out1"] = up(out1)
        if not cfg.refine:
            output["logits"] = output["logits_out1"]
            return output

        # round 2: FP_2 = 0.5 FP + 0.2 FP_1 + 0.3 (round-2 mix), the same for BP_2
        if not self_supported:
            fp2, bp2 = fp, bp
        else:
            ss2 = self._self_support(fq, out1)
            fp2_ss, bp2_ss = self_support_prototypes(cfg, fp, bp, ss2)
            w_support, w_round1, w_round2 = REFINE_PROTOTYPE_WEIGHTS
            bp_support = bp[..., None, None] if bp1.dim() == 4 else bp  # BP_1 is a map with ASBP: BP at every pixel
            fp2 = w_support * fp + w_round1 * fp1 + w_round2 * fp2_ss
            bp2 = w_support * bp_support + w_round1 * bp1 + w_round2 * bp2_ss
            output.update(probs_out1=ss2.probs, fg_selected_2=ss2.fg_selected, bg_selected_2=ss2.bg_selected,
                          fg_proto_2=fp2, bg_proto_2=bp2)
        out2 = REFINE_OUTPUT_WEIGHT * match(fq, fp2, bp2, cfg.scale) + (1 - REFINE_OUTPUT_WEIGHT) * out1
        output["logits"] = up(out2)
        return output

    # ------------------------------------------------------------------ loss
    def loss(self, output: dict[str, Tensor], batch: dict) -> tuple[Tensor, dict[str, float]]:
        """CE(out_2) + CE(out_1) + CE(query self-matching) + 0.2 CE(support self-matching).

        Parts are reported unweighted: ``query_ce`` (the prediction), ``out1_ce``,
        ``ssl_query_ce``, ``ssl_support_ce``; a switched-off term is absent.
        """
        cfg = self.config
        query_mask = batch["query_mask"]
        self_matching = fast.ssp_self_matching_logits if cfg.fast_paths else self_matching_logits

        def ce(logits: Tensor, target: Tensor) -> Tensor:
            return F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)

        total = ce(output["logits"], query_mask)
        parts = {"query_ce": total.item()}
        if cfg.refine and cfg.out1_loss:
            term = ce(output["logits_out1"], query_mask)
            total = total + term
            parts["out1_ce"] = term.item()
        if cfg.ssl_query:
            term = ce(self_matching(output["query_features"], query_mask, cfg.scale, cfg.eps), query_mask)
            total = total + cfg.ssl_query_weight * term
            parts["ssl_query_ce"] = term.item()
        if cfg.ssl_support:
            masks = batch["support_masks"].flatten(0, 1)
            logits = self_matching(output["support_features"].flatten(0, 1), masks, cfg.scale, cfg.eps)
            term = ce(logits, excluded_as_ignore(masks))  # excluded pixels (254) are ignored like void
            total = total + cfg.ssl_support_weight * term
            parts["ssl_support_ce"] = term.item()
        return total, parts

    # ------------------------------------------------------------------ figures
    def background_attention(self, output: dict[str, Tensor], pixels: Sequence[tuple[int, int]],
                             ssm_round: int = 1) -> Tensor:
        """ASBP weights ``a(x, .)`` of the query pixels ``x = (row, col)`` (feature grid), as maps.

        Args:
            output: :meth:`head`'s output (with a self-support component on).
            pixels: ``(row, col)`` positions on the ``h x w`` feature grid.
            ssm_round: 1, or 2 for the refinement round.

        Returns:
            ``[B, Q, h, w]``: for each chosen pixel, its attention over the selected background.
        """
        if ssm_round not in (1, 2):
            raise ValueError(f"ssm_round must be 1 or 2, got {ssm_round}")
        key = "bg_selected" if ssm_round == 1 else "bg_selected_2"
        if key not in output:
            raise ValueError(f"'{key}' is not in the output: switch a self-support component on"
                             + (" and refine" if ssm_round == 2 else ""))
        features, selection = output["query_features"], output[key]
        h, w = features.shape[-2:]
        index = torch.tensor([r * w + c for r, c in pixels], device=features.device)
        attention_of = fast.ssp_background_attention if self.config.fast_paths else adaptive_background_attention
        attention = attention_of(features, selection, self.config.asbp_scale, index)
        return attention.unflatten(-1, (h, w))


# ---------------------------------------------------------------------- record
def _paper(key: str, shot: int) -> float:
    return published("SSP")["pascal5i"][f"{key}_{shot}shot"]["mean"]


RECORD = MethodRecord(
    name="ssp", display_name="SSP", model_class=SSP,
    paper="Fan, Pei, Tai and Tang, Self-Support Few-Shot Semantic Segmentation, ECCV 2022",
    # SSP matches layer3 features and, like the authors' recipe, trains layer2-layer3 with layer1 frozen.
    synthetic_model_args={"frozen_stages": ("layer1",)},
    real_data_recipe=REAL_DATA_RECIPE,
    bench=BenchSettings("resnet50", 473, authors_ratios=(5.6, 11.5)),
    # Every switch explicit, as in the SSP table's full-model row, so that the two rows share their runs.
    main_row="SSP", main_row_args={"use_ssfp": True, "use_ssbp": True, "use_asbp": True, "refine": True,
                                   "ssl_query": True, "ssl_support": True, "out1_loss": True},
    paper_result=lambda shot: f"{_paper('SSP_refine_R50', shot):.1f}",
    paper_shot_gain=lambda: _paper("SSP_refine_R50", 5) - _paper("SSP_refine_R50", 1),
    # Several fields move together: the self-support loss is its query and support terms; the
    # refinement is the second round and the loss on out_1.
    explorer_switches={"SSFP (self-support foreground prototype)": ("use_ssfp",),
                       "SSBP (self-support background prototype)": ("use_ssbp",),
                       "ASBP (adaptive background prototypes)": ("use_asbp",),
                       "self-support loss": ("ssl_query", "ssl_support"),
                       "refinement round": ("refine", "out1_loss")},
    job_cost=3,
)
