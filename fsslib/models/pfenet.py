r"""PFENet: a training-free prior mask and a multi-scale feature enrichment module.

Tian, Zhao, Shu, Yang, Li, Jia, "Prior Guided Feature Enrichment Network for Few-Shot
Segmentation", TPAMI 2020. Constants and the order of operations follow the authors' code
(``model/PFENet.py`` of their repository); where the paper and the code differ, the code wins.

The backbone is frozen (all stages, BatchNorm in eval mode); W = ``width`` (256 in the paper).
For the query (q) and every support (s, with binary mask :math:`M_s`), with :math:`m` the mask
resized bilinearly (aligned corners) to the feature size:

Mid-level features and prototype
    .. math::
        X^{mid} = \operatorname{Drop}_{0.5}\big(\operatorname{ReLU}(W_{1\times1}
            [\,\mathrm{layer3};\ \mathrm{layer2}\,])\big) \in \mathbb{R}^{W \times h \times w},
        \qquad
        p = \frac{\sum_{xy} X_s^{mid}(x,y)\, m(x,y)}{\sum_{xy} m(x,y) + 5\cdot10^{-4}}

    layer2 is resized bilinearly (aligned corners) to layer3's size when they differ (the
    authors' rule for VGG; ResNet's layer2 and layer3 share stride 8). Query and support have
    separate projections ``W`` (``down_query`` / ``down_supp`` in the authors' code);
    ``shared_projection=True`` uses the query's for both.

Prior mask ("training-free prior generation")
    .. math::
        X_s^{h} = \mathrm{layer4}(\mathrm{layer3}_s \odot m) \odot m, \qquad
        Y_q = \operatorname{minmax}\Big(\max_{s} \cos\big(X_q^{h}(q), X_s^{h}(s)\big)\Big)

    with :math:`X_q^h` = layer4 of the query and the cosine and normalisation of
    :mod:`fsslib.models.priors` (``eps = 1e-7``). The prior gets no gradient.
    :func:`masked_high_level` and :func:`training_free_prior` compute this as written: layer4 on
    the whole masked support map, the similarity of every query cell with every support cell.
    ``fast_paths=True`` (the default) runs their twins in :mod:`fsslib.models.fast` instead
    (layer4 on the objects' box, the max over the object's cells), which give the same prior.

K shots
    The prototype and the prior are the means of the per-shot prototypes and (normalised) priors.

Feature enrichment module (FEM), scales :math:`i = 1..n` with bins :math:`b_i`
    .. math::
        Q_i &= \operatorname{AdaptiveAvgPool}_{b_i}(X_q^{mid}), \quad
        P_i = \operatorname{expand}_{b_i}(p), \quad
        Y_i = \operatorname{bilinear}_{b_i}(Y_q) \\
        F_i &= \operatorname{ReLU}\big(W^{merge}_i [Q_i; P_i; Y_i]\big)
            &&(2W + 1 \to W,\ 1\times1) \\
        F_i &\leftarrow F_i + \operatorname{ReLU}\big(W^{\alpha}_i [F_i;\ \operatorname{bilinear}_{b_i}(U_{i-1})]\big)
            \quad (i \ge 2) &&(2W \to W,\ 1\times1) \\
        F_i &\leftarrow F_i + \beta_i(F_i), \quad
            \beta_i = (\text{conv}_{3\times3} + \text{ReLU}) \times 2 \\
        Z_i &= \mathrm{cls}_i(F_i), \qquad U_i = \operatorname{bilinear}_{h \times w}(F_i) \\
        G &= \operatorname{ReLU}\big(W^{res1} [U_1; \dots; U_n]\big), \quad
            G \leftarrow G + \beta(G), \quad Z = \mathrm{cls}(G)

    where :math:`\mathrm{cls}` = conv 3x3 + ReLU + Dropout2d(0.1) + conv 1x1 (-> 2 logits).
    As in the authors' code, the previous scale's output enters scale ``i`` after being upsampled
    to the feature size and then resized to ``b_i`` (:math:`U_{i-1}`, not :math:`F_{i-1}`), and the
    inter-scale ("alpha") term is added to :math:`F_i` as a residual.
    All convolutions followed by ReLU have no bias; the last 1x1 of each classifier has one.
    The logits :math:`Z` are upsampled bilinearly (aligned corners) to the query size.

Loss
    :math:`\mathrm{CE}(Z, M_q) + 1.0 \cdot \frac{1}{n} \sum_i \mathrm{CE}(\operatorname{up}(Z_i), M_q)`,
    255 ignored, every :math:`Z_i` upsampled bilinearly (aligned corners) to the label size.

Switches that are not the authors' (off by default; the synthetic recipe turns the shortcut on)
    ``prior_shortcut=a0`` adds a learnable multiple of the centred prior to the foreground logit,
    :math:`Z_{fg} \leftarrow Z_{fg} + a\,(Y_q - \tfrac12)` with :math:`a` starting at ``a0``
    (:class:`PriorShortcut`). A head trained from scratch in few steps can settle in the
    all-background solution (foreground is a few percent of the pixels, so the loss falls while
    every pixel stays background); the shortcut starts the head at the training-free prior's
    segmentation instead. ``foreground_weight`` weights the foreground class in every
    cross-entropy (the other remedy for a rare class, compared with it in the README).

Bins
    The authors use ``[60, 30, 15, 8]`` at 473x473 input (60x60 features). ``bins=None`` (the
    default) applies the rule :math:`b_i = \lceil h / 2^{i-1} \rceil` (per side), which gives
    exactly ``60, 30, 15, 8`` at 60x60 and ``16, 8, 4, 2`` for the small CNN at 128x128. An
    explicit ``bins`` tuple follows the authors' ``ppm_scales``: a value ``<= 1`` is a fraction of
    the feature size, rounded down (their COCO configs: ``[1.0, 0.5, 0.25, 0.125]``), a larger one
    an absolute size.

Shapes as in :mod:`fsslib.models.base`; 1-way only (PFENet is a binary segmenter). Output:
``"logits"`` ``[B, 2, H, W]``, ``"aux_logits"`` (list of ``[B, 2, b_i, b_i]``), ``"prior"``
``[B, 1, h, w]``, ``"prototype"`` ``[B, W]``.

The PFENet family
    MSPF (:mod:`fsslib.models.mspf`) and MSDNet (:mod:`fsslib.models.msdnet`) build on PFENet, so
    the blocks they share live here, where they were first defined, rather than in a module of
    their own: the layers (:func:`conv_relu`, :func:`projection`, :func:`double_conv` with a
    BatchNorm option for MSDNet, :func:`classifier`), the mid-level features and prototype, the
    masked high-level features and the max-cosine prior (:func:`training_free_prior`: PFENet's
    prior and MSDNet's context mask), the enrichment module (:func:`enrichment_layers` and
    :func:`enrich`: PFENet's and MSDNet's fusion), the losses and :class:`PriorShortcut`.
    :class:`PriorGuidedSegmenter` is what PFENet and MSPF share around their heads (projections,
    loss, parameter count). The shared layers are built by functions and registered by each
    model under its own attribute names, so every model keeps its state-dict keys and creates
    its parameters in the same order as when each file built them itself.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..reference import published
from . import fast
from .base import FewShotSegmenter, ModelConfig
from .ops import IGNORE_INDEX, foreground_mask, mask_to_feature_size, masked_average_pooling, resize_to
from .priors import PRIOR_EPS, max_cosine_prior
from .record import BenchSettings, MethodRecord

__all__ = ["PFENet", "PFENetConfig", "PriorGuidedSegmenter", "PriorShortcut", "REAL_DATA_RECIPE", "enrich",
           "masked_high_level", "pyramid_bins", "training_free_prior"]

#: The authors' training recipes on real data, from their configs ``pascal_split*_resnet50.yaml``
#: and ``coco_split*_resnet101.yaml``. Keys are :class:`fsslib.engine.trainer.TrainConfig` fields
#: (``model_args`` holds :class:`PFENetConfig` fields) plus ``epochs``. COCO: the authors'
#: single-GPU setting (their 4-GPU run uses batch 32 and lr 0.02), 641x641 crops, relative bins.
REAL_DATA_RECIPE = {
    "pascal": {
        "model_args": {"backbone": "resnet50", "weights": "imagenet", "frozen_stages": "all", "freeze_bn": True,
                       "width": 256, "bins": (60, 30, 15, 8)},
        "optimizer": "sgd", "lr": 2.5e-3, "momentum": 0.9, "weight_decay": 1e-4, "schedule": "poly",
        "poly_power": 0.9, "batch_size": 4, "image_size": 473, "epochs": 200,
    },
    "coco": {
        "model_args": {"backbone": "resnet101", "weights": "imagenet", "frozen_stages": "all", "freeze_bn": True,
                       "width": 256, "bins": (1.0, 0.5, 0.25, 0.125)},
        "optimizer": "sgd", "lr": 5e-3, "momentum": 0.9, "weight_decay": 1e-4, "schedule": "poly",
        "poly_power": 0.9, "batch_size": 8, "image_size": 641, "epochs": 50,
    },
}

#: Number of scales when ``bins`` is None.
NUM_SCALES = 4


@dataclass
class PFENetConfig(ModelConfig):
    frozen_stages: tuple[str, ...] | str = "all"
    freeze_bn: bool = True
    #: Channels of the projected mid-level features and of the whole head (the authors: 256).
    width: int = 256
    #: None: ceil(h / 2**i) for i = 0..3; else the authors' ppm_scales (see the module docstring).
    bins: tuple[float, ...] | None = None
    #: Dropout2d after the mid-level projection.
    projection_dropout: float = 0.5
    #: Dropout2d inside every classifier (final and per-scale).
    classifier_dropout: float = 0.1
    #: Added to the mask area in masked average pooling.
    mask_eps: float = 5e-4
    #: Cosine and min-max epsilon of the prior mask.
    prior_eps: float = PRIOR_EPS
    #: Weight of the mean per-scale cross-entropy.
    aux_weight: float = 1.0
    #: One mid-level projection for query and support (False: separate, as the authors' code).
    shared_projection: bool = False
    #: Initial value of ``a`` in the prior shortcut ``Z_fg += a (Y - 1/2)`` (:class:`PriorShortcut`);
    #: None: the authors' head, which has no such term.
    prior_shortcut: float | None = None
    #: Weight of the foreground class in every cross-entropy (1: the authors' unweighted loss).
    foreground_weight: float = 1.0
    #: False: the prior channel is all zeros (the "w/o prior" ablation of Tian et al.): the head and
    #: the prior shortcut then receive no prior information.
    use_prior: bool = True


# ---------------------------------------------------------------------- the family's building blocks
def conv_relu(c_in: int, c_out: int, kernel: int, batch_norm: bool = False) -> nn.Sequential:
    """Convolution without bias (padding keeps the size), BatchNorm if ``batch_norm`` (MSDNet), ReLU."""
    conv = nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)) if batch_norm \
        else nn.Sequential(conv, nn.ReLU(inplace=True))


def projection(c_in: int, width: int, dropout: float, batch_norm: bool = False) -> nn.Sequential:
    """Mid-level down-projection: 1x1 conv (no bias), [BatchNorm,] ReLU, Dropout2d."""
    return nn.Sequential(*conv_relu(c_in, width, 1, batch_norm), nn.Dropout2d(dropout))


def double_conv(width: int, batch_norm: bool = False) -> nn.Sequential:
    """Two 3x3 conv [+ BatchNorm] + ReLU; the caller adds the residual."""
    return nn.Sequential(*conv_relu(width, width, 3, batch_norm), *conv_relu(width, width, 3, batch_norm))


def classifier(width: int, dropout: float, classes: int = 2) -> nn.Sequential:
    """3x3 conv (no bias), ReLU, Dropout2d, 1x1 conv (with bias) to the logits."""
    return nn.Sequential(*conv_relu(width, width, 3), nn.Dropout2d(dropout), nn.Conv2d(width, classes, 1))


def pyramid_bins(size: Sequence[int], bins: Sequence[float] | None = None) -> list[tuple[int, int]]:
    """The pooled sizes ``(h_i, w_i)`` of the scales for features of ``size = (h, w)``.

    ``bins=None``: ``ceil(h / 2**i)`` for ``i = 0..3`` (60 -> 60, 30, 15, 8; 16 -> 16, 8, 4, 2).
    Otherwise the authors' ``ppm_scales``: ``b <= 1`` -> ``int(h * b)``, else ``b``.
    """
    h, w = int(size[0]), int(size[1])
    if bins is None:
        return [(math.ceil(h / 2 ** i), math.ceil(w / 2 ** i)) for i in range(NUM_SCALES)]
    return [(int(h * b), int(w * b)) if b <= 1.0 else (int(b), int(b)) for b in bins]


def mid_level_features(low: Tensor, high: Tensor, low_first: bool) -> Tensor:
    """Concatenate layer2 (``low``) and layer3 (``high``) features along channels, at layer3's size.

    ``[N, C2, h2, w2]``, ``[N, C3, h, w]`` -> ``[N, C2 + C3, h, w]``; layer2 is resized bilinearly
    (aligned corners) when its size differs. ``low_first``: MSPF's and MSDNet's order
    [layer2; layer3]; PFENet concatenates [layer3; layer2].
    """
    low = resize_to(low, high.shape[-2:], "bilinear", align_corners=True)
    return torch.cat([low, high] if low_first else [high, low], dim=1)


def support_prototype(support_mid: Tensor, foreground: Tensor, shots: tuple[int, int], eps: float) -> Tensor:
    """Mean over shots of the masked average pooling of ``[B*K, C, h, w]`` with ``[B*K, H, W]`` masks -> ``[B, C]``."""
    prototypes = masked_average_pooling(support_mid, foreground, "resize_mask", eps)
    return prototypes.unflatten(0, shots).mean(dim=1)


def no_autocast(device: torch.device):
    """Full precision for the prior's cosine similarities even inside a mixed-precision region."""
    return torch.autocast(device_type=device.type, enabled=False)


