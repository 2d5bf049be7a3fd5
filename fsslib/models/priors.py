r"""Training-free prior masks: where in the query does the support object appear?

A prior mask scores every query position by how similar its *high-level* backbone feature
(ResNet layer4, the stage after the mid-level features the head learns from) is to the support
object's high-level features. Nothing in it is learned, so it transfers to unseen classes.
PFENet (Tian et al., "Prior Guided Feature Enrichment Network for Few-Shot Segmentation",
TPAMI 2020) introduced it; MSPF ("基于多尺度先验信息融合的小样本语义分割", "Few-shot semantic
segmentation based on multi-scale prior information fusion", a journal article in Chinese, section
3.2) and MSDNet (Fateh, Mohammadi, Jahed-Motlagh, "MSDNet: Multi-Scale Decoder for Few-Shot
Semantic Segmentation via Transformer-Guided Prototyping", Image and Vision Computing 2025)
reuse it.

Notation for one episode: query features :math:`X_q \in \mathbb{R}^{C \times h \times w}`,
support features :math:`X_s \in \mathbb{R}^{C \times h' \times w'}` (already multiplied by the
support mask, so background cells are zero vectors), soft support mask
:math:`m \in [0, 1]^{h' \times w'}`. For a query cell :math:`q` and a support cell :math:`s`

.. math::
    \cos(q, s) = \frac{X_q(q)^\top X_s(s)}{\lVert X_q(q) \rVert\, \lVert X_s(s) \rVert + \epsilon},
    \qquad \epsilon = 10^{-7}

(PFENet's form: :math:`\epsilon` is added to the *product* of the norms, so a zero support vector
has similarity 0). The two reductions over the support cells are

.. math::
    c^{\max}(q) = \max_{s} \cos(q, s) \quad \text{(PFENet, MSDNet)}, \qquad
    c^{\text{mean}}(q) = \frac{\sum_s m(s) \cos(q, s)}{\sum_s m(s) + \epsilon} \quad \text{(MSPF)},

and either is min-max normalised over the query cells of its image,

.. math::
    Y(q) = \frac{c(q) - \min_{q'} c(q')}{\max_{q'} c(q') - \min_{q'} c(q') + \epsilon}.

The max runs over *all* support cells, background (zero) cells included, exactly as PFENet's code
does; a query cell whose similarity to every object cell is negative therefore gets 0 before
normalisation. The mean runs over the object: MSPF's equation (2) averages over the support
cells of its masked features; weighting by the soft mask ``m`` makes that an average over the
object, with boundary cells counted by their mask fraction.

With K shots every function returns one normalised prior per shot; PFENet (and MSPF here) average
them afterwards, ``prior.mean(dim=1, keepdim=True)``.

MSPF's multi-scale cascade (:func:`multi_scale_mean_cosine_priors`) is documented there.

The functions here compute every similarity of every query cell with every support cell, as the
equations read. :mod:`fsslib.models.fast` has twins that compare the query with the object's
cells only; the methods run those by default (``ModelConfig.fast_paths``).

Shapes: B episodes, K shots, C channels, ``h x w`` query cells, ``h' x w'`` support cells.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .ops import mask_to_feature_size, resize_to

__all__ = [
    "PRIOR_EPS",
    "max_cosine_prior",
    "mean_cosine_prior",
    "min_max_normalize",
    "multi_scale_mean_cosine_priors",
    "pairwise_cosine",
]

#: PFENet's ``cosine_eps``; MSPF uses the same value (its equation 4: 1e-7).
PRIOR_EPS = 1e-7


def pairwise_cosine(query: Tensor, support: Tensor, eps: float = PRIOR_EPS) -> Tensor:
    r"""Cosine similarity of every support cell with every query cell.

    ``cos(q, s) = <X_q(q), X_s(s)> / (|X_q(q)| |X_s(s)| + eps)``.

    Args:
        query: ``[B, C, h, w]``.
        support: ``[B, K, C, h', w']``.
        eps: added to the product of the norms (PFENet: 1e-7).

    Returns:
        ``[B, K, h' * w', h * w]``; row-major cell order on both sides.
    """
    if query.dim() != 4 or support.dim() != 5 or support.shape[0] != query.shape[0] \
            or support.shape[2] != query.shape[1]:
        raise ValueError(f"expected query [B, C, h, w] and support [B, K, C, h', w'] with matching B and C, "
                         f"got {tuple(query.shape)} and {tuple(support.shape)}")
    q = query.flatten(2)  # [B, C, hw]
    s = support.flatten(3)  # [B, K, C, h'w']
    dots = torch.einsum("bkcs,bcq->bksq", s, q)
    norms = s.norm(dim=2).unsqueeze(3) * q.norm(dim=1)[:, None, None, :]  # |X_s(s)| |X_q(q)|
    return dots / (norms + eps)


def min_max_normalize(similarity: Tensor, eps: float = PRIOR_EPS) -> Tensor:
    r"""``(c - min c) / (max c - min c + eps)`` over the last two dimensions (the cells of one map).

    Args:
        similarity: ``[..., h, w]``, e.g. ``[B, K, h, w]``; each ``h x w`` map is normalised alone.

    Returns:
        the same shape, values in ``[0, 1)``.
    """
    flat = similarity.flatten(-2)
    low = flat.min(dim=-1, keepdim=True).values
    high = flat.max(dim=-1, keepdim=True).values
    return ((flat - low) / (high - low + eps)).view_as(similarity)


def max_cosine_prior(query: Tensor, support: Tensor, eps: float = PRIOR_EPS) -> Tensor:
    r"""PFENet's prior: for each query cell the *largest* similarity to any support cell, normalised.

    ``Y(q) = minmax(max_s cos(q, s))``. (:func:`fsslib.models.fast.max_cosine_prior` computes it
    from the object's cells only.)

    Args:
        query: high-level query features ``[B, C, h, w]``.
        support: high-level support features ``[B, K, C, h', w']``, already multiplied by the
            (soft) support mask, as PFENet does. Zero cells take part in the max with similarity 0.
        eps: cosine and normalisation epsilon (PFENet: 1e-7 for both).

    Returns:
        ``[B, K, h, w]``: one min-max normalised prior per shot.
    """
    similarity = pairwise_cosine(query, support, eps).max(dim=2).values  # [B, K, hw]
    return min_max_normalize(similarity.unflatten(-1, query.shape[-2:]), eps)


def mean_cosine_prior(query: Tensor, support: Tensor, support_weights: Tensor, eps: float = PRIOR_EPS) -> Tensor:
    r"""MSPF's prior: for each query cell the *mask-weighted mean* similarity to the support object.

    ``c(q) = sum_s m(s) cos(q, s) / (sum_s m(s) + eps)``, then min-max normalised. The same
    ``eps`` regularises the cosine, the weight sum and the normalisation (MSPF gives 1e-7 for its
    normalisation and no other value). A support with an empty mask gives an all-zero prior.
    (:func:`fsslib.models.fast.mean_cosine_prior` computes it from the weighted cells only.)

    Args:
        query: high-level query features ``[B, C, h, w]``.
        support: high-level support features ``[B, K, C, h', w']`` (masked by the caller).
        support_weights: soft support mask at the support's size, ``[B, K, h', w']``, in [0, 1].

    Returns:
        ``[B, K, h, w]``: one min-max normalised prior per shot.
    """
    if support_weights.shape != support.shape[:2] + support.shape[3:]:
        raise ValueError(f"support_weights must be [B, K, h', w'] = {tuple(support.shape[:2] + support.shape[3:])}, "
                         f"got {tuple(support_weights.shape)}")
    m = support_weights.flatten(2).to(query.dtype).unsqueeze(3)  # [B, K, h'w', 1]
    cosine = pairwise_cosine(query, support, eps)  # [B, K, h'w', hw]
    similarity = (m * cosine).sum(dim=2) / (m.sum(dim=2) + eps)  # [B, K, hw]
    return min_max_normalize(similarity.unflatten(-1, query.shape[-2:]), eps)


def multi_scale_mean_cosine_priors(query: Tensor, support: Tensor, support_masks: Tensor,
                                   sizes: Sequence[tuple[int, int]], connect: bool = True,
                                   eps: float = PRIOR_EPS, support_resize: str = "bilinear") -> list[Tensor]:
    r"""MSPF's multi-scale prior masks (section 3.2, equations 1-6), averaged over the shots.

    Scale 1 works on the high-level features themselves; every later scale shrinks the query
    features by adaptive average pooling and the support features by bilinear resizing:

    .. math::
        X_q^{1} &= \operatorname{pool}_{1}(X_q), \qquad
        X_q^{i+1} = \operatorname{pool}_{i+1}\big(X_q^{i} \odot Y^{i}\big)
            \quad \text{(eq. 5; without "connect": } \operatorname{pool}_{i+1}(X_q^{i})\text{)} \\
        X_s^{1} &= \operatorname{resize}_{1}(X_s) \odot m^{1}, \qquad
        X_s^{i+1} = \operatorname{resize}_{i+1}\big(X_s^{i}\big) \odot m^{i+1} \quad \text{(eq. 6)} \\
        Y^{i} &= \tfrac{1}{K} \textstyle\sum_k \operatorname{minmax}\big(c^{\text{mean}}_k(X_q^{i}, X_s^{i}, m^{i})\big)

    where :math:`\operatorname{pool}_i` is adaptive average pooling to ``sizes[i]`` (the identity
    when the size is unchanged), :math:`\operatorname{resize}_i` bilinear with aligned corners,
    and :math:`m^{i}` the binary support mask resized bilinearly (aligned corners) to
    ``sizes[i]``. The query features are filtered by the previous scale's (shot-averaged) prior
    before pooling: the paper's "inter-scale connection" of the prior module, switched by
    ``connect``. Scale 1 is identical with and without it.

    Two consequences of the equations worth knowing: bilinear resizing with aligned corners
    *samples* the full-resolution mask at ``h_i x w_i`` points, so at a coarse scale a small
    object can vanish from :math:`m^{i}` (its prior is then 0 everywhere); and a ``1 x 1`` scale
    has a single cell, whose min-max normalised prior is always 0. ``support_resize="area"``
    resizes the mask (the object's fraction of each cell) and the support features by adaptive
    average pooling instead of sampling them, so no object vanishes; it departs from the authors'
    resizing and matters where objects are small relative to ``H / h_i`` (the 128-pixel
    synthetic benchmark at 4x4 and 2x2).

    Args:
        query: high-level query features ``[B, C, h, w]``.
        support: ``[B, K, C, h', w']``, layer4 of the masked layer3 features, *not yet* masked
            again (this function applies :math:`m^{1}`).
        support_masks: binary support masks ``[B, K, H, W]`` at any resolution (1 = object;
            255 and 254 count as 0).
        sizes: ``(h_i, w_i)`` of every scale, finest first (MSPF: the fusion module's bins).
        connect: filter the query features with the previous prior before pooling (eq. 5).
        support_resize: how mask and support features reach each scale: ``"bilinear"`` (aligned
            corners, as the authors) or ``"area"`` (adaptive average pooling).

    Returns:
        ``[Y^1, ..., Y^n]``, each ``[B, 1, h_i, w_i]``.
    """
    if support_resize not in ("bilinear", "area"):
        raise ValueError(f"support_resize must be 'bilinear' or 'area', got {support_resize!r}")
    b, k = support.shape[:2]
    masks = support_masks.flatten(0, 1)
    q, s = query, support.flatten(0, 1)
    priors: list[Tensor] = []
    for i, size in enumerate(sizes):
        size = (int(size[0]), int(size[1]))
        if i > 0 and connect:
            q = q * priors[-1]
        if tuple(q.shape[-2:]) != size:
            q = F.adaptive_avg_pool2d(q, size)
        if support_resize == "area":
            weights = F.adaptive_avg_pool2d((masks == 1).to(s.dtype).unsqueeze(1), size).squeeze(1)
            s = F.adaptive_avg_pool2d(s, size) * weights.unsqueeze(1)
        else:
            weights = mask_to_feature_size(masks, size).to(s.dtype)  # [B*K, h_i, w_i]
            s = resize_to(s, size, "bilinear", align_corners=True) * weights.unsqueeze(1)
        per_shot = mean_cosine_prior(q, s.unflatten(0, (b, k)), weights.unflatten(0, (b, k)), eps)
        priors.append(per_shot.mean(dim=1, keepdim=True))
    return priors
