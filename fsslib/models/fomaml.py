"""First-order MAML on a segmentation head: an initialisation learned so that a few gradient
steps on an episode's support set segment its query.

Finn, Abbeel, Levine, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks", ICML
2017 (section 2.2, and the first-order approximation of section 5.2); the "almost no inner loop"
variant ANIL: Raghu, Raghu, Bengio, Vinyals, "Rapid Learning or Feature Reuse? Towards
Understanding the Effectiveness of MAML", ICLR 2020.

The head ``f_theta`` maps features ``[C, h, w]`` to two logits per cell: a 3x3 convolution to
``width`` channels, ReLU, a 1x1 convolution to 2 (``width=0``: the 1x1 classifier alone, a
linear head). For an episode with supports ``(F_k, M_k)`` and query ``F_q``:

.. math::
    \\theta_0 = \\theta, \\qquad
    \\theta_{t+1} = \\theta_t - \\alpha \\nabla_{\\theta_t} L_S(\\theta_t), \\quad t = 0..T-1

    \\hat M_q = \\operatorname{softmax}\\big(\\mathrm{up}(f_{\\theta_T}(F_q))\\big)

with ``L_S`` the support cross-entropy of :func:`fsslib.models.finetune.support_loss`. Training
minimises the query loss ``L_Q(theta_T)`` over episodes. MAML differentiates through the inner
steps; the first-order approximation treats them as constants:

.. math:: \\nabla_\\theta L_Q(\\theta_T) \\approx \\nabla_{\\theta_T} L_Q(\\theta_T)

which :meth:`FOMAML.head` obtains by scoring the query with ``theta + (theta_T - theta)`` where
the difference is detached: the same value, and a gradient that reaches ``theta`` unchanged. The
backbone learns through the query features only (the support features enter ``theta_T`` only).

Open choices (stated here; the survey that motivates the family gives none of them):

1. Head: 3x3 conv to ``width = 64``, ReLU, 1x1 conv to 2, on ``layer4`` features normalised per
   cell; PyTorch's default initialisation of the two convolutions (seeded by the training seed).
2. ``inner_steps = 5``, ``inner_lr = 0.5``, plain SGD with a fixed (not learned) step size; the
   same count in training and testing (the ablation varies it: 1, 5, 10). Trained on 1-shot
   episodes, tested at K shots with the same steps and step size; the query is scored with the
   last iterate (no early stopping).
3. ``L_S`` upsamples the support logits to the mask size (rather than shrinking the masks).
4. ``anil``: the inner loop adapts the last (1x1) layer only; the 3x3 layer is meta-learned and
   fixed within an episode.
5. Episodes of a batch adapt independently; the outer loss is the query cross-entropy over the
   valid pixels of every episode of the batch (the base class's loss).
6. Adaptation runs inside the forward pass under ``torch.inference_mode(False)`` and
   ``torch.enable_grad()`` on copies of the features, so evaluation (``torch.inference_mode()``)
   adapts too; it is deterministic (no randomness in the inner loop).

Shapes as in :mod:`fsslib.models.base`; 1-way episodes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import FewShotSegmenter, ModelConfig
from .finetune import Params, autograd_ready, gradient_steps, support_loss
from .ops import resize_to
from .protonet import REAL_DATA_RECIPE as PROTOTYPE_RECIPE
from .record import BenchSettings, MethodRecord


@dataclass
class FOMAMLConfig(ModelConfig):
    feature_stage: str = "layer4"
    #: Channels of the hidden 3x3 layer; 0 makes the head one linear 1x1 classifier.
    width: int = 64
    inner_steps: int = 5
    inner_lr: float = 0.5
    #: ANIL: only the last layer adapts in the inner loop.
    anil: bool = False


def head_logits(params: Params, features: Tensor) -> Tensor:
    """``[N, 2, h, w]`` logits of ``[N, C, h, w]`` features under the head's ``params``."""
    x = features
    if "hidden.weight" in params:
        x = F.relu(F.conv2d(x, params["hidden.weight"], params["hidden.bias"], padding=1))
    return F.conv2d(x, params["classifier.weight"], params["classifier.bias"])