def masked_high_level(backbone, support_layer3: Tensor, foreground: Tensor) -> Tensor:
    r""":math:`X_s^h = \mathrm{layer4}(\mathrm{layer3}_s \odot m)` for supports ``[N, C3, h, w]`` and
    binary masks ``[N, H, W]`` -> ``[N, C4, h, w]``.

    ``m`` is the mask resized bilinearly (aligned corners) to layer3's size. No gradient: the
    prior is training-free. (:func:`fsslib.models.fast.masked_high_level` runs layer4 on the
    objects' box only.)
    """
    with torch.no_grad():
        m = mask_to_feature_size(foreground, support_layer3.shape[-2:]).to(support_layer3.dtype)
        return backbone.run_stage("layer4", support_layer3 * m.unsqueeze(1))


def training_free_prior(query_high: Tensor, support_high: Tensor, foreground: Tensor, shots: tuple[int, int],
                        size: Sequence[int], eps: float = PRIOR_EPS) -> Tensor:
    r""":math:`Y_q = \frac{1}{K} \sum_k \operatorname{bilinear}_{size}\big(\operatorname{minmax}(\max_s
    \cos(X_q^h(q), X_{s,k}^h(s) \odot m_k(s)))\big)`, ``[B, 1, *size]``, without gradient.

    PFENet's prior (``support_high`` = :func:`masked_high_level`) and MSDNet's context mask
    (``support_high`` = the support image's own layer4), computed in float32.

    Args:
        query_high: ``[B, C4, h4, w4]``.
        support_high: ``[B*K, C4, h4', w4']``, masked here by ``m_k``, the binary mask resized
            bilinearly (aligned corners) to that size.
        foreground: binary support masks ``[B*K, H, W]``.
        shots: ``(B, K)``.
        size: the mid-level feature size each shot's prior is resized to before the mean.
    """
    with torch.no_grad(), no_autocast(support_high.device):
        m = mask_to_feature_size(foreground, support_high.shape[-2:]).to(torch.float32)
        support = (support_high.float() * m.unsqueeze(1)).unflatten(0, shots)  # [B, K, C4, h4', w4']
        per_shot = max_cosine_prior(query_high.float(), support, eps)  # [B, K, h4, w4]
        return resize_to(per_shot, size, "bilinear", align_corners=True).mean(dim=1, keepdim=True)


