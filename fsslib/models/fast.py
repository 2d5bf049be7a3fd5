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

from .ops import (
    background_mask,
    clamped_norm,
    cosine_logits,
    foreground_mask,
    gather_cells,
    hard_labels,
    mask_to_feature_size,
    masked_average_pooling,
    resize_by_matrices,
    resize_to,
    unit_vectors,
    weighted_cell_sum,
)
from .priors import PRIOR_EPS, min_max_normalize


# --- prototype methods (ProtoNet, PANet, SSP)
# What a twin shares with its plain version (SSP's SelfSupport, confident_pixels, support_prototypes)
# the method file hands over as ``equations``: the method files import this module, never the reverse.
def prototype_logits(features: Tensor, prototypes: Tensor, scale: float | Tensor) -> Tensor:
    """``scale * cos(F(x), p_j)`` as a product of unit vectors; replaces ``protonet.prototype_logits``.

    :func:`~fsslib.models.ops.cosine_logits`: no ``[B, P, C, h, w]`` broadcast is built.
    """
    return cosine_logits(features, prototypes, scale)


def panet_prototype_alignment(query_feats: Tensor, query_logits: Tensor, support_feats: Tensor, way: int,
                              mask_size, scale: float, eps: float) -> dict[str, Tensor]:
    """PAR's reverse segmentation; replaces ``panet.prototype_alignment``.

    The query prototypes are one matrix product per class (``ops.masked_average_pooling``), the
    argmax is ``max().indices`` (``ops.hard_labels``) and the cosines are :func:`prototype_logits`.
    """
    b, s = support_feats.shape[:2]
    shot = s // way
    predicted = F.one_hot(hard_labels(query_logits), 1 + way).permute(0, 3, 1, 2).to(query_feats.dtype)
    # The masks are already h x w, so "resize_mask" resizes nothing: sum F [y=j] / (sum [y=j] + eps).
    pooled = query_feats.unsqueeze(1).expand(-1, 1 + way, -1, -1, -1).flatten(0, 1)
    query_prototypes = masked_average_pooling(pooled, predicted.flatten(0, 1), "resize_mask", eps)
    query_prototypes = query_prototypes.unflatten(0, (b, 1 + way))
    par_valid = predicted[:, 1:].sum(dim=(2, 3)) > 0
    bg, fg = query_prototypes[:, :1], query_prototypes[:, 1:]
    pairs = torch.stack([bg.expand_as(fg), fg], dim=2).repeat_interleave(shot, dim=1).flatten(0, 1)
    logits = cosine_logits(support_feats.flatten(0, 1), pairs, scale)
    support_logits = resize_to(logits, mask_size, "bilinear", align_corners=False).unflatten(0, (b, s))
    return {"support_logits": support_logits, "query_prototypes": query_prototypes, "par_valid": par_valid}


def _cosine_logits_of_unit(unit: Tensor, prototypes: Tensor, scale: float) -> Tensor:
    """:func:`~fsslib.models.ops.cosine_logits` given ``unit = unit_vectors(features)``."""
    if prototypes.dim() == 5:  # one dot product per pixel (an einsum would issue h*w tiny products)
        dots = (unit.unsqueeze(1) * prototypes).sum(dim=2)
        return scale * dots / clamped_norm(prototypes, dim=2)
    return scale * torch.einsum("bchw,bpc->bphw", unit, unit_vectors(prototypes, dim=2))


def ssp_match(features: Tensor, fg: Tensor, bg: Tensor, scale: float, unit: Tensor | None = None) -> Tensor:
    """``scale * (cos(F, bg), cos(F, fg))``; replaces ``ssp.match``.

    Takes ``unit = unit_vectors(features)`` from :func:`ssp_head`, which normalises the query once.
    """
    unit = unit_vectors(features) if unit is None else unit
    return torch.cat([_cosine_logits_of_unit(unit, p.unsqueeze(1), scale) for p in (bg, fg)], dim=1)


def ssp_selected_mean(features: Tensor, selection: Tensor) -> Tensor:
    """Mean of ``[B, C, P]`` over the selected pixels; replaces ``ssp.selected_mean``.

    One ``[C, P] x [P, 1]`` product (``ops.weighted_cell_sum``), not a ``[B, C, P]`` product map.
    """
    return weighted_cell_sum(features, selection) / selection.sum(dim=-1, keepdim=True).to(features.dtype)


def _attention_over_selected(unit_queries: Tensor, unit_keys: Tensor, valid: Tensor, scale: float) -> Tensor:
    """``softmax_y(scale * cos(x, y))`` over the valid keys, from unit vectors: ``[B, C, Q]``, ``[B, C, N]``
    -> ``[B, Q, N]``."""
    similarity = scale * torch.einsum("bcq,bcn->bqn", unit_queries, unit_keys)
    return similarity.masked_fill(~valid.unsqueeze(1), float("-inf")).softmax(dim=-1)