class FOMAML(FewShotSegmenter):
    config_class = FOMAMLConfig

    def __init__(self, config: FOMAMLConfig):
        super().__init__(config)
        self.feature_stages = (config.feature_stage,)
        channels = self.backbone.out_channels[config.feature_stage]
        self.hidden = nn.Conv2d(channels, config.width, 3, padding=1) if config.width else None
        self.classifier = nn.Conv2d(config.width or channels, 2, 1)

    def initialisation(self) -> Params:
        """``theta``: the head's parameters by name (the meta-learned start of every episode)."""
        return {name: p for name, p in self.named_parameters() if not name.startswith("backbone.")}

    def adapted_names(self) -> tuple[str, ...]:
        names = tuple(self.initialisation())
        return tuple(n for n in names if n.startswith("classifier.")) if self.config.anil else names

    # One episode at a time: features [N, C, h, w] of its K supports or its query, masks [K, H, W].
    def score(self, params: Params, features: Tensor) -> Tensor:
        """Logits ``[N, 2, h, w]`` of the head under ``params`` on features normalised per cell."""
        return head_logits(params, F.normalize(features, dim=1))

    def episode_loss(self, params: Params, support: Tensor, masks: Tensor) -> Tensor:
        """``L_S``: the support cross-entropy under ``params`` (the supports carry no gradient)."""
        return support_loss(self.score(params, support.detach()), masks)

    def adapt(self, support: Tensor, masks: Tensor, steps: int | None = None) -> list[Params]:
        """The inner loop's iterates ``[theta_0 = theta, ..., theta_T]`` on one episode's supports
        (``T = steps``, by default the config's ``inner_steps``)."""
        with torch.inference_mode(False):
            support, masks = autograd_ready(support.detach()), autograd_ready(masks)
            return gradient_steps(self.initialisation(), lambda p: self.episode_loss(p, support, masks),
                                  self.config.inner_steps if steps is None else steps, self.config.inner_lr,
                                  self.adapted_names())

    def head(self, query_feats, support_feats, support_masks, way, out_size):
        if way != 1:
            raise ValueError("FOMAML's head is a background/object classifier for 1-way episodes (way=1); "
                             f"got way={way}")
        stage, theta = self.config.feature_stage, self.initialisation()
        logits, losses = [], []
        for e in range(query_feats[stage].shape[0]):  # each episode adapts its own copy of theta
            support, masks = support_feats[stage][e], support_masks[e]
            iterates = self.adapt(support, masks)
            # theta_T as theta plus a constant: the value of theta_T, the gradient of the first-order rule.
            adapted = {k: theta[k] + (iterates[-1][k] - theta[k]).detach() for k in theta}
            logits.append(self.score(adapted, query_feats[stage][e:e + 1]))
            with torch.inference_mode(False):
                support, masks = autograd_ready(support.detach()), autograd_ready(masks)
                losses.append(torch.stack([self.episode_loss(p, support, masks)
                                           for p in (iterates[0], iterates[-1])]).detach())
        return {"logits": resize_to(torch.cat(logits), out_size, "bilinear", align_corners=False),
                "support_loss": torch.stack(losses)}  # [B, 2]: before and after the inner loop


# ---------------------------------------------------------------------- record
RECORD = MethodRecord(
    name="fomaml", display_name="FO-MAML", model_class=FOMAML,
    paper="Finn, Abbeel and Levine, Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks, ICML 2017 "
          "(first-order, on a segmentation head)",
    family="optimisation",
    # No FSS paper gives a recipe: the prototype methods' (PANet's), so that FO-MAML and ProtoNet
    # compare at an equal training budget on real data as on the synthetic benchmark.
    real_data_recipe=PROTOTYPE_RECIPE,
    bench=BenchSettings("vgg16", 417),
    main_row="FO-MAML (5 inner steps)",
    explorer_switches={"ANIL (inner loop on the last layer only)": ("anil",)},
    job_cost=2,
)
