r"""MSPF: multi-scale prior masks and weighted adaptive multi-scale feature fusion.

"基于多尺度先验信息融合的小样本语义分割" ("Few-shot semantic segmentation based on multi-scale
prior information fusion"), a journal article in Chinese with an English abstract. It builds on
PFENet (:mod:`fsslib.models.pfenet`, whose shared blocks and base class
:class:`~fsslib.models.pfenet.PriorGuidedSegmenter` this module imports): a frozen ImageNet
ResNet-50, a prototype from masked average pooling of mid-level support features, a
training-free prior from high-level features, and a multi-scale fusion module followed by a
convolutional classifier. Several of its equations are illegible in the published text; they are
reconstructed below from the prose, the figure captions and PFENet, and every choice this
required is listed at the end.

Notation: :math:`i = 1..n` (n = 4) scales with sizes :math:`b_i` (the bins of
:func:`fsslib.models.pfenet.pyramid_bins`: ``ceil(h / 2**(i-1))`` per side, e.g. 60, 30, 15, 8 at
473x473 input and 16, 8, 4, 2 for the small CNN at 128x128); :math:`m` the binary support mask
resized bilinearly (aligned corners) to whatever size it multiplies; W = ``width`` channels.

Features (section 3.1)
    Mid-level :math:`X^{mid} = \operatorname{Drop}_{0.5}(\operatorname{ReLU}(W_{1\times1}
    [\mathrm{layer2}; \mathrm{layer3}]))` for query and support, as PFENet (layer2 resized to
    layer3's size when they differ); prototype :math:`p` = masked average pooling of
    :math:`X_s^{mid}` (eps 5e-4); K shots: mean of the per-shot prototypes.

Multi-scale prior masks (section 3.2, equations 1-6; :func:`fsslib.models.priors.multi_scale_mean_cosine_priors`)
    .. math::
        X_s^{h} &= \mathrm{layer4}(\mathrm{layer3}_s \odot m) &&\text{(eq. 1)} \\
        c^{i}(q) &= \frac{\sum_s m^{i}(s) \cos(X_q^{i}(q), X_s^{i}(s))}{\sum_s m^{i}(s) + \epsilon},
            \quad Y^{i} = \operatorname{minmax}(c^{i}) &&\text{(eqs. 2-4, } \epsilon = 10^{-7}) \\
        X_q^{i+1} &= \operatorname{AvgPool}_{b_{i+1}}(X_q^{i} \odot Y^{i}) &&\text{(eq. 5)} \\
        X_s^{i+1} &= \operatorname{bilinear}_{b_{i+1}}(X_s^{i}) \odot m^{i+1} &&\text{(eq. 6)}

    with :math:`X_q^1` = query layer4, :math:`X_s^1 = X_s^h \odot m^1`; the priors module computes
    every similarity on whole maps, and ``fast_paths=True`` (the default) runs the twins of
    :mod:`fsslib.models.fast` (layer4 and the similarities on the object's cells), which give
    the same priors. K shots: at every scale
    the mean of the per-shot normalised priors (which then filters the query in eq. 5).
    ``multi_scale_prior=False`` (the paper's single-scale baseline): :math:`Y^1` only, resized
    bilinearly (aligned corners) to every :math:`b_i` ("downsampled into the fusion").
    ``prior_connection=False``: eq. 5 without :math:`\odot Y^{i}` (the "inter-scale connection"
    of the prior module, which the paper motivates as "information interaction between scales").

Weighted adaptive feature fusion (section 3.3, equations 7-16)
    .. math::
        F^{i}_{mix} &= \operatorname{ReLU}\big(W^{i}_{1\times1}
            [\operatorname{AvgPool}_{b_i}(X_q^{mid});\ \operatorname{expand}_{b_i}(p);\ Y^{i}]\big)
            &&(2W + 1 \to W;\ \text{eqs. 7-8}) \\
        \tilde F^{1} &= \alpha_1(F^{1}_{mix}), \quad
        \tilde F^{i} = \alpha_i\Big(\operatorname{ReLU}\big(W^{i}_{c}
            [F^{i}_{mix};\ \operatorname{bilinear}_{b_i}(\tilde F^{i-1})]\big)\Big)
            &&(2W \to W;\ \text{eqs. 9-11}) \\
        F^{i} &= F^{i}_{mix} + \tilde F^{i} &&\text{(eq. 12)} \\
        L_{aux} &= \tfrac{1}{n} \textstyle\sum_i \mathrm{CE}(\operatorname{up}(\mathrm{cls}_i(F^{i})), M_q)
            &&\text{(eq. 13)} \\
        U^{i} &= \operatorname{bilinear}_{h \times w}(F^{i}), \quad
        A = \sigma\Big(W_{3\times3}\, \operatorname{ReLU}\big(W_{1\times1} [U^1; \dots; U^n]\big)\Big)
            \in [0, 1]^{n \times h \times w} &&\text{(eqs. 14-16)} \\
        G &= \textstyle\sum_i A_i \odot U^{i}

    with :math:`\alpha_i(x) = \operatorname{ReLU}(W_{3\times3}\operatorname{ReLU}(W_{3\times3} x))`
    (eq. 10). ``scale_interaction=False`` removes eqs. 9-12 (:math:`F^{i} = F^{i}_{mix}`);
    ``scale_weights=False`` gives :math:`G = \sum_i U^{i}` (the paper's plain sum);
    ``aux_loss=False`` drops the per-scale classifiers and :math:`L_{aux}`.

    ``multi_scale_fusion=False`` is the paper's baseline fusion (its Figure 5): eqs. 7-8 are kept,
    everything after them is replaced by CANet's ASPP (the paper cites CANet for it), and there is
    no auxiliary loss whatever ``aux_loss`` says:

    .. math::
        G = \operatorname{ASPP}\Big(\operatorname{ReLU}\big(W_{1\times1}
            [\operatorname{bilinear}_{h \times w}(F^{1}_{mix}); \dots]\big)\Big)

    ASPP (CANet's ``layer6_*``/``layer7``): global average pooling + 1x1, 1x1, and 3x3 with
    dilations 6, 12, 18, each conv (with bias) + ReLU + Dropout2d(0.5); concatenation (5W) ->
    1x1 conv + ReLU + Dropout2d(0.5) -> W.

Classifier (section 3.1, Figure 2) and loss
    .. math::
        G \leftarrow G + \alpha(G), \qquad Z = \mathrm{cls}(G), \qquad
        L = \mathrm{CE}(\operatorname{up}(Z), M_q) + 1.0 \cdot L_{aux}

    "a conv block of two 3x3 convolutions with a residual connection, then a head of 3x3 conv,
    1x1 conv, softmax": PFENet's ``res2`` and ``cls`` (3x3 + ReLU + Dropout2d(0.1) + 1x1; the
    softmax is inside the cross-entropy). Per-scale classifiers ``cls_i`` have the same head.
    Logits are upsampled bilinearly (aligned corners) to the query size; 255 is ignored.

Choices where the paper is silent or its text was lost (each one a config field where it is a switch)
    1. Mean over "support pixels" (eq. 2) = mask-weighted mean over the object (soft mask at the
       scale's size); the cosine puts eps 1e-7 on the product of norms, as PFENet.
    2. The support's layer4 features are masked at scale 1 too (:math:`X_s^1 = X_s^h \odot m^1`),
       as PFENet does before its prior and as eq. 6 does at every later scale. At scale 1 the
       mask-weighted mean makes this matter only through eps; at later scales it does matter,
       because eq. 6 resizes X_s^1 bilinearly, mixing masked and unmasked neighbours.
    3. Prior scales = the fusion bins, so :math:`Y^i` enters scale i directly; "pool" in eq. 5 is
       adaptive average pooling (eq. 7's pooling); support resizing is bilinear, aligned corners.
    4. K shots: per-shot priors averaged at each scale (PFENet's rule); the paper's "K-shot
       averages the support features" is read as averaging prototypes and priors.
    5. The 1x1 fusion of eq. 8 and the inter-scale 1x1 of eq. 11 are followed by ReLU (PFENet's
       ``init_merge`` and ``alpha_conv``); :math:`\alpha_i` and :math:`W_c^i` are separate per scale;
       the chain passes :math:`\tilde F^{i-1}` (before the residual: "add the residual after the
       top-down pass"), resized directly from :math:`b_{i-1}` to :math:`b_i`.
    6. "Horizontal/vertical interaction" (Table 4): vertical = the top-down connection of eq. 11
       (the paper: "information fusion in the vertical direction"), horizontal = the per-scale
       refinement :math:`\alpha_i` with its residual; the table ablates them together, so one
       switch, ``scale_interaction``, removes eqs. 9-12.
    7. "Inter-scale connection" (Table 4) is the prior module's eq. 5 filtering (the paper: "in the
       prior mask generation module we add the inter-scale connection"): ``prior_connection``.
    8. Eq. 14 upsamples to "the query image size"; here to the query *feature* size (the finest
       scale, as PFENet merges its scales), since 4 x 256 channels at 473x473 would need ~0.9 GB
       per image; the logits are upsampled at the end.
    9. Baseline (ASPP) input: the upsampled :math:`F^i_{mix}` concatenated and reduced by a 1x1 conv
       + ReLU (PFENet's ``res1``); the classifier is the same in both modes.
    10. Bias: convolutions followed by ReLU have none (PFENet's convention) except in CANet's ASPP;
        the last conv before softmax or sigmoid has one. Loss weight of :math:`L_{aux}` = 1.0
        (PFENet's), dropout rates PFENet's. Mid-level projections are separate for query and
        support (PFENet's code); ``shared_projection=True`` shares them.
    11. Not the paper's, off by default: ``prior_shortcut`` and ``foreground_weight`` as in
        :mod:`fsslib.models.pfenet` (the shortcut adds the finest prior :math:`Y^1` to the final
        foreground logit), for heads trained in few steps from scratch.

Shapes as in :mod:`fsslib.models.base`; 1-way only. Output: ``"logits"`` ``[B, 2, H, W]``,
``"aux_logits"`` (list of ``[B, 2, b_i, b_i]``, empty without the auxiliary loss), ``"priors"``
(list of ``[B, 1, b_i, b_i]``), ``"scale_features"`` (list of :math:`F^i`, or :math:`F^i_{mix}`
with ASPP), ``"scale_weights"`` (:math:`A`, ``[B, n, h, w]``, only with scale weights),
``"prototype"`` ``[B, W]``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import fast
from .base import ModelConfig
from .ops import foreground_mask, resize_to
from .pfenet import RECORD as PFENET
from .pfenet import (
    PriorGuidedSegmenter,
    PriorShortcut,
    classifier,
    conv_relu,
    double_conv,
    masked_high_level,
    no_autocast,
    pyramid_bins,
    support_prototype,
)
from .priors import PRIOR_EPS, multi_scale_mean_cosine_priors
from .record import BenchSettings, MethodRecord

__all__ = ["ASPP", "MSPF", "MSPFConfig", "PAPER_ABLATIONS", "REAL_DATA_RECIPE"]

#: The paper's training recipe (section 4.1). Keys are :class:`fsslib.engine.trainer.TrainConfig`
#: fields (``model_args`` holds :class:`MSPFConfig` fields) plus ``epochs``. The paper states
#: optimizer, momentum, weight decay, learning rate, batch size and epochs; the poly schedule and
#: the 473x473 crop are PFENet's, which MSPF builds on, and are not stated in the paper.
REAL_DATA_RECIPE = {
    "pascal": {
        "model_args": {"backbone": "resnet50", "weights": "imagenet", "frozen_stages": "all", "freeze_bn": True,
                       "width": 256},
        "optimizer": "sgd", "lr": 5e-3, "momentum": 0.9, "weight_decay": 1e-4, "schedule": "poly",
        "poly_power": 0.9, "batch_size": 4, "image_size": 473, "epochs": 200,
    },
    "coco": {
        "model_args": {"backbone": "resnet50", "weights": "imagenet", "frozen_stages": "all", "freeze_bn": True,
                       "width": 256},
        "optimizer": "sgd", "lr": 5e-3, "momentum": 0.9, "weight_decay": 1e-4, "schedule": "poly",
        "poly_power": 0.9, "batch_size": 8, "image_size": 473, "epochs": 50,
    },
}

#: Config overrides that reproduce the rows of the paper's ablation tables (PASCAL-5i fold 0,
#: 1-shot, ResNet-50; the paper's mIoU in the comment). The full model is ``{}`` (62.19).
PAPER_ABLATIONS: dict[str, dict[str, bool]] = {
    # Table 3: multi-scale prior / multi-scale fusion (off = ASPP, no auxiliary loss)
    "table3_baseline": {"multi_scale_prior": False, "multi_scale_fusion": False},  # 56.77
    "table3_fusion_only": {"multi_scale_prior": False},  # 61.79
    "table3_prior_only": {"multi_scale_fusion": False},  # 61.63
    "table3_full": {},  # 62.19
    # Table 4: inter-scale connection (prior) / horizontal-vertical interaction (fusion) / scale weights
    "table4_none": {"prior_connection": False, "scale_interaction": False, "scale_weights": False},  # 57.26
    "table4_connection": {"scale_interaction": False, "scale_weights": False},  # 60.06
    "table4_interaction": {"prior_connection": False, "scale_weights": False},  # 55.27
    "table4_connection_interaction": {"scale_weights": False},  # 61.00
    "table4_full": {},  # 62.19
    # Table 5: auxiliary loss
    "table5_segmentation_loss_only": {"aux_loss": False},  # 60.23
    "table5_full": {},  # 62.19
}


@dataclass
class MSPFConfig(ModelConfig):
    frozen_stages: tuple[str, ...] | str = "all"
    freeze_bn: bool = True
    #: Channels of the projected mid-level features and of the head (256 on real data).
    width: int = 256
    #: None: ceil(h / 2**i), i = 0..3; else PFENet's ppm_scales convention (pfenet.pyramid_bins).
    bins: tuple[float, ...] | None = None
    #: Priors at every scale by the cascade of section 3.2 (False: one prior, resized to each scale).
    multi_scale_prior: bool = True
    #: Filter the query features with the previous scale's prior before pooling (eq. 5).
    prior_connection: bool = True
    #: How support mask and features reach each prior scale: "bilinear" (aligned corners, the
    #: authors' resizing; samples them) or "area" (average pooling; keeps small objects).
    support_resize: str = "bilinear"
    #: The weighted adaptive fusion of section 3.3 (False: the baseline's ASPP, no auxiliary loss).
    multi_scale_fusion: bool = True
    #: Horizontal (per-scale refinement) and vertical (top-down) interaction, eqs. 9-12.
    scale_interaction: bool = True
    #: Learned per-pixel scale weights, eqs. 14-16 (False: plain sum of the scales).
    scale_weights: bool = True
    #: Per-scale classifiers and their mean cross-entropy (eq. 13); only with multi_scale_fusion.
    aux_loss: bool = True
    aux_weight: float = 1.0
    projection_dropout: float = 0.5
    classifier_dropout: float = 0.1
    mask_eps: float = 5e-4
    prior_eps: float = PRIOR_EPS
    shared_projection: bool = False
    #: Dilations of the ASPP's 3x3 branches (CANet).
    aspp_rates: tuple[int, ...] = (6, 12, 18)
    aspp_dropout: float = 0.5
    #: Initial ``a`` of PFENet's prior shortcut ``Z_fg += a (Y^1 - 1/2)`` on the final logits
    #: (:class:`fsslib.models.pfenet.PriorShortcut`); None: the paper's head (choice 11).
    prior_shortcut: float | None = None
    #: Weight of the foreground class in every cross-entropy (1: unweighted, the paper's).
    foreground_weight: float = 1.0


def _conv_relu_dropout(c_in: int, c_out: int, kernel: int, dilation: int, dropout: float) -> nn.Sequential:
    """Conv (with bias, size-preserving padding), ReLU, Dropout2d: one CANet ASPP layer."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, padding=dilation * (kernel // 2), dilation=dilation),
                         nn.ReLU(), nn.Dropout2d(dropout))