def ssp_background_attention(features: Tensor, selection: Tensor, scale: float = 2.0,
                             query_index: Tensor | None = None) -> Tensor:
    """ASBP weights ``a(x, .)`` as full maps; replaces ``ssp.adaptive_background_attention``.

    Computes only the chosen query rows and the selected key columns (padded to the batch's largest
    ``S_b``, ``ops.gather_cells``), then scatters them into the maps.
    """
    feats = unit_vectors(features.flatten(2))  # [B, C, P]
    if query_index is None:
        queries = feats
    elif query_index.dim() == 1:
        queries = feats[:, :, query_index.to(feats.device)]
    else:
        queries = feats.gather(2, query_index.to(feats.device).unsqueeze(1).expand(-1, feats.shape[1], -1))
    keys, valid, index = gather_cells(feats, selection.flatten(1))
    weights = _attention_over_selected(queries, keys, valid, scale)  # [B, Q, N]
    maps = weights.new_zeros(*weights.shape[:2], feats.shape[-1])
    return maps.scatter(2, index.unsqueeze(1).expand(-1, weights.shape[1], -1), weights)


def ssp_self_support(features: Tensor, logits: Tensor, fg_threshold: float = 0.7, bg_threshold: float = 0.6,
                     fallback_topk: int = 12, asbp_scale: float = 2.0, adaptive: bool = True,
                     unit: Tensor | None = None, *, equations):
    """The self-support module (SSFP, SSBP, ASBP); replaces ``ssp.self_support``.

    ``equations`` is the method module (``fsslib.models.ssp``), handed over by its caller: its
    result type and pixel selection are the plain ones, and this module never imports a method.

    ASBP compares every pixel with the selected background pixels only, ``[B, h*w, |S_b|]``
    similarities (padded to the batch's largest ``S_b``) instead of ``[B, h*w, h*w]`` (60 x 60
    features, 32 episodes: 1.7 GB per float32 copy); ``unit`` comes from :func:`ssp_head`.
    """
    SelfSupport, confident_pixels = equations.SelfSupport, equations.confident_pixels
    b, c, h, w = features.shape
    probs = logits.float().softmax(dim=1)
    flat = probs.flatten(2)  # [B, 2, P]
    fg_sel = confident_pixels(flat[:, 1], fg_threshold, fallback_topk)
    bg_sel = confident_pixels(flat[:, 0], bg_threshold, fallback_topk)
    feats = features.flatten(2)
    asbp = None
    if adaptive:
        unit = (unit_vectors(features) if unit is None else unit).flatten(2)
        background, valid, index = gather_cells(feats, bg_sel)  # [B, C, N]
        unit_background = unit.gather(2, index.unsqueeze(1).expand_as(background))
        attention = _attention_over_selected(unit, unit_background, valid, asbp_scale)  # [B, P, N]
        asbp = torch.einsum("bxn,bcn->bcx", attention.to(feats.dtype), background).view(b, c, h, w)
    return SelfSupport(probs, fg_sel.view(b, h, w), bg_sel.view(b, h, w), ssp_selected_mean(feats, fg_sel),
                       ssp_selected_mean(feats, bg_sel), asbp)


def weighted_sum(*terms: tuple[float, Tensor]) -> Tensor:
    """``sum_i w_i P_i`` of prototypes ``[B, C]`` and/or ``[B, C, h, w]``; replaces SSP's written-out mixes.

    (``ssp.self_support_prototypes`` and round 2 of ``SSP.head``.) The vectors are summed first and
    each map is added with its weight in one pass (``torch.add(..., alpha=w)``): at 60 x 60 x 1024 a
    pass over a map costs more than the rest of the mix.
    """
    vectors = [(wt, p) for wt, p in terms if p.dim() == 2]
    maps = [(wt, p) for wt, p in terms if p.dim() == 4]
    total = sum(wt * p for wt, p in vectors) if vectors else None
    if not maps:
        return total
    if total is None:
        (first_weight, first), maps = maps[0], maps[1:]
        total = first_weight * first
    else:
        total = total[..., None, None]
    for wt, p in maps:
        total = torch.add(total, p, alpha=wt)
    return total


def ssp_self_support_prototypes(config, fp: Tensor, bp: Tensor, ss) -> tuple[Tensor, Tensor]:
    """One round's ``(FP_1, BP_1)`` with :func:`weighted_sum`; replaces ``ssp.self_support_prototypes``."""
    fg = weighted_sum((1 - config.ssfp_weight, fp), (config.ssfp_weight, ss.ssfp)) if config.use_ssfp else fp
    if config.use_ssbp and config.use_asbp:
        bg = weighted_sum((1 - config.asbp_weight, ss.ssbp), (config.asbp_weight, ss.asbp))
    elif config.use_ssbp:
        bg = ss.ssbp
    elif config.use_asbp:
        bg = ss.asbp
    else:
        bg = bp
    return fg, bg


