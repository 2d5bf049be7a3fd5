"""The fine-tuning baseline: a 2-way classifier on frozen pre-trained features, trained on each
test episode's support set for a fixed number of gradient steps. No episodic training.

The optimisation family's simplest member and its control: what a few gradient steps on K
labelled images achieve without any meta-learning (Shaban, Bansal, Liu, Essa, Boots, "One-Shot
Learning for Semantic Segmentation", BMVC 2017, section 5, fine-tune the segmentation network on
the support; PANet, Wang et al., ICCV 2019, compares with it).

For supports with features ``F_k`` (``[C, h, w]``) and masks ``M_k``, a linear classifier
``z = W F(x, y) + b`` (``W [2, C]``, a 1x1 convolution) starts from ``W = 0, b = 0`` (every cell
scored 50/50; the loss is convex in ``(W, b)``, so the start only sets where the steps go) and
takes ``T`` steps of plain gradient descent:

.. math::
    (W, b)_{t+1} = (W, b)_t - \\alpha \\nabla L_S, \\qquad
    L_S = \\frac{1}{|\\Omega|} \\sum_{k} \\sum_{(x,y) \\in \\Omega_k}
          -\\log \\operatorname{softmax}\\big(\\mathrm{up}(z_k)\\big)_{M_k(x,y)}

where ``up`` is bilinear upsampling of the logits to the mask size and ``Omega_k`` the pixels
labelled 0 or 1 (void 255 and excluded 254 left out). The query is then scored with ``(W, b)_T``.

Open choices (the sources give no numbers for this baseline):

1. What adapts: the classifier only (``adapt="classifier"``, default), on frozen features.
2. ``steps = 50``, ``lr = 0.5`` (full-batch gradient descent on the support pixels; the loss of
   a linear classifier on fixed features needs no schedule).
3. Start ``W = 0, b = 0``: deterministic, so an evaluation is reproducible without a seed.
4. Features normalised to unit length per cell before the classifier (as the cosine of the
   prototype methods), so that one learning rate fits every backbone.
5. The support loss averages over the valid pixels of all K supports together.

Shapes as in :mod:`fsslib.models.base`; 1-way episodes. The adaptation runs inside ``head`` under
``torch.enable_grad()``, so evaluation (which runs under ``no_grad``) adapts too.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import FewShotSegmenter, ModelConfig
from .ops import IGNORE_INDEX, excluded_as_ignore, resize_to

Params = dict[str, Tensor]


@dataclass
class FineTuneConfig(ModelConfig):
    feature_stage: str = "layer4"
    steps: int = 50
    lr: float = 0.5
    frozen_stages: tuple[str, ...] | str = "all"


def linear_logits(params: Params, features: Tensor) -> Tensor:
    """``[N, 2, h, w]``: the 1x1-convolution classifier ``W F + b`` of ``[N, C, h, w]`` features."""
    return F.conv2d(features, params["weight"][..., None, None], params["bias"])


def support_loss(logits: Tensor, masks: Tensor) -> Tensor:
    """Cross-entropy of support logits ``[K, 2, h, w]`` upsampled to masks ``long [K, H, W]``;
    255 and 254 ignored, averaged over every valid pixel of the K supports."""
    up = resize_to(logits, masks.shape[-2:], "bilinear", align_corners=False)
    return F.cross_entropy(up, excluded_as_ignore(masks), ignore_index=IGNORE_INDEX)


def gradient_steps(params: Params, loss_of: Callable[[Params], Tensor], steps: int, lr: float,
                   adapted: tuple[str, ...] | None = None) -> list[Params]:
    """``steps`` plain gradient-descent steps from ``params`` on ``loss_of``; returns every iterate
    ``[params_0, ..., params_T]`` (detached). ``adapted`` names the entries that move (all by default).

    The iterates carry no graph: the steps are data for whoever uses the result (first-order).
    """
    current = {k: v.detach() for k, v in params.items()}
    moving = adapted or tuple(current)
    iterates = [current]
    with torch.enable_grad():
        for _ in range(steps):
            leaves = {k: v.clone().requires_grad_(k in moving) for k, v in current.items()}
            grads = torch.autograd.grad(loss_of(leaves), [leaves[k] for k in moving])
            current = {**{k: v.detach() for k, v in leaves.items()},
                       **{k: (leaves[k] - lr * g).detach() for k, g in zip(moving, grads)}}
            iterates.append(current)
    return iterates


class FineTune(FewShotSegmenter):
    config_class = FineTuneConfig

    def __init__(self, config: FineTuneConfig):
        super().__init__(config)
        self.feature_stages = (config.feature_stage,)

    def initial_classifier(self, channels: int, like: Tensor) -> Params:
        return {"weight": like.new_zeros(2, channels), "bias": like.new_zeros(2)}

    def head(self, query_feats, support_feats, support_masks, way, out_size):
        if way != 1:
            raise ValueError(f"the fine-tuning baseline trains a 2-way (background/object) classifier; got way={way}")
        stage, cfg = self.config.feature_stage, self.config
        fq = F.normalize(query_feats[stage].detach(), dim=1)
        fs = F.normalize(support_feats[stage].detach(), dim=2)
        logits, losses = [], []
        for episode in range(fq.shape[0]):  # each episode adapts its own classifier
            def loss_of(params: Params, e: int = episode) -> Tensor:
                return support_loss(linear_logits(params, fs[e]), support_masks[e])

            iterates = gradient_steps(self.initial_classifier(fq.shape[1], fq), loss_of, cfg.steps, cfg.lr)
            logits.append(linear_logits(iterates[-1], fq[episode:episode + 1]))
            losses.append(torch.stack([loss_of(p) for p in (iterates[0], iterates[-1])]).detach())
        return {"logits": resize_to(torch.cat(logits), out_size, "bilinear", align_corners=False),
                "support_loss": torch.stack(losses)}  # [B, 2]: before and after the steps
