"""PANet: prototype matching plus prototype alignment regularisation (PAR).

Wang et al., "PANet: Few-Shot Image Semantic Segmentation with Prototype Alignment", ICCV 2019.

**Segmentation** (sections 3.3-3.4) is :class:`~fsslib.models.protonet.ProtoNet`'s head, unchanged:
per-way foreground prototypes ``p_n`` and one background prototype ``p_bg`` by masked average
pooling of the supports (features bilinearly upsampled to the mask size, ``epsilon = 1e-5``;
``p_n`` averages the K shots of way n, ``p_bg`` averages all N*K supports), then

.. math::
    \\tilde M_q(j, x, y) = \\operatorname{softmax}_j\\big(\\alpha \\cos(F_q(x,y), p_j)\\big),
    \\quad j \\in \\{bg, 1, \\dots, N\\}, \\quad \\alpha = 20,

computed at feature resolution ``h x w`` and bilinearly upsampled to the input size. The
background of a support is chosen by ``background`` (below); in N-way supports, pixels of the
episode's other classes are coded 254 (``EXCLUDED``) in the data and are in neither the foreground
nor the background of that support, whatever the rule.

**PAR** (section 3.5, training only) segments the supports in the reverse direction, with the
query and its own prediction as the support set. With ``\\hat y(x,y) = \\arg\\max_j \\tilde M_q(j,x,y)``
taken at feature resolution,

.. math::
    \\hat p_j = \\frac{\\sum_{x,y} F_q(x,y)\\, [\\hat y(x,y) = j]}{\\sum_{x,y} [\\hat y(x,y) = j] + \\epsilon},
    \\quad j \\in \\{bg, 1, \\dots, N\\}

    s_{n,k}(j, x, y) = \\alpha \\cos(F_{n,k}(x,y), \\hat p_j), \\quad j \\in \\{bg, n\\}

    \\mathcal L_{par} = \\frac{1}{B N K} \\sum_{b,n,k} v_{b,n}\\,
        \\operatorname{CE}\\big(\\operatorname{up}(s_{b,n,k}), M_{b,n,k}\\big),
    \\qquad v_{b,n} = \\big[\\textstyle\\sum_{x,y} [\\hat y_b(x,y) = n] > 0\\big]

    \\mathcal L = \\operatorname{CE}(\\tilde M_q, M_q) + \\lambda\\, \\mathcal L_{par}, \\quad \\lambda = 1

where ``up`` is bilinear upsampling to the mask size, CE ignores 255 and averages over each
support's labelled pixels, and ``M_{n,k}`` is PANet's label of the support (:func:`par_targets`):
1 = way n's class, 0 = the support's background under the ``background`` rule (the pixels its
background prototype pools), 255 = everything else (other ways' classes and unlabelled pixels of
weak supports under both rules; void as well under ``"labelled"``).

Choices that follow the authors' code (``models/fewshot.py``, ``alignLoss``):

- Background (``background``, shared with ProtoNet). ``"not_foreground"``, the default, is the
  rule of the authors' data loader (``getMask`` in ``dataloaders/customized.py``): every support
  pixel that is neither the support's class nor another class of the episode is background,
  void (255: object borders, crowd regions) included, both in ``p_bg`` and in PAR's label,
  which the authors build from the same masks (0 where the background mask is 1). The
  alternative ``"labelled"`` takes only the pixels coded 0, leaving void out of both, as SSP and
  PFENet do. The rule changes ``p_bg`` wherever a support has void pixels, so it belongs to a
  trained model's configuration: evaluate a PANet with the rule it was trained with.
- The query mask is the hard argmax of the feature-resolution prediction, so no gradient flows
  through the mask; gradients do flow through the query features pooled into ``\\hat p_j`` and
  through the support features ``F_{n,k}``. Nothing is detached.
- Query prototypes are pooled at feature resolution (the predicted mask already has that size),
  with the same ``epsilon = 1e-5``. A class that is never predicted gets a zero prototype; for
  the background that gives logit 0 everywhere (cosine with a zero vector is 0).
- Support n is segmented against ``[\\hat p_{bg}, \\hat p_n]`` only (a binary problem per support),
  its logits computed at feature resolution and upsampled with ``align_corners=False``.
- A way that the query prediction never predicts is skipped (``v_{b,n} = 0``), which in one-way
  episodes is the rule "skip an episode with no predicted foreground". Skipped terms count in
  the divisor ``B N K``: the authors divide by the number of ways, shots and episodes whatever
  was skipped. Implemented as a mask over the batch, not a Python loop.
- Not in the authors' code (where it would give NaN): a support with no labelled pixel at all
  contributes 0.

PAR adds no parameters and does not run in eval mode, so a PANet evaluates exactly like the
ProtoNet with the same weights. Set ``par_weight = 0`` to train without it (that is ProtoNet).

The paper's backbone is VGG-16 (``backbone="vgg16"``, ``weights="imagenet"``, features of
``layer4`` = conv5 with pool4 at stride 1 and dilation 2, nothing frozen).

Outputs of :meth:`PANet.head` besides ProtoNet's ``"logits"`` ``[B, 1+N, H, W]`` and
``"prototypes"`` ``[B, 1+N, C]``, in training mode with ``par_weight > 0`` only:

- ``"support_logits"`` ``[B, N*K, 2, H, W]``: the reverse segmentation of every support
  (background, foreground), at the support mask's size; what a notebook draws.
- ``"query_prototypes"`` ``[B, 1+N, C]``: ``\\hat p_{bg}, \\hat p_1, ..., \\hat p_N``.
- ``"par_valid"`` bool ``[B, N]``: ``v_{b,n}``.

:func:`prototype_alignment` computes the same outside training (e.g. for a figure).

This file is the plain computation. With ``config.fast_paths`` (the default) the matching and PAR's
reverse segmentation run their twins in :mod:`fsslib.models.fast`, which compute the same outputs.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..reference import published
from . import fast
from .ops import IGNORE_INDEX, background_mask, foreground_mask, resize_to
from .protonet import REAL_DATA_RECIPE, ProtoNet, ProtoNetConfig, prototype_logits
from .record import BenchSettings, MethodRecord

__all__ = ["PANet", "PANetConfig", "REAL_DATA_RECIPE", "par_loss", "par_targets", "prototype_alignment"]



@dataclass
class PANetConfig(ProtoNetConfig):
    #: Weight of the prototype alignment loss (PANet: 1); 0 turns PAR off.
    par_weight: float = 1.0


def prototype_alignment(query_feats: Tensor, query_logits: Tensor, support_feats: Tensor, way: int,
                        mask_size: Sequence[int], scale: float, eps: float) -> dict[str, Tensor]:
    """PAR's reverse segmentation: segment every support with prototypes of the predicted query.

    Args:
        query_feats: ``[B, C, h, w]``.
        query_logits: ``[B, 1+N, h, w]``, the query prediction at feature resolution.
        support_feats: ``[B, N*K, C, h, w]`` (way-major).
        way: N.
        mask_size: ``(H, W)`` of the support masks; the support logits are upsampled to it.
        scale: the cosine scale (PANet: 20).
        eps: added to the predicted area of each class (PANet: 1e-5).

    Returns:
        ``{"support_logits": [B, N*K, 2, H, W], "query_prototypes": [B, 1+N, C],
        "par_valid": bool [B, N]}`` (see the module docstring).
    """
    b, s = support_feats.shape[:2]
    shot = s // way
    # [y = j] for every class j: [B, 1+N, h, w]; the argmax carries no gradient.
    predicted = F.one_hot(query_logits.argmax(dim=1), 1 + way).permute(0, 3, 1, 2).to(query_feats.dtype)
    # \hat p_j = sum F_q [y = j] / (sum [y = j] + eps): [B, 1+N, C]
    area = predicted.sum(dim=(2, 3)).unsqueeze(2)
    query_prototypes = (query_feats.unsqueeze(1) * predicted.unsqueeze(2)).sum(dim=(3, 4)) / (area + eps)
    par_valid = predicted[:, 1:].sum(dim=(2, 3)) > 0

    # Support n*K + k is segmented against [\hat p_bg, \hat p_n]: [B, N, 2, C] -> [B*N*K, 2, C].
    bg, fg = query_prototypes[:, :1], query_prototypes[:, 1:]
    pairs = torch.stack([bg.expand_as(fg), fg], dim=2).repeat_interleave(shot, dim=1).flatten(0, 1)
    logits = prototype_logits(support_feats.flatten(0, 1), pairs, scale)
    support_logits = resize_to(logits, mask_size, "bilinear", align_corners=False).unflatten(0, (b, s))
    return {"support_logits": support_logits, "query_prototypes": query_prototypes, "par_valid": par_valid}


def par_targets(support_masks: Tensor, background: str = "not_foreground") -> Tensor:
    """PAR's label of every support pixel: 1 = the support's class, 0 = its background under the
    rule ``background`` (:func:`~fsslib.models.ops.background_mask`), 255 (ignored) elsewhere.

    Built the way the authors build it: start from "ignore", then mark the background mask 0 and
    the foreground mask 1, so the loss sees exactly the pixels the prototypes were pooled from.
    """
    target = torch.full_like(support_masks, IGNORE_INDEX)
    target = target.masked_fill(background_mask(support_masks, background).bool(), 0)
    return target.masked_fill(foreground_mask(support_masks).bool(), 1)


def par_loss(support_logits: Tensor, support_masks: Tensor, par_valid: Tensor,
             background: str = "not_foreground") -> Tensor:
    """``L_par``: per-support cross-entropy (255 ignored), skipped ways masked, mean over ``B*N*K``.

    Args:
        support_logits: ``[B, N*K, 2, H, W]`` from :func:`prototype_alignment`.
        support_masks: long ``[B, N*K, H, W]`` as the data codes them (1 / 0 / 255 / 254).
        par_valid: bool ``[B, N]``; terms of ways with ``False`` are 0 but still counted.
        background: the rule that made the background prototype (see :func:`par_targets`).
    """
    b, s = support_masks.shape[:2]
    targets = par_targets(support_masks, background).flatten(0, 1)
    pixel_ce = F.cross_entropy(support_logits.flatten(0, 1), targets,
                               ignore_index=IGNORE_INDEX, reduction="none")  # [B*S, H, W], 0 where ignored
    labelled = (targets != IGNORE_INDEX).sum(dim=(1, 2))
    per_support = (pixel_ce.sum(dim=(1, 2)) / labelled.clamp(min=1)).view(b, s)
    valid = par_valid.repeat_interleave(s // par_valid.shape[1], dim=1)  # [B, N] -> [B, N*K]
    return torch.where(valid, per_support, torch.zeros_like(per_support)).sum() / (b * s)


class PANet(ProtoNet):
    """ProtoNet's prototype matching, trained with prototype alignment regularisation."""

    config_class = PANetConfig

    def head(self, query_feats, support_feats, support_masks, way, out_size):
        output = super().head(query_feats, support_feats, support_masks, way, out_size)
        if self.training and self.config.par_weight > 0:
            stage, scale = self.config.feature_stage, self.config.scale
            query = query_feats[stage]
            # ProtoNet's query logits before upsampling: PAR takes the argmax at feature resolution.
            query_logits = self.logits(query, output["prototypes"])
            alignment = fast.panet_prototype_alignment if self.config.fast_paths else prototype_alignment
            output.update(alignment(query, query_logits, support_feats[stage], way,
                                    support_masks.shape[-2:], scale, self.config.eps))
        return output

    def loss(self, output, batch):
        """``CE(query) + par_weight * L_par``; PAR only where the head computed it (training)."""
        total, parts = super().loss(output, batch)
        if "support_logits" in output:
            par = par_loss(output["support_logits"], batch["support_masks"], output["par_valid"],
                           self.config.background)
            total = total + self.config.par_weight * par
            parts["par"] = par.item()
        return total, parts


# ---------------------------------------------------------------------- record
def _paper_result(shot: int) -> str:
    return f"{published('PANet')[f'pascal5i_{shot}shot']['mean']:.1f} (VGG-16)"


def _paper_shot_gain() -> float:
    return published("PANet")["pascal5i_5shot"]["mean"] - published("PANet")["pascal5i_1shot"]["mean"]


RECORD = MethodRecord(
    name="panet", display_name="PANet", model_class=PANet,
    paper="Wang, Liew, Zou, Zhou and Feng, PANet: Few-Shot Image Semantic Segmentation with Prototype "
          "Alignment, ICCV 2019",
    real_data_recipe=REAL_DATA_RECIPE,
    bench=BenchSettings("vgg16", 417, authors_ratios=(8.3, 36.6)),
    main_row="PANet (PAR on)", main_row_args={"par_weight": 1.0},
    paper_result=_paper_result, paper_shot_gain=_paper_shot_gain,
    explorer_switches={"prototype alignment (PAR)": ("par_weight",)},
    job_cost=2,
)