def enrichment_layers(width: int, scales: int, batch_norm: bool = False
                      ) -> tuple[nn.ModuleList, nn.ModuleList, nn.ModuleList]:
    r"""The feature enrichment module's per-scale layers ``(merge, alpha, beta)``: :math:`W^{merge}_i`
    (2W + 1 -> W, 1x1), :math:`W^{\alpha}_i` (2W -> W, 1x1, scales 2..n) and :math:`\beta_i`
    (two 3x3), each conv without bias and followed by [BatchNorm (MSDNet),] ReLU."""
    merge = nn.ModuleList(conv_relu(2 * width + 1, width, 1, batch_norm) for _ in range(scales))
    alpha = nn.ModuleList(conv_relu(2 * width, width, 1, batch_norm) for _ in range(scales - 1))
    beta = nn.ModuleList(double_conv(width, batch_norm) for _ in range(scales))
    return merge, alpha, beta


def enrich(query: Tensor, prototype: Tensor, prior: Tensor, bins: Sequence[tuple[int, int]],
           merge: nn.ModuleList, alpha: nn.ModuleList, beta: nn.ModuleList,
           classifiers: nn.ModuleList | None = None) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    r"""The feature enrichment module's scales (equations in the module docstring): ``[B, W, h, w]``,
    ``[B, W]``, ``[B, 1, h, w]`` -> :math:`F_i` ``[B, W, *bins[i]]``, :math:`U_i` ``[B, W, h, w]``
    and the per-scale logits :math:`Z_i = \mathrm{cls}_i(F_i)` (empty without ``classifiers``).

    The layers are those of :func:`enrichment_layers`; PFENet merges the :math:`U_i` with
    ``res1``/``res2``, MSDNet with its bare 1x1 ``res1``. Each :math:`Z_i` is computed as soon as
    :math:`F_i` is, the order in which autograd then sums the gradients reaching :math:`F_i`."""
    size = query.shape[-2:]
    features, upsampled, logits = [], [], []
    for i, bin_size in enumerate(bins):
        query_bin = F.adaptive_avg_pool2d(query, bin_size)
        prototype_bin = prototype[:, :, None, None].expand(-1, -1, *bin_size)
        prior_bin = resize_to(prior, bin_size, "bilinear", align_corners=True)
        x = merge[i](torch.cat([query_bin, prototype_bin, prior_bin], dim=1))
        if i > 0:
            previous = resize_to(upsampled[-1], bin_size, "bilinear", align_corners=True)  # U_{i-1}
            x = alpha[i - 1](torch.cat([x, previous], dim=1)) + x
        x = beta[i](x) + x
        features.append(x)
        if classifiers is not None:
            logits.append(classifiers[i](x))
        upsampled.append(resize_to(x, size, "bilinear", align_corners=True))
    return features, upsampled, logits