class ASPP(nn.Module):
    """CANet's atrous spatial pyramid pooling: ``[B, W, h, w] -> [B, W, h, w]``.

    Branches: image-level (global average pooling, 1x1, broadcast back), 1x1, and one 3x3 per
    dilation rate; each conv has a bias and is followed by ReLU and Dropout2d. The concatenation
    is reduced by a 1x1 conv + ReLU + Dropout2d.
    """

    def __init__(self, width: int, rates: Sequence[int] = (6, 12, 18), dropout: float = 0.5):
        super().__init__()
        self.image_pool = _conv_relu_dropout(width, width, 1, 1, dropout)
        self.branches = nn.ModuleList([_conv_relu_dropout(width, width, 1, 1, dropout),
                                       *(_conv_relu_dropout(width, width, 3, rate, dropout) for rate in rates)])
        self.project = _conv_relu_dropout(width * (len(rates) + 2), width, 1, 1, dropout)

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.image_pool(F.adaptive_avg_pool2d(x, 1)).expand(-1, -1, *x.shape[-2:])
        return self.project(torch.cat([pooled, *(b(x) for b in self.branches)], dim=1))


class MSPF(PriorGuidedSegmenter):
    config_class = MSPFConfig
    layer2_first = True

    def __init__(self, config: MSPFConfig):
        super().__init__(config)  # backbone, project_query, project_support
        width, scales = config.width, self.num_scales
        # Every path is built, so any switch can be flipped on a built (or trained) model;
        # learnable_parameters() counts the modules the current configuration runs.
        self.merge = nn.ModuleList(conv_relu(2 * width + 1, width, 1) for _ in range(scales))  # eq. 8
        self.refine = nn.ModuleList(double_conv(width) for _ in range(scales))  # alpha_i, eq. 10
        self.connect = nn.ModuleList(conv_relu(2 * width, width, 1) for _ in range(scales - 1))  # eq. 11
        self.aux_cls = nn.ModuleList(classifier(width, config.classifier_dropout) for _ in range(scales))  # eq. 13
        self.weight_net = nn.Sequential(*conv_relu(scales * width, width, 1),  # eqs. 15-16
                                        nn.Conv2d(width, scales, 3, padding=1))
        self.aspp_merge = conv_relu(scales * width, width, 1)
        self.aspp = ASPP(width, config.aspp_rates, config.aspp_dropout)
        self.block = double_conv(width)
        self.cls = classifier(width, config.classifier_dropout)
        self.shortcut = PriorShortcut(config.prior_shortcut) if config.prior_shortcut is not None else None

    # ------------------------------------------------------------------ section 3.2
    def prior_masks(self, query_layer4: Tensor, support_layer3: Tensor, foreground: Tensor,
                    shots: tuple[int, int], sizes: Sequence[tuple[int, int]]) -> list[Tensor]:
        """Shot-averaged priors ``[B, 1, *sizes[i]]`` (no gradient).

        Args:
            query_layer4: ``[B, C4, h, w]``; support_layer3: ``[B*K, C3, h, w]``;
            foreground: binary support masks ``[B*K, H, W]``; shots: ``(B, K)``.
        """
        cfg = self.config
        if cfg.fast_paths:  # the same priors: layer4 and the similarities on the objects' cells only
            high = fast.mspf_masked_high_level(self.backbone, support_layer3, foreground, sizes, cfg.support_resize)
            cascade = fast.multi_scale_mean_cosine_priors
        else:
            high, cascade = masked_high_level(self.backbone, support_layer3, foreground), multi_scale_mean_cosine_priors
        with torch.no_grad(), no_autocast(high.device):
            query, support = query_layer4.float(), high.float().unflatten(0, shots)  # X_q^h, X_s^h
            masks = foreground.unflatten(0, shots)
            if cfg.multi_scale_prior:
                return cascade(query, support, masks, sizes, cfg.prior_connection, cfg.prior_eps, cfg.support_resize)
            (single,) = cascade(query, support, masks, sizes[:1], eps=cfg.prior_eps, support_resize=cfg.support_resize)
            return [resize_to(single, size, "bilinear", align_corners=True) for size in sizes]

    # ------------------------------------------------------------------ section 3.3
    def mix(self, query: Tensor, prototype: Tensor, priors: Sequence[Tensor]) -> list[Tensor]:
        """Eqs. 7-8: per-scale fusion of pooled query, expanded prototype and prior -> ``[B, W, b_i]``."""
        mixed = []
        for i, prior in enumerate(priors):
            size = prior.shape[-2:]
            pooled = F.adaptive_avg_pool2d(query, size)
            expanded = prototype[:, :, None, None].expand(-1, -1, *size)
            mixed.append(self.merge[i](torch.cat([pooled, expanded, prior], dim=1)))
        return mixed

    def interact(self, mixed: Sequence[Tensor]) -> list[Tensor]:
        """Eqs. 9-12: top-down chain of refinements, then a residual per scale."""
        chain: list[Tensor] = []
        for i, x in enumerate(mixed):
            if i > 0:
                previous = resize_to(chain[-1], x.shape[-2:], "bilinear", align_corners=True)
                x = self.connect[i - 1](torch.cat([x, previous], dim=1))
            chain.append(self.refine[i](x))
        return [x + t for x, t in zip(mixed, chain)]

    def combine(self, scales: Sequence[Tensor], size: Sequence[int]) -> tuple[Tensor, Tensor | None]:
        """Eqs. 14-16: upsample every scale to ``size`` and sum them, weighted by ``A`` when
        ``scale_weights`` (returned, ``[B, n, h, w]``), else plainly."""
        upsampled = [resize_to(x, size, "bilinear", align_corners=True) for x in scales]
        if not self.config.scale_weights:
            return sum(upsampled), None
        weights = torch.sigmoid(self.weight_net(torch.cat(upsampled, dim=1)))
        return sum(weights[:, i:i + 1] * x for i, x in enumerate(upsampled)), weights

    def baseline_fusion(self, mixed: Sequence[Tensor], size: Sequence[int]) -> Tensor:
        """The baseline (Figure 5): upsampled, concatenated, 1x1-reduced, then ASPP."""
        upsampled = [resize_to(x, size, "bilinear", align_corners=True) for x in mixed]
        return self.aspp(self.aspp_merge(torch.cat(upsampled, dim=1)))

    # ------------------------------------------------------------------ head
    def head(self, query_feats, support_feats, support_masks, way, out_size):
        if way != 1:
            raise ValueError(f"MSPF segments one class per episode (way=1), got way={way}")
        cfg = self.config
        batch, shots = support_masks.shape[:2]
        foreground = foreground_mask(support_masks).flatten(0, 1)  # [B*K, H, W]
        query, support = self.mid_level(query_feats, support_feats)
        prototype = support_prototype(support, foreground, (batch, shots), cfg.mask_eps)
        size = query.shape[-2:]
        priors = self.prior_masks(query_feats["layer4"], support_feats["layer3"].flatten(0, 1), foreground,
                                  (batch, shots), pyramid_bins(size, cfg.bins))
        mixed = self.mix(query, prototype, priors)
        output = {"priors": priors, "prototype": prototype, "aux_logits": []}
        if cfg.multi_scale_fusion:
            scales = self.interact(mixed) if cfg.scale_interaction else mixed
            if cfg.aux_loss:
                output["aux_logits"] = [cls(x) for cls, x in zip(self.aux_cls, scales)]
            fused, weights = self.combine(scales, size)
            if weights is not None:
                output["scale_weights"] = weights
        else:
            scales, fused = mixed, self.baseline_fusion(mixed, size)
        fused = self.block(fused) + fused
        output["scale_features"] = scales
        logits = self.cls(fused)
        if self.shortcut is not None:
            logits = self.shortcut(logits, priors[0])
        output["logits"] = resize_to(logits, out_size, "bilinear", align_corners=True)
        return output

    def active_modules(self) -> list[nn.Module]:
        """The modules the current configuration runs (in training, for the auxiliary classifiers)."""
        cfg = self.config
        modules = [self.backbone, self.project_query, self.merge, self.block, self.cls]
        if self.shortcut is not None:
            modules.append(self.shortcut)
        if not cfg.shared_projection:
            modules.append(self.project_support)
        if not cfg.multi_scale_fusion:
            return modules + [self.aspp_merge, self.aspp]
        if cfg.scale_interaction:
            modules += [self.refine, self.connect]
        if cfg.aux_loss:
            modules.append(self.aux_cls)
        if cfg.scale_weights:
            modules.append(self.weight_net)
        return modules


