r"""MSDNet: a transformer-made dynamic kernel applied to multi-scale decoded query features.

Fateh, Mohammadi, Jahed-Motlagh, "MSDNet: Multi-Scale Decoder for Few-Shot Semantic Segmentation
via Transformer-Guided Prototyping", arXiv 2409.11316, 2024 (Image and Vision Computing 162, 2025).
Constants and the order of operations follow the authors' code (``model/cdmd.py`` of
github.com/amirrezafateh/MSDNet, the full model with the decoder; their ``model/msd.py`` has the
decoder commented out and would have 0.73M parameters, not the paper's 1.5M). Their transformer
is ProtoFormer's (github.com/LeileiCao/ProtoFormer, ``model/transformer.py``), a DETR decoder
layer. Where the paper and the code differ, the code wins; the choices this required are listed
at the end.

The backbone is frozen (all stages, BatchNorm in eval mode); W = ``width`` (64). Every support
mask :math:`M_{s,k}` (shot k) enters as :math:`m_k`, the binary mask (255 -> 0) resized
bilinearly with aligned corners to the feature map it multiplies.

Mid-level features and prototype (as PFENet, with BatchNorm)
    .. math::
        X^{mid} = \operatorname{Drop}_{0.5}\big(\operatorname{ReLU}(\operatorname{BN}(W_{1\times1}
            [\,\mathrm{layer2};\ \mathrm{layer3}\,]))\big) \in \mathbb{R}^{W \times h \times w},
        \qquad
        p_k = \frac{\sum_{xy} X_{s,k}^{mid}(x,y)\, m_k(x,y)}{\sum_{xy} m_k(x,y) + 5\cdot10^{-4}},
        \qquad p = \tfrac{1}{K} \textstyle\sum_k p_k

    Separate projections for query and support (``adjust_feature_qry`` / ``adjust_feature_supp``).
    Note the order [layer2; layer3] (PFENet's is [layer3; layer2]).

Context mask generation module (CMGM)
    .. math::
        X_{s,k}^{h} = \mathrm{layer4}(\mathrm{layer3}_{s,k}) \odot m_k, \qquad
        C = \tfrac{1}{K} \textstyle\sum_k \operatorname{minmax}\Big(\max_{s}
            \cos\big(X_q^{h}(q), X_{s,k}^{h}(s)\big)\Big) \in [0, 1]^{1 \times h \times w}

    PFENet's prior (:func:`fsslib.models.priors.max_cosine_prior`: eps 1e-7 on the product of the
    norms and in the min-max), except that the support's layer4 features are those of the
    *unmasked* image, masked only afterwards (PFENet runs layer4 on the masked layer3). They are
    therefore the cached ``layer4`` features, and CMGM costs no extra backbone pass. Each shot's
    map is resized bilinearly (aligned corners) to ``h x w`` before the mean. No gradient. This is
    :func:`fsslib.models.pfenet.training_free_prior` applied to the support's own layer4
    (``fast_paths=True``, the default, runs its twin in :mod:`fsslib.models.fast`).

Spatial transformer decoder (STD): one DETR decoder layer, post-norm, on a single token
    Query token :math:`t_0 = p`, its learned positional embedding :math:`e \in \mathbb{R}^W`;
    keys :math:`X_q^{mid} + \mathrm{PE}`, values :math:`X_q^{mid}` (the ``h w`` query cells), with
    PE the 2-D sine encoding (:func:`sine_position_encoding`). 4 heads, feed-forward width 16,
    dropout 0.1:

    .. math::
        t_1 &= \operatorname{LN}_1\big(t_0 + \operatorname{Drop}(
            \operatorname{MHA}_{self}(t_0 + e,\ t_0 + e,\ t_0))\big) \\
        t_2 &= \operatorname{LN}_2\big(t_1 + \operatorname{Drop}(\operatorname{MHA}_{cross}(t_1 + e,\
            X_q^{mid} + \mathrm{PE},\ X_q^{mid}))\big) \\
        t_3 &= \operatorname{LN}_3\big(t_2 + \operatorname{Drop}(
            W_2\, \operatorname{Drop}(\operatorname{ReLU}(W_1 t_2 + b_1)) + b_2)\big),
        \qquad t = \operatorname{LN}(t_3)

    Per head :math:`j` (dimension :math:`d = W / 4`) the cross-attention weights over the query
    cells :math:`q` are

    .. math::
        A_j(q) = \operatorname{softmax}_{q}\Big(\big(W^Q_j (t_1 + e) + b^Q_j\big)^\top
            \big(W^K_j (X_q^{mid}(q) + \mathrm{PE}(q)) + b^K_j\big) / \sqrt{d}\Big),

    where in the query the prototype looks (output ``"std_attention"``, ``[B, 4, h, w]``). The
    output token :math:`t` is the dynamic kernel.

    *Self-attention kept* (``token_self_attention=True``), as in the authors' code: their decoder
    layer is DETR's, with its self-attention block, and its parameters are part of the 1.5M.
    Over a single token the softmax weight is 1, so the block is the affine map
    :math:`t_0 \mapsto W^O (W^V t_0 + b^V) + b^O` followed by the residual and LayerNorm: the
    positional embedding does not enter it (in training, attention dropout zeroes that weight
    or scales it by 1 / 0.9). ``token_self_attention=False`` drops the block
    (:math:`t_1 = t_0`), an ablation the paper does not run.

Multi-scale fusion (PFENet's enrichment with BatchNorm, no per-scale classifiers), bins :math:`b_i`
    .. math::
        F_i &= \operatorname{CBR}_{1\times1}\big[\operatorname{AvgPool}_{b_i}(X_q^{mid});\
            \operatorname{expand}_{b_i}(p);\ \operatorname{bilinear}_{b_i}(C)\big] &&(2W + 1 \to W) \\
        F_i &\leftarrow F_i + \operatorname{CBR}_{1\times1}\big[F_i;\ \operatorname{bilinear}_{b_i}(U_{i-1})\big]
            \quad (i \ge 2) &&(2W \to W) \\
        F_i &\leftarrow F_i + \operatorname{CBR}_{3\times3}(\operatorname{CBR}_{3\times3}(F_i)), \qquad
            U_i = \operatorname{bilinear}_{h \times w}(F_i) \\
        G &= W_{1\times1} [U_1; \dots; U_n] &&(nW \to W,\ \text{a bare conv: no BN, no ReLU, no bias})

    CBR = conv (no bias) + BatchNorm + ReLU; the scales are :func:`fsslib.models.pfenet.enrich`'s.
    Bins as :func:`fsslib.models.pfenet.pyramid_bins` (``None``: 60, 30, 15, 8 at 473x473 input,
    the authors' bins; 16, 8, 4, 2 for the small CNN).

Multi-scale decoder: stride 8 -> 4 -> 2, support features fused by residual connections
    Support features for the decoder, per shot, then reduced over the shots (``decoder_shots``):

    .. math::
        D = \operatorname{Drop}_{0.5}(\operatorname{ReLU}(
            \operatorname{BN}(W^{D}_{1\times1}\, \mathrm{layer4}_s))) \odot m,
        \qquad E = p_k \odot m \quad (\text{the prototype spread over the support object})

    and, with :math:`R_j(x, S) = \operatorname{CBR}_{3\times3}[x; S]` (2W -> W) and
    :math:`\uparrow` = ConvTranspose 3x3, stride 2, padding 1, output padding 1 (exactly x2) + BN + ReLU:

    .. math::
        x_8 &= R_1(G, D), \quad x_8 \leftarrow x_8 + R_2(x_8, D) \\
        x_4 &= \uparrow_1(x_8), \quad E_4 = \uparrow_2(E), \quad
            x_4 \leftarrow x_4 + R_j(x_4, E_4), \ j = 3, 4, 5 \\
        x_2 &= \uparrow_3(x_4), \quad E_2 = \uparrow_4(E_4), \quad
            x_2 \leftarrow x_2 + R_j(x_2, E_2), \ j = 6, 7, 8

    (the first block at stride 8 replaces G: no residual). Re-injecting the support at every
    resolution keeps the class evidence in reach while the upsampling recovers detail; the
    residual form lets each block add a correction to the query features rather than rebuild them.
    Outputs ``"decoder_features"`` :math:`[x_8, x_4, x_2]` and ``"fusion_features"`` :math:`[F_i]`.

Output and threshold
    .. math::
        z(x, y) = t^\top x_2(x, y), \qquad P = \operatorname{bilinear}_{H \times W}\big(\sigma(z)\big),
        \qquad \hat M_q = [P > 0.5]

    in this order (sigmoid, then upsampling, aligned corners), as the authors. ``"probability"``
    is :math:`P` ``[B, 1, H, W]``, ``"score"`` is :math:`z` ``[B, 1, 4h, 4w]``. For the common
    evaluator (argmax over channels) the head also returns two-channel logits

    .. math::
        \text{logits} = \big[\operatorname{logit}(\tau),\ \operatorname{logit}(P)\big],
        \qquad \operatorname{logit}(P) = \log \frac{P}{1 - P},

    with :math:`\tau` = ``threshold`` (0.5, so the background channel is 0) and :math:`P` clamped
    to :math:`[10^{-6}, 1 - 10^{-6}]` (a saturated sigmoid would give infinities). The argmax is
    the foreground exactly where :math:`P > \tau` (ties go to the background, as ``P > tau``), and
    the softmax of the two channels at :math:`\tau = 0.5` gives :math:`P` back.

Loss: Dice on :math:`P`, per query image, averaged over the batch (the authors' weighted Dice with weight 1)
    .. math::
        L = 1 - \frac{2 \sum_{x} P(x)\, T(x)}{\max\big(\sum_x P(x)^2 + \sum_x T(x)^2,\ 10^{-8}\big)}

    :math:`T = [M_q = 1]`; pixels labelled 255 are left out of all three sums. :math:`P` is
    resized bilinearly (aligned corners) to the label when their sizes differ.

Parameters
    With ResNet-50 and W = 64: 1,473,680 learnable parameters (the paper: "1.5M"); see the test
    suite for the count written out. The small CNN (layer2/3/4 = 64/128/256 channels) gives fewer,
    since the projections shrink.

Choices where the sources were silent or ambiguous
    1. K shots: the authors' decoder reads the *first* shot only (``supp_feat_mask_list[0]`` in
       ``model/cdmd.py``), and so does the default here (``decoder_shots="first"``); the prototype
       and the context mask still use every shot. ``decoder_shots="mean"`` averages :math:`D` and
       :math:`E` over the shots instead. For K = 1 both agree.
    2. The stride-4/2 support features :math:`E` are, in the authors' code, the *prototype*
       multiplied by the support mask (their ``Weighted`` is applied to the pooled prototype),
       although the paper's text speaks of the support's mid-level features.
       ``decoder_support="prototype"`` (default) follows the code, ``"features"`` uses
       :math:`X_{s,k}^{mid} \odot m_k` as the text describes.
    3. Where layer4 is smaller than layer3 (VGG), :math:`D` and the CMGM map are resized
       bilinearly to the mid-level size (the authors' ResNets keep one size for all stages); the
       CMGM support mask is resized to layer4's own size.
    4. The returned cross-attention weights come from ``nn.MultiheadAttention``, which applies
       its attention dropout to them: in training mode they need not sum to 1; in eval mode they do.
    5. Initialisation as the authors': every weight matrix of the transformer Xavier-uniform, its
       biases 0, LayerNorms (1, 0), the token's positional embedding N(0, 1) (their
       ``nn.Embedding(64, 1)``); convolutions keep PyTorch's default.
    6. 1-way only (the sigmoid output is binary). The authors' ResNets are PFENet's deep-stem
       variants; ``weights="imagenet"`` here loads torchvision's.
    7. Evaluation on original label sizes (:mod:`fsslib.engine.protocol`) resizes the *logits*
       bilinearly; the authors resize :math:`P` and threshold it. Since the logit is monotone but
       not linear, the two can disagree on a few boundary pixels; resize ``"probability"`` for
       the authors' exact decision.
    8. Pixels labelled 255 are left out of the Dice sums, as every other method's loss ignores
       them; the authors' data loader turns them into background before the loss.

Shapes as in :mod:`fsslib.models.base`. Output: ``"logits"`` ``[B, 2, H, W]``, ``"probability"``
``[B, 1, H, W]``, ``"score"`` ``[B, 1, 4h, 4w]``, ``"token"`` ``[B, W]``, ``"std_attention"``
``[B, heads, h, w]``, ``"context_mask"`` ``[B, 1, h, w]``, ``"prototype"`` ``[B, W]``,
``"fusion_features"`` (list of ``[B, W, b_i, b_i]``), ``"decoder_features"`` (``[B, W, h, w]``,
``[B, W, 2h, 2w]``, ``[B, W, 4h, 4w]``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..reference import published
from . import fast
from .base import FewShotSegmenter, ModelConfig
from .ops import IGNORE_INDEX, foreground_mask, mask_to_feature_size, masked_average_pooling, resize_to
from .pfenet import (
    NUM_SCALES,
    PRIOR_HEAD_BACKBONE,
    PRIOR_HEAD_TRAINING,
    conv_relu,
    enrich,
    enrichment_layers,
    mid_level_features,
    projection,
    pyramid_bins,
    training_free_prior,
)
from .priors import PRIOR_EPS
from .record import BenchSettings, MethodRecord

__all__ = [
    "MSDNet",
    "MSDNetConfig",
    "REAL_DATA_RECIPE",
    "SpatialTransformerDecoder",
    "dice_loss",
    "kernel_response",
    "sine_position_encoding",
    "two_channel_logits",
]

#: The authors' training recipe (their README and ``train.py``): Adam, lr 1e-3, no weight decay,
#: no schedule, batch 32, 473x473 input; 60 epochs on PASCAL-5i, 30 on COCO-20i. Keys are
#: :class:`fsslib.engine.trainer.TrainConfig` fields (``model_args`` holds :class:`MSDNetConfig`
#: fields) plus ``epochs``. AdamW with weight decay 0 is Adam exactly (the decay is the only difference).
REAL_DATA_RECIPE = {
    "pascal": {
        "model_args": {"backbone": "resnet50", "weights": "imagenet", "frozen_stages": "all", "freeze_bn": True,
                       "width": 64},
        "optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.0, "schedule": "constant",
        "batch_size": 32, "image_size": 473, "epochs": 60,
    },
    "coco": {
        "model_args": {"backbone": "resnet50", "weights": "imagenet", "frozen_stages": "all", "freeze_bn": True,
                       "width": 64},
        "optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.0, "schedule": "constant",
        "batch_size": 32, "image_size": 473, "epochs": 30,
    },
}

#: Lower bound of the Dice denominator (the authors' ``eps``).
DICE_EPS = 1e-8
#: Probabilities are clamped to [LOGIT_EPS, 1 - LOGIT_EPS] before the logit of the output channel.
LOGIT_EPS = 1e-6
#: Sine positional encoding: temperature, and the epsilon of the coordinate normalisation (DETR's).
PE_TEMPERATURE = 10000.0
PE_EPS = 1e-6

_DECODER_SHOTS = ("mean", "first")
_DECODER_SUPPORT = ("prototype", "features")


@dataclass
class MSDNetConfig(ModelConfig):
    frozen_stages: tuple[str, ...] | str = "all"
    freeze_bn: bool = True
    #: Channels of the projected features, the transformer (d_model) and the decoder.
    width: int = 64
    #: None: ceil(h / 2**i), i = 0..3 (60, 30, 15, 8 at 473); else PFENet's ppm_scales convention.
    bins: tuple[float, ...] | None = None
    #: Dropout2d after each 1x1 projection (mid-level query/support, support layer4 for the decoder).
    projection_dropout: float = 0.5
    #: Added to the mask area in masked average pooling.
    mask_eps: float = 5e-4
    #: Cosine and min-max epsilon of the context mask.
    prior_eps: float = PRIOR_EPS
    #: Attention heads of the STD.
    heads: int = 4
    #: Hidden width of the STD's feed-forward block (the authors: width // 4).
    feedforward: int = 16
    #: Dropout inside the STD (attention weights, residual branches, feed-forward).
    transformer_dropout: float = 0.1
    #: Keep the decoder layer's self-attention over the single token (the authors' code does).
    token_self_attention: bool = True
    #: Support features the decoder fuses at strides 4 and 2: "prototype" (p_k * m_k, the authors'
    #: code) or "features" (mid-level support features * m_k, the paper's text).
    decoder_support: str = "prototype"
    #: How the decoder's support features combine K shots: "first" (the authors' code), or "mean".
    decoder_shots: str = "first"
    #: Foreground where the probability exceeds this (the authors: 0.5); only the logits depend on it.
    threshold: float = 0.5


# ---------------------------------------------------------------------- building blocks
def upsample_x2(width: int) -> nn.Sequential:
    """ConvTranspose 3x3, stride 2, padding 1, output padding 1 (``h -> 2h`` exactly), BatchNorm, ReLU."""
    return nn.Sequential(nn.ConvTranspose2d(width, width, 3, stride=2, padding=1, output_padding=1, bias=False),
                         nn.BatchNorm2d(width), nn.ReLU(inplace=True))


def sine_position_encoding(height: int, width: int, channels: int, device=None,
                           dtype: torch.dtype = torch.float32) -> Tensor:
    r"""DETR's normalised 2-D sine encoding, ``[channels, height, width]``.

    With :math:`n = C / 2` channels per axis, row :math:`y \in 1..h`, column :math:`x \in 1..w`,
    :math:`\bar y = 2\pi y / (h + 10^{-6})`, :math:`\bar x = 2\pi x / (w + 10^{-6})` and
    :math:`d_i = 10000^{2 \lfloor i/2 \rfloor / n}`:

    .. math::
        \mathrm{PE}_{2i} = \sin(\bar y / d_{2i}), \quad \mathrm{PE}_{2i+1} = \cos(\bar y / d_{2i+1})
        \quad (i < n/2), \qquad \mathrm{PE}_{n + c} = \text{the same with } \bar x

    (the first half encodes the row, the second the column). ``channels`` must be a multiple of 4.
    """
    if channels % 4:
        raise ValueError(f"the sine encoding needs a multiple of 4 channels, got {channels}")
    n = channels // 2
    rows = torch.arange(1, height + 1, dtype=torch.float32, device=device) / (height + PE_EPS) * 2 * math.pi
    cols = torch.arange(1, width + 1, dtype=torch.float32, device=device) / (width + PE_EPS) * 2 * math.pi
    index = torch.arange(n, dtype=torch.float32, device=device)
    periods = PE_TEMPERATURE ** (2 * torch.div(index, 2, rounding_mode="floor") / n)  # [n]

    def encode(coordinates: Tensor) -> Tensor:  # [L] -> [n, L]: sin on even channels, cos on odd
        angles = coordinates[None, :] / periods[:, None]
        return torch.where((index % 2 == 0)[:, None], angles.sin(), angles.cos())

    pe_rows = encode(rows)[:, :, None].expand(n, height, width)
    pe_cols = encode(cols)[:, None, :].expand(n, height, width)
    return torch.cat([pe_rows, pe_cols]).to(dtype)


def kernel_response(features: Tensor, token: Tensor) -> Tensor:
    """The token as a dynamic 1x1 kernel: ``z = t . x`` per cell, ``[B, C, h, w]``, ``[B, C]`` -> ``[B, 1, h, w]``."""
    return torch.einsum("bchw,bc->bhw", features, token).unsqueeze(1)


def two_channel_logits(probability: Tensor, threshold: float = 0.5) -> Tensor:
    """``[logit(threshold), logit(P)]``, ``[B, 1, H, W]`` -> ``[B, 2, H, W]``: argmax = ``P > threshold``."""
    if not LOGIT_EPS < threshold < 1 - LOGIT_EPS:
        raise ValueError(f"threshold must lie in ({LOGIT_EPS}, {1 - LOGIT_EPS}), got {threshold}")
    foreground = torch.logit(probability.float(), eps=LOGIT_EPS)
    background = torch.full_like(foreground, math.log(threshold / (1 - threshold)))
    return torch.cat([background, foreground], dim=1)


def dice_loss(probability: Tensor, target: Tensor, eps: float = DICE_EPS) -> Tensor:
    """Mean over the batch of per-image Dice losses; pixels labelled 255 are left out.

    Args:
        probability: foreground probability ``[B, 1, H, W]`` or ``[B, H, W]``.
        target: labels ``[B, H, W]`` (1 foreground, 0 background, 255 ignore).
    """
    valid = (target != IGNORE_INDEX).flatten(1)
    p = probability.float().reshape(target.shape[0], -1) * valid
    t = (target == 1).flatten(1).to(p.dtype)
    overlap = (p * t).sum(dim=1)
    denominator = (p.square().sum(dim=1) + t.square().sum(dim=1)).clamp_min(eps)
    return (1 - 2 * overlap / denominator).mean()


class SpatialTransformerDecoder(nn.Module):
    """STD: one post-norm DETR decoder layer on one token (the prototype), plus a final LayerNorm.

    ``forward(prototype [B, W], memory [B, W, h, w], self_attention)`` -> token ``[B, W]`` and the
    per-head cross-attention weights over the ``h x w`` memory cells, ``[B, heads, h, w]``.
    Equations in the module docstring.
    """

    def __init__(self, width: int, heads: int, feedforward: int, dropout: float):
        super().__init__()
        self.query_pos = nn.Parameter(torch.empty(width))
        self.self_attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(width, feedforward), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                 nn.Linear(feedforward, width))
        self.norm1, self.norm2, self.norm3, self.norm = (nn.LayerNorm(width) for _ in range(4))
        self.dropout1, self.dropout2, self.dropout3 = (nn.Dropout(dropout) for _ in range(3))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Weight matrices Xavier-uniform, biases 0, LayerNorms (1, 0), positional embedding N(0, 1)."""
        for name, p in self.named_parameters():
            if name == "query_pos":
                nn.init.normal_(p)
            elif p.dim() > 1:
                nn.init.xavier_uniform_(p)
            elif "norm" not in name:
                nn.init.zeros_(p)

    def forward(self, prototype: Tensor, memory: Tensor, self_attention: bool = True) -> tuple[Tensor, Tensor]:
        b, c, h, w = memory.shape
        position = sine_position_encoding(h, w, c, memory.device, memory.dtype)
        keys = (memory + position).flatten(2).transpose(1, 2)  # [B, hw, W]
        values = memory.flatten(2).transpose(1, 2)
        token, pos = prototype.unsqueeze(1), self.query_pos.view(1, 1, c)  # [B, 1, W], [1, 1, W]
        if self_attention:
            attended = self.self_attn(token + pos, token + pos, token, need_weights=False)[0]
            token = self.norm1(token + self.dropout1(attended))
        attended, weights = self.cross_attn(token + pos, keys, values, need_weights=True,
                                            average_attn_weights=False)  # weights [B, heads, 1, hw]
        token = self.norm2(token + self.dropout2(attended))
        token = self.norm3(token + self.dropout3(self.ffn(token)))
        return self.norm(token)[:, 0], weights[:, :, 0].unflatten(-1, (h, w))