def segmentation_ce(logits: Tensor, target: Tensor, foreground_weight: float = 1.0) -> Tensor:
    """Cross-entropy of ``[B, 2, H, W]`` logits and ``[B, H, W]`` labels, 255 ignored, the foreground
    class weighted by ``foreground_weight`` (1: unweighted, the authors' loss)."""
    weight = None if foreground_weight == 1.0 else logits.new_tensor([1.0, foreground_weight])
    return F.cross_entropy(logits, target, weight=weight, ignore_index=IGNORE_INDEX)


def auxiliary_ce(aux_logits: Sequence[Tensor], target: Tensor, foreground_weight: float = 1.0) -> Tensor:
    """Mean cross-entropy (255 ignored) of per-scale logits, each upsampled (bilinear, aligned) to the label."""
    losses = [segmentation_ce(resize_to(z, target.shape[-2:], "bilinear", align_corners=True), target,
                              foreground_weight) for z in aux_logits]
    return torch.stack(losses).mean()


class PriorShortcut(nn.Module):
    r"""``Z_fg <- Z_fg + a (Y - 1/2)``: the training-free prior added to the foreground logit.

    ``a`` is one learnable scalar starting at ``init``; the prior ``[B, 1, h, w]`` is resized
    (bilinear, aligned corners) to the logits ``[B, 2, h', w']``. With ``a > 0`` the untrained
    head already segments where the prior exceeds 1/2, so training starts outside the
    all-background solution; the head can learn to rely on the prior less (``a`` -> 0).
    """

    def __init__(self, init: float):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init)))

    def forward(self, logits: Tensor, prior: Tensor) -> Tensor:
        prior = resize_to(prior.to(logits.dtype), logits.shape[-2:], "bilinear", align_corners=True)
        background = torch.zeros_like(prior)
        return logits + torch.cat([background, self.scale * (prior - 0.5)], dim=1)


