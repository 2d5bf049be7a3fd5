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

1. What adapts: the classifier only, on features of the pre-trained backbone, which stays frozen
   (``frozen_stages="all"``); the sources also fine-tune whole networks at a small learning rate.
2. ``steps = 50`` of full-batch gradient descent on the support pixels (the loss of a linear
   classifier on fixed features needs no schedule) at ``lr = 50``. On unit-length features the
   gradients are small, so the step size is large. It was chosen among 0.5, 5 and 50 by the mean
   query IoU after 50 steps on fold 0's *base-class* episodes of the synthetic benchmark (60 per
   shot; no test class seen): 10.7 / 4.5 (1 / 5 shots) at 0.5, 30.9 / 51.6 at 5, 36.2 / 51.2 at 50.
   The first table run used 0.5, an unchosen default: the classifier then predicted background
   nearly everywhere (8.1 / 2.4 mIoU on the novel classes).
3. Start ``W = 0, b = 0``: deterministic, so an evaluation is reproducible without a seed.
4. Features normalised to unit length per cell before the classifier (as the cosine of the
   prototype methods), so that one learning rate fits every backbone.
5. The support loss averages over the valid pixels of all K supports together, on ``layer4``
   logits upsampled to the mask size; the query is scored with the last iterate.

Shapes as in :mod:`fsslib.models.base`; 1-way episodes. The adaptation runs inside ``head`` under
``torch.inference_mode(False)`` and ``torch.enable_grad()`` on copies of the features, so
evaluation (under ``no_grad`` or ``inference_mode``) adapts too.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import FewShotSegmenter, ModelConfig
from .ops import IGNORE_INDEX, excluded_as_ignore, resize_to
from .record import BenchSettings, MethodRecord

Params = dict[str, Tensor]


@dataclass
class FineTuneConfig(ModelConfig):
    feature_stage: str = "layer4"
    steps: int = 50
    #: Chosen on base-class episodes (see the module docstring, choice 2).
    lr: float = 50.0
    frozen_stages: tuple[str, ...] | str = "all"


def linear_logits(params: Params, features: Tensor) -> Tensor:
    """``[N, 2, h, w]``: the 1x1-convolution classifier ``W F + b`` of ``[N, C, h, w]`` features."""
    return F.conv2d(features, params["weight"][..., None, None], params["bias"])


def support_loss(logits: Tensor, masks: Tensor) -> Tensor:
    """Cross-entropy of support logits ``[K, 2, h, w]`` upsampled to masks ``long [K, H, W]``;
    255 and 254 ignored, averaged over every valid pixel of the K supports."""
    up = resize_to(logits, masks.shape[-2:], "bilinear", align_corners=False)
    return F.cross_entropy(up, excluded_as_ignore(masks), ignore_index=IGNORE_INDEX)


def autograd_ready(tensor: Tensor) -> Tensor:
    """``tensor``, or a copy that autograd may record on when it was made under
    ``torch.inference_mode`` (the evaluator's features are): call outside inference mode."""
    return tensor.clone() if tensor.is_inference() else tensor


def gradient_steps(params: Params, loss_of: Callable[[Params], Tensor], steps: int, lr: float,
                   adapted: tuple[str, ...] | None = None) -> list[Params]:
    """``steps`` plain gradient-descent steps from ``params`` on ``loss_of``; returns every iterate
    ``[params_0, ..., params_T]`` (detached). ``adapted`` names the entries that move (all by default).

    The iterates carry no graph: the steps are data for whoever uses the result (first-order).
    Gradients are computed whatever the caller's mode (``no_grad`` or ``inference_mode`` during
    evaluation); the tensors ``loss_of`` reads must have passed :func:`autograd_ready`.
    """
    moving = adapted or tuple(params)
    with torch.inference_mode(False), torch.enable_grad():
        current = {k: v.detach().clone() for k, v in params.items()}  # not the live parameters' memory
        iterates = [current]
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

    # One episode at a time: features [N, C, h, w] of its K supports or its query, masks [K, H, W].
    def score(self, params: Params, features: Tensor) -> Tensor:
        """Logits ``[N, 2, h, w]`` of the classifier ``params`` on features normalised per cell."""
        return linear_logits(params, F.normalize(features.detach(), dim=1))

    def episode_loss(self, params: Params, support: Tensor, masks: Tensor) -> Tensor:
        """``L_S``: the support cross-entropy of the classifier ``params``."""
        return support_loss(self.score(params, support), masks)

    def adapt(self, support: Tensor, masks: Tensor, steps: int | None = None) -> list[Params]:
        """The classifier's iterates ``[(W, b)_0, ..., (W, b)_T]`` on one episode's supports
        (``T = steps``, by default the config's)."""
        with torch.inference_mode(False):
            support, masks = autograd_ready(support), autograd_ready(masks)
            start = {"weight": support.new_zeros(2, support.shape[1]), "bias": support.new_zeros(2)}
            return gradient_steps(start, lambda p: self.episode_loss(p, support, masks),
                                  self.config.steps if steps is None else steps, self.config.lr)

    def head(self, query_feats, support_feats, support_masks, way, out_size):
        if way != 1:
            raise ValueError("the fine-tuning baseline trains a background/object classifier for 1-way episodes "
                             f"(way=1); got way={way}")
        stage = self.config.feature_stage
        logits, losses = [], []
        for e in range(query_feats[stage].shape[0]):  # each episode adapts its own classifier
            support, masks = support_feats[stage][e], support_masks[e]
            iterates = self.adapt(support, masks)
            logits.append(self.score(iterates[-1], query_feats[stage][e:e + 1]))
            with torch.inference_mode(False):
                support, masks = autograd_ready(support), autograd_ready(masks)
                losses.append(torch.stack([self.episode_loss(p, support, masks) for p in (iterates[0], iterates[-1])]))
        return {"logits": resize_to(torch.cat(logits), out_size, "bilinear", align_corners=False),
                "support_loss": torch.stack(losses)}  # [B, 2]: before and after the steps


# ---------------------------------------------------------------------- record
#: Real data: the prototype methods' backbone (VGG-16 from ImageNet, as in PANet's comparison),
#: frozen; nothing is trained on episodes, so the recipe is its backbone and input size only.
REAL_DATA_RECIPE = {benchmark: {"model_args": {"backbone": "vgg16", "weights": "imagenet", "frozen_stages": "all",
                                               "freeze_bn": True},
                                "steps": 0, "image_size": 417} for benchmark in ("pascal", "coco")}

RECORD = MethodRecord(
    name="finetune", display_name="Fine-tuning", model_class=FineTune,
    paper="Shaban, Bansal, Liu, Essa and Boots, One-Shot Learning for Semantic Segmentation, BMVC 2017 "
          "(its fine-tuning baseline)",
    family="optimisation", episodic_training=False,
    # The fold's pre-trained backbone, all of it frozen: the classifier is all that adapts.
    synthetic_model_args={"frozen_stages": "all"},
    real_data_recipe=REAL_DATA_RECIPE,
    bench=BenchSettings("vgg16", 417),
    main_row="Fine-tuning (linear, 50 steps)",
    job_cost=1,
)