# ---------------------------------------------------------------------- record
#: Head settings for the small CNN on 128x128 images (16x16 features), for CPU training:
#:
#: - ``width`` 64 instead of 256: at 256 channels the 3x3 convolutions of the head dominate and a
#:   training step (8 episodes) takes ~1.1 s on one CPU core, ~19 minutes per run; at 64 it takes
#:   ~0.3 s (about half of it the frozen backbone), like the other methods' runs. The ratio to the
#:   mid-level input (192 channels here, 1536 on ResNet-50, 256 there) stays in the same range.
#: - ``aspp_rates`` (2, 3, 5) instead of CANet's (6, 12, 18): the baseline's ASPP dilations are
#:   fixed in feature cells, so they are scaled with the feature map (60x60 in the paper,
#:   16x16 here: 6, 12, 18 x 16/60, rounded). With (6, 12, 18) on 16x16 features the rate-18
#:   branch would only ever see its centre tap, a 1x1 convolution. The rates only matter for the
#:   rows without the multi-scale fusion, but every MSPF row carries them so that rows differ in
#:   exactly the paper's switches.
#: - ``support_resize="area"``: on 128-pixel images the authors' bilinear resizing samples the
#:   support mask so sparsely that it is empty at 4x4 in 44% of episodes and at 2x2 in 96%
#:   (notebook 03), which would make the coarse priors, and the ablation of the multi-scale
#:   prior, meaningless here; at the paper's 473 pixels this rarely happens.
SYNTHETIC_HEAD = {"width": 64, "aspp_rates": (2, 3, 5), "support_resize": "area"}