# ---------------------------------------------------------------------- the family's base and PFENet
class PriorGuidedSegmenter(FewShotSegmenter):
    """What PFENet and MSPF share around their heads.

    A frozen backbone whose supports stop at layer3 (layer4 runs on the masked layer3), separate
    mid-level projections ``project_query`` / ``project_support`` (built first, so parameters are
    created in the same order in both), the prototype, and the loss: cross-entropy of the logits
    plus ``aux_weight`` times the mean cross-entropy of the per-scale logits, if there are any.
    Subclasses list the modules they run in :meth:`active_modules`.
    """

    feature_stages = ("layer2", "layer3", "layer4")
    support_stages = ("layer2", "layer3")  # support layer4 is computed on the masked layer3
    #: Mid-level concatenation order: [layer2; layer3] (MSPF) or [layer3; layer2] (PFENet).
    layer2_first = False

    def __init__(self, config):
        super().__init__(config)
        channels = self.backbone.out_channels
        mid = channels["layer2"] + channels["layer3"]
        #: n, the number of scales.
        self.num_scales = NUM_SCALES if config.bins is None else len(config.bins)
        self.project_query = projection(mid, config.width, config.projection_dropout)
        self.project_support = projection(mid, config.width, config.projection_dropout)

    def mid_level(self, query_feats: dict[str, Tensor], support_feats: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """:math:`X^{mid}` of the query ``[B, W, h, w]`` and of the supports ``[B*K, W, h, w]``."""
        query = self.project_query(mid_level_features(query_feats["layer2"], query_feats["layer3"],
                                                      self.layer2_first))
        project_support = self.project_query if self.config.shared_projection else self.project_support
        support = project_support(mid_level_features(support_feats["layer2"].flatten(0, 1),
                                                     support_feats["layer3"].flatten(0, 1), self.layer2_first))
        return query, support

    def loss(self, output, batch):
        target = batch["query_mask"]
        main = segmentation_ce(output["logits"], target, self.config.foreground_weight)
        if not output["aux_logits"]:
            return main, {"query_ce": main.item()}
        aux = auxiliary_ce(output["aux_logits"], target, self.config.foreground_weight)
        return main + self.config.aux_weight * aux, {"query_ce": main.item(), "aux_ce": aux.item()}

    def active_modules(self) -> list[nn.Module]:
        """The modules the current configuration runs."""
        raise NotImplementedError

    def learnable_parameters(self) -> int:
        """Trainable parameters that the current configuration uses."""
        return sum(p.numel() for m in self.active_modules() for p in m.parameters() if p.requires_grad)


class PFENet(PriorGuidedSegmenter):
    config_class = PFENetConfig

    def __init__(self, config: PFENetConfig):
        super().__init__(config)  # backbone, project_query, project_support
        width, scales = config.width, self.num_scales
        self.merge, self.alpha, self.beta = enrichment_layers(width, scales)
        self.inner_cls = nn.ModuleList(classifier(width, config.classifier_dropout) for _ in range(scales))
        self.res1 = conv_relu(scales * width, width, 1)
        self.res2 = double_conv(width)
        self.cls = classifier(width, config.classifier_dropout)
        self.shortcut = PriorShortcut(config.prior_shortcut) if config.prior_shortcut is not None else None

    # ------------------------------------------------------------------ pieces
    def prior_mask(self, query_layer4: Tensor, support_layer3: Tensor, foreground: Tensor, shots: tuple[int, int],
                   size: Sequence[int]) -> Tensor:
        """Shot-averaged max-cosine prior ``[B, 1, *size]`` (no gradient).

        Args:
            query_layer4: ``[B, C4, h4, w4]``.
            support_layer3: ``[B*K, C3, h, w]``.
            foreground: binary support masks ``[B*K, H, W]``.
            shots: ``(B, K)``.
            size: the mid-level feature size the per-shot priors are resized to before averaging.
        """
        high_level, prior = ((fast.masked_high_level, fast.training_free_prior) if self.config.fast_paths
                             else (masked_high_level, training_free_prior))
        support_high = high_level(self.backbone, support_layer3, foreground)  # layer4(layer3_s * m)
        return prior(query_layer4, support_high, foreground, shots, size, self.config.prior_eps)

    def enrich(self, query: Tensor, prototype: Tensor, prior: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Feature enrichment module: ``[B, W, h, w]``, ``[B, W]``, ``[B, 1, h, w]`` -> merged
        features ``[B, W, h, w]`` and per-scale logits ``[B, 2, h_i, w_i]``."""
        bins = pyramid_bins(query.shape[-2:], self.config.bins)
        _, upsampled, inner = enrich(query, prototype, prior, bins, self.merge, self.alpha, self.beta, self.inner_cls)
        merged = self.res1(torch.cat(upsampled, dim=1))
        return self.res2(merged) + merged, inner

    # ------------------------------------------------------------------ head
    def head(self, query_feats, support_feats, support_masks, way, out_size):
        if way != 1:
            raise ValueError(f"PFENet segments one class per episode (way=1), got way={way}")
        batch, shots = support_masks.shape[:2]
        foreground = foreground_mask(support_masks).flatten(0, 1)  # [B*K, H, W]
        query, support = self.mid_level(query_feats, support_feats)
        prototype = support_prototype(support, foreground, (batch, shots), self.config.mask_eps)
        prior = self.prior_mask(query_feats["layer4"], support_feats["layer3"].flatten(0, 1), foreground,
                                (batch, shots), query.shape[-2:])
        if not self.config.use_prior:  # the paper's ablation without the prior: a constant channel
            prior = torch.zeros_like(prior)
        merged, inner = self.enrich(query, prototype, prior)
        logits = self.cls(merged)
        if self.shortcut is not None:
            logits = self.shortcut(logits, prior)
        logits = resize_to(logits, out_size, "bilinear", align_corners=True)
        return {"logits": logits, "aux_logits": inner, "prior": prior, "prototype": prototype}

    def active_modules(self) -> list[nn.Module]:
        """The modules the current configuration runs (the unused support projection is left out)."""
        modules = [self.backbone, self.project_query, self.merge, self.alpha, self.beta, self.inner_cls,
                   self.res1, self.res2, self.cls]
        if self.shortcut is not None:
            modules.append(self.shortcut)
        return modules if self.config.shared_projection else modules + [self.project_support]


# ---------------------------------------------------------------------- record
def published_result(shot: int, method: str = "PFENet") -> str:
    """The paper's PASCAL-5i mean of ``method`` at ``shot`` shots, or "" when it is not in the published data."""
    entry = published(method).get(f"pascal5i_{shot}shot")
    return f"{entry['mean']:.1f}" if entry else ""


#: Synthetic benchmark, shared by the prior-mask heads (PFENet, MSPF, MSDNet):
#:
#: - the backbone stays frozen entirely: the prior needs no training and the heads learn on top;
#: - so an image has the same features in every episode, and the heads train on features computed
#:   once per image (``engine.feature_cache``): 2-3x fewer seconds per step, at the price of no
#:   image augmentation (a cached feature map cannot be flipped or cropped with its mask).
PRIOR_HEAD_BACKBONE = {"frozen_stages": "all"}
PRIOR_HEAD_TRAINING = {"cache_features": True, "augment": False}
#: A head switch of the synthetic recipe that is not the authors' (their real-data recipes keep
#: their heads). Trained from scratch in the default profile's 150 steps, the PFENet and MSPF
#: heads ended some training seeds predicting background everywhere. Of the candidates of
#: ``python -m fsslib collapse``, only the prior shortcut (``Z_fg += a (prior - 1/2)``, a learnable,
#: from 3), with or without warm-up, left no seed collapsed or below half of ProtoNet on PFENet,
#: MSPF and MSPF's ASPP baseline (15 of 15 seeds each); the simpler one, without warm-up, is on for
#: every variant of their tables alike.
PRIOR_SHORTCUT = {"prior_shortcut": 3.0}
#: The shortened (default-profile) recipe's learning rate for heads trained from scratch, which
#: would otherwise not leave the all-background solution in 150 steps.
SHORT_RECIPE_LR = 2e-3

RECORD = MethodRecord(
    name="pfenet", display_name="PFENet", model_class=PFENet,
    family="prior-guided",
    paper="Tian, Zhao, Shu, Yang, Li and Jia, Prior Guided Feature Enrichment Network for Few-Shot "
          "Segmentation, TPAMI 2020",
    synthetic_model_args={**PRIOR_HEAD_BACKBONE, **PRIOR_SHORTCUT},
    synthetic_training=PRIOR_HEAD_TRAINING,
    # The head width of MSPF's synthetic rows, so that MSPF - PFENet compares equal widths.
    synthetic_head={"width": 64},
    short_recipe={"lr": SHORT_RECIPE_LR},
    real_data_recipe=REAL_DATA_RECIPE,
    bench=BenchSettings("resnet50", 473, authors_ratios=(10.9, 31.3)),
    main_row="PFENet", main_row_args={"width": 64},
    paper_result=published_result,
    job_cost=1,
)