def ssp_self_matching_logits(features: Tensor, mask: Tensor, scale: float = 10.0, eps: float = 1e-5) -> Tensor:
    """The SSL's self-matching logits with :func:`ssp_match`; replaces ``ssp.self_matching_logits``."""
    fg = masked_average_pooling(features, foreground_mask(mask), "resize_mask", eps)
    bg = masked_average_pooling(features, background_mask(mask), "resize_mask", eps)
    return resize_to(ssp_match(features, fg, bg, scale), mask.shape[-2:], "bilinear", align_corners=True)


def ssp_head(model, fq: Tensor, fs: Tensor, support_masks: Tensor, out_size, *, equations) -> dict[str, Tensor]:
    """SSP's outputs from ``fq``, ``fs``; replaces the body of ``SSP.head`` after its checks.

    The same steps with the twins above and the query normalised once for its three matches and
    both self-support passes. Stored results depend on that too: the gradients of every cosine
    reach ``fq`` through one normalisation, summed before it, which rounds differently from one
    normalisation per match.
    """
    REFINE_OUTPUT_WEIGHT, REFINE_PROTOTYPE_WEIGHTS = equations.REFINE_OUTPUT_WEIGHT, equations.REFINE_PROTOTYPE_WEIGHTS
    support_prototypes = equations.support_prototypes

    cfg = model.config

    def up(logits: Tensor) -> Tensor:
        return resize_to(logits, out_size, "bilinear", align_corners=True)

    def self_support(logits: Tensor):
        return ssp_self_support(fq, logits, cfg.fg_threshold, cfg.bg_threshold, cfg.fallback_topk,
                                cfg.asbp_scale, adaptive=cfg.use_asbp, unit=unit, equations=equations)

    fg_shots, bg_shots = support_prototypes(fs, support_masks, cfg.eps)
    fp, bp = fg_shots.mean(dim=1), bg_shots.mean(dim=1)
    unit = unit_vectors(fq)
    out0 = ssp_match(fq, fp, bp, cfg.scale, unit)
    output = {
        "logits_plain": up(out0),
        "probs_plain": out0.float().softmax(dim=1),
        "prototypes": torch.stack([bp, fp], dim=1),
        "support_prototypes": torch.stack([bg_shots, fg_shots], dim=2),
        "query_features": fq,
        "support_features": fs,
    }
    if not (cfg.use_ssfp or cfg.use_ssbp or cfg.use_asbp):
        fp1, bp1, out1 = fp, bp, out0
    else:
        ss1 = self_support(out0)
        fp1, bp1 = ssp_self_support_prototypes(cfg, fp, bp, ss1)
        out1 = ssp_match(fq, fp1, bp1, cfg.scale, unit)
        output.update(fg_selected=ss1.fg_selected, bg_selected=ss1.bg_selected, ssfp=ss1.ssfp, ssbp=ss1.ssbp,
                      fg_proto_1=fp1, bg_proto_1=bp1)
        if ss1.asbp is not None:
            output["asbp"] = ss1.asbp
    output["logits_out1"] = up(out1)
    if not cfg.refine:
        output["logits"] = output["logits_out1"]
        return output

    if not (cfg.use_ssfp or cfg.use_ssbp or cfg.use_asbp):
        fp2, bp2 = fp, bp
    else:
        ss2 = self_support(out1)
        fp2_ss, bp2_ss = ssp_self_support_prototypes(cfg, fp, bp, ss2)
        w_support, w_round1, w_round2 = REFINE_PROTOTYPE_WEIGHTS
        fp2 = weighted_sum((w_support, fp), (w_round1, fp1), (w_round2, fp2_ss))
        bp2 = weighted_sum((w_support, bp), (w_round1, bp1), (w_round2, bp2_ss))
        output.update(probs_out1=ss2.probs, fg_selected_2=ss2.fg_selected, bg_selected_2=ss2.bg_selected,
                      fg_proto_2=fp2, bg_proto_2=bp2)
    out2 = REFINE_OUTPUT_WEIGHT * ssp_match(fq, fp2, bp2, cfg.scale, unit) + (1 - REFINE_OUTPUT_WEIGHT) * out1
    output["logits"] = up(out2)
    return output


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
    a padding that changes the size, so the output grid is not the input grid, and for backbones
    whose output cells see the whole map (attention, squeeze-excitation: timm's).
    """
    if not backbone.spatially_local:
        return None
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