# ---------------------------------------------------------------------- the model
class MSDNet(FewShotSegmenter):
    config_class = MSDNetConfig
    feature_stages = ("layer2", "layer3", "layer4")

    def __init__(self, config: MSDNetConfig):
        super().__init__(config)
        channels, width = self.backbone.out_channels, config.width
        mid = channels["layer2"] + channels["layer3"]
        scales = NUM_SCALES if config.bins is None else len(config.bins)
        self.project_query = projection(mid, width, config.projection_dropout, batch_norm=True)
        self.project_support = projection(mid, width, config.projection_dropout, batch_norm=True)
        self.project_support_high = projection(channels["layer4"], width, config.projection_dropout, batch_norm=True)
        self.std = SpatialTransformerDecoder(width, config.heads, config.feedforward, config.transformer_dropout)
        # multi-scale fusion: PFENet's enrichment with BatchNorm (their init_merge / alpha_conv / beta_conv / res1)
        self.merge, self.alpha, self.beta = enrichment_layers(width, scales, batch_norm=True)
        self.res1 = nn.Conv2d(scales * width, width, 1, bias=False)
        # decoder: two fusion blocks at stride 8, three at stride 4 and at stride 2
        self.stride8 = nn.ModuleList(conv_relu(2 * width, width, 3, batch_norm=True) for _ in range(2))
        self.up_query = nn.ModuleList(upsample_x2(width) for _ in range(2))
        self.up_support = nn.ModuleList(upsample_x2(width) for _ in range(2))
        self.upsampled = nn.ModuleList(nn.ModuleList(conv_relu(2 * width, width, 3, batch_norm=True)
                                                     for _ in range(3)) for _ in range(2))  # strides 4 and 2

    # ------------------------------------------------------------------ pieces
    def fuse(self, query: Tensor, prototype: Tensor, context: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Multi-scale fusion: ``[B, W, h, w]``, ``[B, W]``, ``[B, 1, h, w]`` -> G ``[B, W, h, w]`` and the
        per-scale features :math:`F_i` ``[B, W, b_i, b_i]``."""
        bins = pyramid_bins(query.shape[-2:], self.config.bins)
        per_scale, upsampled, _ = enrich(query, prototype, context, bins, self.merge, self.alpha, self.beta)
        return self.res1(torch.cat(upsampled, dim=1)), per_scale

    def decode(self, merged: Tensor, support_high: Tensor, support_stage: Tensor) -> list[Tensor]:
        """Decoder: G, D ``[B, W, h, w]`` and E ``[B, W, h, w]`` -> ``[x_8, x_4, x_2]`` (h, 2h, 4h)."""
        x = self.stride8[0](torch.cat([merged, support_high], dim=1))
        x = x + self.stride8[1](torch.cat([x, support_high], dim=1))
        outputs, support = [x], support_stage
        for up_query, up_support, blocks in zip(self.up_query, self.up_support, self.upsampled):
            x, support = up_query(x), up_support(support)
            for block in blocks:
                x = x + block(torch.cat([x, support], dim=1))
            outputs.append(x)
        return outputs

    def _reduce_shots(self, x: Tensor, shots: tuple[int, int]) -> Tensor:
        """``[B*K, ...]`` -> ``[B, ...]`` by ``config.decoder_shots``."""
        x = x.unflatten(0, shots)
        return x.mean(dim=1) if self.config.decoder_shots == "mean" else x[:, 0]

    # ------------------------------------------------------------------ head
    def head(self, query_feats, support_feats, support_masks, way, out_size):
        cfg = self.config
        if way != 1:
            raise ValueError(f"MSDNet segments one class per episode (way=1), got way={way}")
        if cfg.decoder_shots not in _DECODER_SHOTS or cfg.decoder_support not in _DECODER_SUPPORT:
            raise ValueError(f"decoder_shots must be one of {_DECODER_SHOTS} and decoder_support one of "
                             f"{_DECODER_SUPPORT}, got {cfg.decoder_shots!r} and {cfg.decoder_support!r}")
        shots = tuple(support_masks.shape[:2])
        foreground = foreground_mask(support_masks).flatten(0, 1)  # [B*K, H, W]
        query = self.project_query(mid_level_features(query_feats["layer2"], query_feats["layer3"], low_first=True))
        support = self.project_support(mid_level_features(support_feats["layer2"].flatten(0, 1),
                                                          support_feats["layer3"].flatten(0, 1), low_first=True))
        size = query.shape[-2:]
        weights = mask_to_feature_size(foreground, size).to(support.dtype).unsqueeze(1)  # m_k [B*K, 1, h, w]
        shot_prototypes = masked_average_pooling(support, foreground, "resize_mask", cfg.mask_eps)  # [B*K, W]
        prototype = shot_prototypes.unflatten(0, shots).mean(dim=1)

        token, attention = self.std(prototype, query, cfg.token_self_attention)
        support_layer4 = support_feats["layer4"].flatten(0, 1)
        prior = fast.training_free_prior if cfg.fast_paths else training_free_prior  # the same C, faster
        context = prior(query_feats["layer4"], support_layer4, foreground, shots, size, cfg.prior_eps)  # CMGM
        merged, per_scale = self.fuse(query, prototype, context.to(query.dtype))

        high = resize_to(self.project_support_high(support_layer4), size, "bilinear", align_corners=True)
        stage = shot_prototypes[:, :, None, None] if cfg.decoder_support == "prototype" else support
        decoded = self.decode(merged, self._reduce_shots(high * weights, shots),
                              self._reduce_shots(stage * weights, shots))

        score = kernel_response(decoded[-1], token)
        probability = resize_to(torch.sigmoid(score.float()), out_size, "bilinear", align_corners=True)
        return {"logits": two_channel_logits(probability, cfg.threshold), "probability": probability,
                "score": score, "token": token, "std_attention": attention, "context_mask": context,
                "prototype": prototype, "fusion_features": per_scale, "decoder_features": decoded}

    def loss(self, output, batch):
        target = batch["query_mask"]
        probability = resize_to(output["probability"], target.shape[-2:], "bilinear", align_corners=True)
        dice = dice_loss(probability, target)
        return dice, {"query_dice": dice.item()}

    def learnable_parameters(self) -> int:
        """Trainable parameters that the current configuration uses (without the token's
        self-attention block when ``token_self_attention`` is off)."""
        unused = set()
        if not self.config.token_self_attention:
            unused = {id(p) for m in (self.std.self_attn, self.std.norm1) for p in m.parameters()}
        return sum(p.numel() for p in self.parameters() if p.requires_grad and id(p) not in unused)


# ---------------------------------------------------------------------- record
def _coco(shot: int) -> float:
    return published("MSDNet")["coco20i_interleaved_mean"][f"R50_{shot}shot"]


RECORD = MethodRecord(
    name="msdnet", display_name="MSDNet", model_class=MSDNet,
    family="prior-guided",
    paper="Fateh, Mohammadi and Jahed-Motlagh, MSDNet: Multi-Scale Decoder for Few-Shot Semantic "
          "Segmentation via Transformer-Guided Prototyping, Image and Vision Computing 2025",
    synthetic_model_args=PRIOR_HEAD_BACKBONE,
    # Its decoder convolutions at strides 4 and 2 are 1.6x faster in channels-last format on a CPU.
    synthetic_training={**PRIOR_HEAD_TRAINING, "channels_last": True},
    short_recipe={"lr": 1e-3},
    real_data_recipe=REAL_DATA_RECIPE,
    bench=BenchSettings("resnet50", 473, authors_ratios=(10.2, 41.0)),
    main_row="MSDNet",
    paper_result=lambda shot: f"COCO-20i {_coco(shot):.1f}",
    paper_shot_gain=lambda: _coco(5) - _coco(1), paper_benchmark="COCO-20i",
    explorer_switches={"token self-attention (STD)": ("token_self_attention",)},
    job_cost=4,
)
