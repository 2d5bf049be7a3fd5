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

import torch
import torch.nn.functional as F
from torch import Tensor

from .ops import (
    background_mask,
    clamped_norm,
    cosine_logits,
    foreground_mask,
    gather_cells,
    hard_labels,
    masked_average_pooling,
    resize_to,
    unit_vectors,
    weighted_cell_sum,
)


# --- prototype methods (ProtoNet, PANet, SSP)
# What a twin shares with its plain version (SSP's SelfSupport, confident_pixels, support_prototypes)
# it imports from the method file inside the function: the method files import this module.
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
                     unit: Tensor | None = None):
    """The self-support module (SSFP, SSBP, ASBP); replaces ``ssp.self_support``.

    ASBP compares every pixel with the selected background pixels only, ``[B, h*w, |S_b|]``
    similarities (padded to the batch's largest ``S_b``) instead of ``[B, h*w, h*w]`` (60 x 60
    features, 32 episodes: 1.7 GB per float32 copy); ``unit`` comes from :func:`ssp_head`.
    """
    from .ssp import SelfSupport, confident_pixels

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


def ssp_head(model, fq: Tensor, fs: Tensor, support_masks: Tensor, out_size) -> dict[str, Tensor]:
    """SSP's outputs from ``fq``, ``fs``; replaces the body of ``SSP.head`` after its checks.

    The same steps with the twins above and the query normalised once for its three matches and
    both self-support passes. Stored results depend on that too: the gradients of every cosine
    reach ``fq`` through one normalisation, summed before it, which rounds differently from one
    normalisation per match.
    """
    from .ssp import REFINE_OUTPUT_WEIGHT, REFINE_PROTOTYPE_WEIGHTS, support_prototypes

    cfg = model.config

    def up(logits: Tensor) -> Tensor:
        return resize_to(logits, out_size, "bilinear", align_corners=True)

    def self_support(logits: Tensor):
        return ssp_self_support(fq, logits, cfg.fg_threshold, cfg.bg_threshold, cfg.fallback_topk,
                                cfg.asbp_scale, adaptive=cfg.use_asbp, unit=unit)

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