RECORD = MethodRecord(
    name="mspf", display_name="MSPF", model_class=MSPF,
    family="prior-guided",
    paper="基于多尺度先验信息融合的小样本语义分割 (Few-shot semantic segmentation based on multi-scale "
          "prior information fusion), Chinese journal article; authors and venue are not in the source text",
    # PFENet's synthetic recipe (frozen backbone, cached features, the prior shortcut), whose
    # reasons are in its record, so that MSPF - PFENet compares heads only.
    synthetic_model_args=PFENET.synthetic_model_args,
    synthetic_training=PFENET.synthetic_training,
    synthetic_head=SYNTHETIC_HEAD,
    short_recipe=PFENET.short_recipe,
    real_data_recipe=REAL_DATA_RECIPE,
    bench=BenchSettings("resnet50", 473),
    main_row="MSPF", main_row_args={**SYNTHETIC_HEAD, **PAPER_ABLATIONS["table3_full"]},
    paper_result=lambda shot: PFENET.paper_result(shot, "MSPF"),
    explorer_switches={"multi-scale prior": ("multi_scale_prior",),
                       "multi-scale fusion (off: ASPP)": ("multi_scale_fusion",),
                       "inter-scale connection (prior)": ("prior_connection",),
                       "horizontal/vertical interaction": ("scale_interaction",),
                       "scale weights": ("scale_weights",), "auxiliary loss": ("aux_loss",)},
    job_cost=1,
)
