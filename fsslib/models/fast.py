"""Fast twins: the one place where speed tricks live.

Each method file states its paper's equations as plain tensor code. Where that plain code is too
slow for the tables (a 60 x 60 x 1024 feature map, five shots, thousands of episodes), a *fast
twin* here computes the same thing another way: a matrix product instead of a broadcast sum, a
crop instead of a whole map, a gather instead of a mask. Rules:

- every twin starts with a one-line statement of what it computes and names the plain function
  or method it replaces;
- ``tests/test_fast_paths.py`` checks each twin against the plain version on random inputs
  (in float64, to rounding), and each method's whole head with ``fast_paths`` on and off;
- a method chooses between the two in one line, ``if self.config.fast_paths:``, so its file
  still reads top to bottom as the paper. ``fast_paths=True`` is the default, and every stored
  result was computed with it.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .ops import clamped_norm, gather_cells, mask_to_feature_size, resize_by_matrices, resize_to
from .priors import PRIOR_EPS, min_max_normalize

# --- PFENet family (PFENet, MSPF, MSDNet)
# The priors of PFENet, MSPF and MSDNet read the support's high-level features only where a
# support mask is non-zero, and everything else is multiplied by 0. Two consequences make them
# fast: layer4 of the masked support need only run on the objects' bounding box (a crop), and the
# similarities need only the object's cells (a gather). Resizing thousands of channels is a pair of
# matrix products.

def receptive_radius(backbone, name: str) -> int | None:
    """How far, in cells, stage ``name`` looks around an output cell; None if it resamples.

    A helper of :func:`run_stage_in_box`, not a twin. The sum over the stage's convolutions and
    poolings of ``dilation * (kernel - 1) // 2``: an upper bound on the radius along any path
    through it (a residual block's shortcut adds nothing). None when one of them has a stride or
    a padding that changes the size, so the output grid is not the input grid.
    """
    radii = [_block_radius(block) for block in backbone.stage_blocks(name)]
    return None if None in radii else sum(radii)


def _block_radius(module: nn.Module) -> int | None:
    """Sum of ``dilation * (kernel - 1) // 2`` over the module's convolutions and poolings; None if
    one of them strides or pads differently from that reach (the output grid is not the input's)."""
    radius = 0
    for layer in module.modules():
        if not isinstance(layer, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            continue
        kernel, stride, padding = (nn.modules.utils._pair(getattr(layer, attr))
                                   for attr in ("kernel_size", "stride", "padding"))
        dilation = nn.modules.utils._pair(getattr(layer, "dilation", 1))
        reach = [d * (k - 1) // 2 for k, d in zip(kernel, dilation)]
        if stride != (1, 1) or list(padding) != reach:
            return None
        radius += max(reach)
    return radius


def run_stage_in_box(backbone, name: str, x: Tensor, box: Sequence[tuple[int, int]]) -> Tensor | None:
    """``backbone.run_stage(name, x)`` on the cells of ``box`` only; replaces
    :meth:`~fsslib.models.backbones.Backbone.run_stage` cut to the box.

    ``box`` is ``((top, bottom), (left, right))`` on ``x``'s grid, end-exclusive; returns
    ``[N, C_out, bottom - top, right - left]``. Each block of the stage (a residual block, or a
    convolution) runs on the box grown by the receptive radius of the blocks after it, and its
    output is cut down to what the next block needs; on the box the result equals the full
    computation's (zero padding included: a crop that reaches the grid's border keeps it). For a
    dilated ResNet-50 ``layer4`` (radii 2, 4, 4) the three blocks run on the box grown by 10, 8
    and 4 cells instead of 10, 10 and 10. None when the stage resamples (see :func:`receptive_radius`).
    """
    blocks = backbone.stage_blocks(name)
    radii = [_block_radius(block) for block in blocks]
    if None in radii:
        return None
    size = x.shape[-2:]

    def grown(reach: int) -> list[tuple[int, int]]:
        return [(max(lo - reach, 0), min(hi + reach, cells)) for (lo, hi), cells in zip(box, size)]

    remaining = sum(radii)
    region = grown(remaining)
    (top, bottom), (left, right) = region
    x = x[..., top:bottom, left:right]
    for block, radius in zip(blocks, radii):
        remaining -= radius
        inner = grown(remaining)
        x = block(x)
        (top, bottom), (left, right) = ((lo - outer_lo, hi - outer_lo)
                                        for (lo, hi), (outer_lo, _) in zip(inner, region))
        x, region = x[..., top:bottom, left:right], inner
    return x


def object_box(foreground: Tensor, size: Sequence[int], margin: int) -> list[tuple[int, int]] | None:
    """Rows ``(top, bottom)`` and columns ``(left, right)`` (end-exclusive) on an ``h x w`` grid
    covering every foreground pixel of the ``[N, H, W]`` masks, ``margin`` cells wider; None if
    there is none. A helper of :func:`masked_high_level`. Pixel ``i`` of ``H`` sits at grid
    coordinate ``i (h - 1) / (H - 1)`` (aligned corners)."""
    anywhere = (foreground == 1).any(dim=0)  # [H, W]
    box = []
    for present, cells in ((anywhere.any(dim=1), size[0]), (anywhere.any(dim=0), size[1])):
        if not bool(present.any()):
            return None
        index = present.nonzero().squeeze(1)
        scale = (cells - 1) / max(present.numel() - 1, 1)
        lo = math.floor(int(index.min()) * scale) - margin
        hi = math.ceil(int(index.max()) * scale) + margin + 1
        box.append((max(lo, 0), min(hi, cells)))
    return box


def masked_high_level(backbone, support_layer3: Tensor, foreground: Tensor, margin: int = 0) -> Tensor:
    """``layer4(layer3 * m)`` where the priors read it, 0 elsewhere; replaces
    :func:`fsslib.models.pfenet.masked_high_level`.

    Every prior multiplies these features by a support mask resized to some grid, so only the
    objects' bounding box matters (the union over the N supports; ``margin`` cells wider for
    priors that resize the mask to coarser grids, 0 covers every non-zero cell of the bilinear
    ``m``). layer4 runs on that box by :func:`run_stage_in_box`: inside it the result is exactly
    the whole map's, outside it is 0. A dilated ResNet layer4 costs about three ResNet-50 forwards
    at 473 pixels; for an object spanning half the rows and a third of the columns (a 32 x 22 box)
    its three blocks then compute 61%, 51% and 33% of the 60 x 60 cells. Runs the whole map when
    layer4 resamples (no receptive radius).
    """
    with torch.no_grad():
        weights = mask_to_feature_size(foreground, support_layer3.shape[-2:]).to(support_layer3.dtype)
        masked = support_layer3 * weights.unsqueeze(1)
        if receptive_radius(backbone, "layer4") is None:
            return backbone.run_stage("layer4", masked)
        high = masked.new_zeros(masked.shape[0], backbone.out_channels["layer4"], *masked.shape[-2:])
        box = object_box(foreground, support_layer3.shape[-2:], margin)
        if box is None:  # no object in any support: every prior reads zeros
            return high
        (top, bottom), (left, right) = box
        high[..., top:bottom, left:right] = run_stage_in_box(backbone, "layer4", masked, box)
        return high


def mspf_masked_high_level(backbone, support_layer3: Tensor, foreground: Tensor, sizes: Sequence[tuple[int, int]],
                           support_resize: str) -> Tensor:
    """MSPF's ``layer4(layer3 * m)``, cropped to where its prior scales read it; replaces
    :func:`fsslib.models.pfenet.masked_high_level` in :meth:`fsslib.models.mspf.MSPF.prior_masks`.

    Every scale reads the support where the first scale's mask m^1 is non-zero: on layer4's own
    grid with bilinear masks, inside the box of the bilinear mask (margin 0); a bilinear resize to
    another grid reads a cell's neighbours, and an area mask reaches one cell further than a
    bilinear one: 2 cells cover both. Area resizing to a coarser first scale averages support
    cells far from the object, so then the whole map runs.
    """
    same_grid = tuple(sizes[0]) == tuple(support_layer3.shape[-2:])
    if support_resize != "bilinear" and not same_grid:
        with torch.no_grad():
            weights = mask_to_feature_size(foreground, support_layer3.shape[-2:]).to(support_layer3.dtype)
            return backbone.run_stage("layer4", support_layer3 * weights.unsqueeze(1))
    margin = 0 if same_grid and support_resize == "bilinear" else 2
    return masked_high_level(backbone, support_layer3, foreground, margin)


def _query_cells(query: Tensor) -> tuple[Tensor, Tensor]:
    """``[B, C, h, w]`` -> the cells ``[B, C, hw]`` and their plain norms ``[B, 1, hw]`` (PFENet's eps
    goes on the product of the norms, not on each), computed once for all shots. Priors run
    without gradient, so the unclamped norm's derivative at a zero vector never matters."""
    cells = query.flatten(2)
    return cells, clamped_norm(cells, dim=1, keepdim=True, floor=0.0)


def _cosine_to_cells(query_cells: Tensor, query_norms: Tensor, support_cells: Tensor, eps: float) -> Tensor:
    """``cos(q, s)`` with eps on the product of the norms: ``[B, C, hw]``, ``[B, 1, hw]``, support
    cells ``[B, N, C]`` -> ``[B, N, hw]``."""
    dots = torch.bmm(support_cells, query_cells)
    norms = torch.bmm(support_cells.norm(dim=2, keepdim=True), query_norms)  # |s| |q|, same shape
    return dots.div_(norms.add_(eps))


def _shot_cells(support: Tensor, shot: int) -> Tensor:
    """The cells of one shot as rows: ``[B, K, C, h', w']`` -> ``[B, h' * w', C]``."""
    return support[:, shot].flatten(2).transpose(1, 2)


def max_cosine_prior(query: Tensor, support: Tensor, eps: float = PRIOR_EPS,
                     object_cells: Tensor | None = None) -> Tensor:
    """PFENet's max-cosine prior from the object's cells and one zero cell only; replaces
    :func:`fsslib.models.priors.max_cosine_prior`.

    A masked-out support cell is a zero vector, whose cosine with every query cell is exactly 0,
    so the max needs the object's cells and one zero cell, not all ``h'w'`` of them.
    ``object_cells``: bool ``[B, K, h', w']``, where the support may be non-zero (where the mask
    weight is positive); every other cell must be a zero vector. None: found from ``support``, a
    pass over the whole map (at five shots of 2048 x 60 x 60, about as long as the similarities).
    Shapes as the plain function: ``[B, C, h, w]``, ``[B, K, C, h', w']`` -> ``[B, K, h, w]``.
    """
    cells = support.flatten(3)  # [B, K, C, h'w']
    on_object = cells.ne(0).any(dim=2) if object_cells is None else object_cells.flatten(2).to(cells.device)
    count = int(on_object.sum(dim=-1).max())
    if count < cells.shape[-1]:
        support = gather_cells(cells, on_object, keep=count + 1)[0].unsqueeze(-1)  # [B, K, C, N, 1]
    query_cells, query_norms = _query_cells(query)
    # one shot at a time: the [B, N, hw] similarity matrix is the largest tensor here
    similarity = torch.stack([_cosine_to_cells(query_cells, query_norms, _shot_cells(support, k), eps)
                              .max(dim=1).values for k in range(support.shape[1])], dim=1)  # [B, K, hw]
    return min_max_normalize(similarity.unflatten(-1, query.shape[-2:]), eps)


def mean_cosine_prior(query: Tensor, support: Tensor, support_weights: Tensor, eps: float = PRIOR_EPS) -> Tensor:
    """MSPF's mask-weighted mean-cosine prior from the weighted cells only; replaces
    :func:`fsslib.models.priors.mean_cosine_prior`.

    Cells of weight 0 add nothing to the weighted sum, so only the weighted ones are compared
    with the query, one shot at a time, and the sum is a matrix product. Shapes as the plain
    function: ``[B, C, h, w]``, ``[B, K, C, h', w']``, ``[B, K, h', w']`` -> ``[B, K, h, w]``.
    """
    if support_weights.shape != support.shape[:2] + support.shape[3:]:
        raise ValueError(f"support_weights must be [B, K, h', w'] = {tuple(support.shape[:2] + support.shape[3:])}, "
                         f"got {tuple(support_weights.shape)}")
    weights = support_weights.flatten(2).to(query.dtype)  # [B, K, h'w']
    total_weight = weights.sum(dim=2, keepdim=True)
    weighted = weights > 0
    count = int(weighted.sum(dim=-1).max())
    if count < weights.shape[-1]:
        cells, _, index = gather_cells(support.flatten(3), weighted, keep=max(count, 1))
        support, weights = cells.unsqueeze(-1), weights.gather(-1, index)  # [B, K, C, N, 1], [B, K, N]
    query_cells, query_norms = _query_cells(query)
    weighted_sums = torch.stack([torch.bmm(weights[:, k].unsqueeze(1),
                                           _cosine_to_cells(query_cells, query_norms, _shot_cells(support, k), eps))
                                 for k in range(support.shape[1])], dim=1).squeeze(2)  # [B, K, hw]
    similarity = weighted_sums / (total_weight + eps)
    return min_max_normalize(similarity.unflatten(-1, query.shape[-2:]), eps)


def multi_scale_mean_cosine_priors(query: Tensor, support: Tensor, support_masks: Tensor,
                                   sizes: Sequence[tuple[int, int]], connect: bool = True,
                                   eps: float = PRIOR_EPS, support_resize: str = "bilinear") -> list[Tensor]:
    """MSPF's prior cascade with matrix-product resizing and :func:`mean_cosine_prior` above; replaces
    :func:`fsslib.models.priors.multi_scale_mean_cosine_priors` (same arguments, same output)."""
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
            s = resize_by_matrices(s, size, align_corners=True) * weights.unsqueeze(1)
        per_shot = mean_cosine_prior(q, s.unflatten(0, (b, k)), weights.unflatten(0, (b, k)), eps)
        priors.append(per_shot.mean(dim=1, keepdim=True))
    return priors


def training_free_prior(query_high: Tensor, support_high: Tensor, foreground: Tensor, shots: tuple[int, int],
                        size: Sequence[int], eps: float = PRIOR_EPS) -> Tensor:
    """The shot-averaged max-cosine prior, with the object's cells passed to :func:`max_cosine_prior`
    above; replaces :func:`fsslib.models.pfenet.training_free_prior` (same arguments, same output)."""
    with torch.no_grad(), torch.autocast(device_type=support_high.device.type, enabled=False):
        weights = mask_to_feature_size(foreground, support_high.shape[-2:]).to(torch.float32)
        support = (support_high.float() * weights.unsqueeze(1)).unflatten(0, shots)
        per_shot = max_cosine_prior(query_high.float(), support, eps, object_cells=(weights > 0).unflatten(0, shots))
        return resize_to(per_shot, size, "bilinear", align_corners=True).mean(dim=1, keepdim=True)
