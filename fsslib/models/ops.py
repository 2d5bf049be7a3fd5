"""Tensor operations shared by the few-shot methods.

Label maps follow the episode contract (:mod:`fsslib.data.episodes`): 1 = target class,
0 = background, 255 = void (``IGNORE_INDEX``), and in support masks 254 = ``EXCLUDED`` (another
class of the episode, or unlabelled in a weak support: neither foreground nor background); N-way
queries use 1..N for the ways. Functions that take a mask expect a *binary* one, built by the
caller with :func:`foreground_mask` / :func:`background_mask` (or ``mask == 1``), so that each
method decides what 255 means for it; where a raw label map slips through, 255 and 254 count as
0 (left out).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "BACKGROUND_RULES",
    "COSINE_EPS",
    "EXCLUDED",
    "IGNORE_INDEX",
    "background_mask",
    "clamped_norm",
    "cosine_logits",
    "excluded_as_ignore",
    "foreground_mask",
    "gather_cells",
    "hard_labels",
    "mask_to_feature_size",
    "linear_resize_matrix",
    "masked_average_pooling",
    "resize_by_matrices",
    "resize_to",
    "unit_vectors",
    "weighted_cell_sum",
]

IGNORE_INDEX = 255
#: Support masks: neither foreground nor background (``fsslib.data.EXCLUDED``).
EXCLUDED = 254
#: What :func:`background_mask` may count as background; see there.
BACKGROUND_RULES = ("labelled", "not_foreground")

_MAP_MODES = ("resize_mask", "upsample_features")


def foreground_mask(mask: Tensor, label: int = 1) -> Tensor:
    """``(mask == label)`` as float; 255 (void) and 254 (excluded) are never foreground.

    Args:
        mask: label map ``[..., H, W]`` (1 / 0 / 255 / 254, or 0..N for N-way episodes).
        label: the label that counts as foreground; way ``n`` of an N-way episode is ``n``.
    """
    return (mask == label).float()


def background_mask(mask: Tensor, rule: str = "labelled") -> Tensor:
    """The background of a label map as a float mask, by one of two rules.

    - ``"labelled"``: the pixels coded 0 only; void (255) is in neither foreground nor
      background. SSP, PFENet, MSPF and MSDNet use this rule.
    - ``"not_foreground"``: every pixel that is neither the class nor another class of the
      episode, i.e. coded 0 or 255: void counts as background. The rule of PANet's public code
      (its support masks take every pixel outside the episode's classes as background).

    Excluded pixels (254) are background under neither rule.

    Args:
        mask: label map ``[..., H, W]`` (1 / 0 / 255 / 254).
        rule: one of :data:`BACKGROUND_RULES`.
    """
    if rule == "labelled":
        return (mask == 0).float()
    if rule == "not_foreground":
        return ((mask == 0) | (mask == IGNORE_INDEX)).float()
    raise ValueError(f"background rule must be one of {BACKGROUND_RULES}, got {rule!r}")


def excluded_as_ignore(mask: Tensor) -> Tensor:
    """``mask`` with excluded pixels (254) recoded as void (255), e.g. for a loss target whose
    cross-entropy ignores both (``ignore_index=IGNORE_INDEX`` alone would reject 254 as a class)."""
    return mask.masked_fill(mask == EXCLUDED, IGNORE_INDEX)


def resize_to(
    x: Tensor, size: Sequence[int], mode: str = "bilinear", align_corners: bool = True
) -> Tensor:
    """Resize the last two dimensions of features, logits, masks or label maps to ``size``.

    Args:
        x: ``"bilinear"``: floating ``[B, C, H, W]`` (features, logits, soft masks).
            ``"nearest"``: ``[B, H, W]`` or ``[B, C, H, W]`` of any dtype (label maps); the
            output has the input's dtype and only values present in the input, so 255 survives.
        size: ``(h, w)``.
        mode: ``"bilinear"`` or ``"nearest"``.
        align_corners: bilinear only. True (the default) maps corner pixel centres onto each
            other, as PFENet, SSP and HSNet resize; PANet uses PyTorch's default, False.

    ``"nearest"`` samples at pixel centres (PyTorch's ``"nearest-exact"``, the convention of PIL
    and scikit-image), not PyTorch's ``"nearest"``, which drifts by up to one source pixel.
    The input is returned unchanged when it already has the requested size.
    """
    size = (int(size[0]), int(size[1]))
    if tuple(x.shape[-2:]) == size:
        return x
    if mode == "bilinear":
        if x.dim() != 4 or not x.is_floating_point():
            raise ValueError(
                f"bilinear resizing needs a floating [B, C, H, W] tensor, got {x.dtype} of shape "
                f"{tuple(x.shape)}; use mode='nearest' for label maps"
            )
        return F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)
    if mode == "nearest":
        if x.dim() not in (3, 4):
            raise ValueError(f"expected [B, H, W] or [B, C, H, W], got shape {tuple(x.shape)}")
        # interpolate has no integer kernels on every device; floats hold labels < 2**24 exactly.
        y = x.unsqueeze(1) if x.dim() == 3 else x
        y = F.interpolate(y.float(), size=size, mode="nearest-exact").to(x.dtype)
        return y.squeeze(1) if x.dim() == 3 else y
    raise ValueError(f"mode must be 'bilinear' or 'nearest', got '{mode}'")


def mask_to_feature_size(mask: Tensor, size: Sequence[int], align_corners: bool = True) -> Tensor:
    """Soft mask at feature resolution: binary mask resized bilinearly to ``size``.

    ``m' = bilinear(m)`` with ``m`` the binary mask (255, 254 -> 0), so boundary cells get fractional
    weights in [0, 1]. This is how PFENet and SSP bring a support mask to the feature map, both
    for masked average pooling and for masking features (``features * m'``).

    Args:
        mask: binary mask ``[B, H, W]`` (float, bool or integer; 255 and 254 count as 0).
        size: feature size ``(h, w)``.

    Returns:
        float ``[B, h, w]``.
    """
    weights = _binary_weights(mask, torch.get_default_dtype())
    return resize_to(weights.unsqueeze(1), size, "bilinear", align_corners).squeeze(1)


def masked_average_pooling(
    features: Tensor,
    mask: Tensor,
    mode: str = "resize_mask",
    eps: float = 1e-5,
    align_corners: bool | None = None,
) -> Tensor:
    r"""Prototype of the masked region: the mask-weighted mean of the feature vectors.

    Two conventions are in use; they differ in which side is resized.

    ``"resize_mask"`` (SSP, Fan et al., ECCV 2022; PFENet, Tian et al., TPAMI 2020): the mask
    is bilinearly resized to the feature size, ``m' = bilinear(m) \in [0, 1]^{h \times w}``,

    .. math:: p = \frac{\sum_{x,y} F(x,y)\, m'(x,y)}{\sum_{x,y} m'(x,y) + \epsilon}

    ``"upsample_features"`` (PANet, Wang et al., ICCV 2019): the features are bilinearly
    upsampled to the mask size, ``F' = bilinear(F)`` of size ``H \times W``,

    .. math:: p = \frac{\sum_{x,y} F'(x,y)\, m(x,y)}{\sum_{x,y} m(x,y) + \epsilon}

    The second keeps the mask's full resolution at the price of a full-resolution feature map.

    Args:
        features: ``[B, C, h, w]`` (flatten shots into the batch: ``[B*K, C, h, w]``).
        mask: binary ``[B, H, W]``, 1 = pixels to pool (float, bool or integer). Pass
            ``foreground_mask(labels)`` / ``background_mask(labels)`` rather than raw labels;
            a 255 or 254 that remains counts as 0. An all-zero mask gives a zero prototype.
        mode: ``"resize_mask"`` or ``"upsample_features"``.
        eps: added to the mask area. SSP and PANet use 1e-5; PFENet uses 5e-4.
        align_corners: for the bilinear resize; None picks each convention's own choice: True
            for ``"resize_mask"`` (SSP, PFENet), False for ``"upsample_features"`` (PANet calls
            ``F.interpolate`` with PyTorch's default).

    Returns:
        prototypes ``[B, C]``.
    """
    if mode not in _MAP_MODES:
        raise ValueError(f"mode must be one of {_MAP_MODES}, got '{mode}'")
    if features.dim() != 4:
        raise ValueError(f"features must be [B, C, h, w], got shape {tuple(features.shape)}")
    if mask.dim() != 3 or mask.shape[0] != features.shape[0]:
        raise ValueError(
            f"mask must be [B, H, W] with B = {features.shape[0]} (from features), got shape "
            f"{tuple(mask.shape)}"
        )
    mask = mask.to(features.device)
    if mode == "resize_mask":
        corners = True if align_corners is None else align_corners
        weights = mask_to_feature_size(mask, features.shape[-2:], corners).to(features.dtype)
        area = weights.sum(dim=(1, 2))
    else:
        corners = False if align_corners is None else align_corners
        full = _binary_weights(mask, features.dtype)
        area = full.sum(dim=(1, 2))
        # Bilinear upsampling is linear and separable, F' = A_h F A_w^T, so
        # sum_XY F'(X,Y) m(X,Y) = sum_xy F(x,y) (A_h^T m A_w)(x,y): pooling the mask with the
        # transposed interpolation gives the same prototype without building the [B, C, H, W] map.
        a_h = linear_resize_matrix(mask.shape[-2], features.shape[-2], corners, full)
        a_w = linear_resize_matrix(mask.shape[-1], features.shape[-1], corners, full)
        weights = a_h.T @ full @ a_w
    # features [B, C, h, w] and weights [B, h, w] now share one resolution
    return weighted_cell_sum(features.flatten(2), weights.flatten(1)) / (area.unsqueeze(1) + eps)


def weighted_cell_sum(values: Tensor, weights: Tensor) -> Tensor:
    """``sum_x w(x) v(x)``: ``[B, C, P]``, ``[B, P]`` -> ``[B, C]``.

    One ``[C, P] x [P, 1]`` product per batch element; ``einsum("bcp,bp->bc")`` picks the
    transposed ``[1, P] x [P, C]`` instead, about 5x slower on a CPU for a 1024-channel map.
    """
    return torch.bmm(values, weights.to(values.dtype).unsqueeze(2)).squeeze(2)


#: Norms are clamped at this in cosine similarities (``F.cosine_similarity``'s eps), so a zero
#: vector scores 0 rather than NaN.
COSINE_EPS = 1e-8


def clamped_norm(vectors: Tensor, dim: int = 1, keepdim: bool = False, floor: float = COSINE_EPS) -> Tensor:
    """``max(|v|, floor)`` along ``dim``, as ``sqrt(max(sum v^2, floor^2))``: the same value, on a
    CPU 1.5-4x faster than ``Tensor.norm`` when ``dim`` is not the innermost (the channels of a
    feature map), and with ``floor > 0`` a zero gradient at a zero vector (``floor=0`` is the
    plain norm, whose square root has an infinite derivative there)."""
    return vectors.square().sum(dim=dim, keepdim=keepdim).clamp_min(floor ** 2).sqrt()


def unit_vectors(features: Tensor, dim: int = 1) -> Tensor:
    """``v / max(|v|, 1e-8)`` along ``dim`` (the channels of ``[B, C, ...]`` by default)."""
    return features / clamped_norm(features, dim, keepdim=True)


def cosine_logits(features: Tensor, prototypes: Tensor, scale: float | Tensor) -> Tensor:
    r"""Scaled cosine similarity between every feature vector and every prototype.

    .. math::
        \mathrm{logit}_p(x, y) = s \, \frac{F(x,y) \cdot p}
            {\max(\lVert F(x,y) \rVert, \epsilon)\, \max(\lVert p \rVert, \epsilon)},
        \quad \epsilon = 10^{-8}

    the semantics of ``torch.nn.functional.cosine_similarity`` (each norm clamped separately),
    so an all-zero feature or prototype gives logit 0 rather than NaN. PANet uses ``s = 20``.
    Computed as a product of normalised tensors, so the ``[B, P, C, h, w]`` broadcast that
    ``cosine_similarity`` would build is never materialised for shared prototypes.

    Args:
        features: ``[B, C, h, w]``.
        prototypes: ``[B, P, C]`` (one vector per prototype) or ``[B, P, C, h, w]`` (a vector
            per prototype and pixel, e.g. SSP's adaptive background prototypes).
        scale: ``s``, a number or a (learnable) scalar tensor.

    Returns:
        ``[B, P, h, w]``: channel ``p`` scores prototype ``p`` (e.g. ``[background, foreground]``).
    """
    if features.dim() != 4:
        raise ValueError(f"features must be [B, C, h, w], got shape {tuple(features.shape)}")
    batch, channels, height, width = features.shape
    if prototypes.dim() == 3:
        expected = (batch, prototypes.shape[1], channels)
    elif prototypes.dim() == 5:
        expected = (batch, prototypes.shape[1], channels, height, width)
    else:
        expected = None
    if expected is None or tuple(prototypes.shape) != expected:
        raise ValueError(
            f"prototypes must be [B, P, C] or [B, P, C, h, w] with B, C, h, w = {batch}, "
            f"{channels}, {height}, {width} (from features), got shape {tuple(prototypes.shape)}"
        )
    unit = unit_vectors(features)
    if prototypes.dim() == 5:  # one dot product per pixel (an einsum would issue h*w tiny products)
        dots = (unit.unsqueeze(1) * prototypes).sum(dim=2)
        return scale * dots / clamped_norm(prototypes, dim=2)
    return scale * torch.einsum("bchw,bpc->bphw", unit, unit_vectors(prototypes, dim=2))


def gather_cells(values: Tensor, selection: Tensor, keep: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """The selected cells of each map, first and in cell order, padded to one count per batch.

    Some similarities only need a few cells of a map (SSP's confident background, the support
    object of a prior mask); gathering them turns a ``[P, P]`` similarity into ``[P, N]``.

    Args:
        values: ``[..., C, P]`` (P cells of C channels).
        selection: bool ``[..., P]``, the same leading dimensions.
        keep: columns to return; default the largest selection. Maps with fewer selected cells
            (or a larger ``keep``) are padded with their unselected cells, in cell order.

    Returns:
        ``(cells [..., C, keep], valid bool [..., keep], index long [..., keep])``: ``valid`` marks
        the selected cells, ``index`` says which cell each column is.
    """
    if keep is None:
        keep = int(selection.sum(dim=-1).max())
    index = selection.to(torch.uint8).argsort(dim=-1, descending=True, stable=True)[..., :keep]
    cells = values.gather(-1, index.unsqueeze(-2).expand(*values.shape[:-1], keep))
    return cells, selection.gather(-1, index), index


def hard_labels(logits: Tensor) -> Tensor:
    """``long [B, H, W]``: the channel with the highest logit (``[B, P, H, W]`` in).

    ``max(1).indices`` rather than ``argmax(1)``: the same labels, but PyTorch's CPU argmax over
    a non-innermost dimension is about 20x slower, which dominated 1000-episode evaluations.
    """
    return logits.max(dim=1).indices


def linear_resize_matrix(out_size: int, in_size: int, align_corners: bool, like: Tensor) -> Tensor:
    """``A [out_size, in_size]`` with ``A @ v`` = 1-D linear resizing of ``v``, up or down (PyTorch's rule)."""
    basis = torch.eye(in_size, dtype=like.dtype, device=like.device).unsqueeze(0)  # in_size signals
    return F.interpolate(basis, size=out_size, mode="linear", align_corners=align_corners)[0].T


def resize_by_matrices(x: Tensor, size: Sequence[int], align_corners: bool = True) -> Tensor:
    """``resize_to(x, size, "bilinear", align_corners)`` as ``A_h x A_w^T``: the same separable
    linear map, computed as two matrix products over every channel at once.

    For maps with thousands of channels (a 5-shot support's 2048 x 60 x 60 layer4 features)
    ``F.interpolate`` on a CPU is about 5x slower than the products. ``x``: ``[..., H, W]``.
    """
    size = (int(size[0]), int(size[1]))
    if tuple(x.shape[-2:]) == size:
        return x
    a_h = linear_resize_matrix(size[0], x.shape[-2], align_corners, x)
    a_w = linear_resize_matrix(size[1], x.shape[-1], align_corners, x)
    return a_h @ x @ a_w.T


def _binary_weights(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """The mask as ``dtype`` weights with void (255) and excluded (254) pixels set to 0."""
    return mask.to(dtype).masked_fill((mask == IGNORE_INDEX) | (mask == EXCLUDED), 0)
