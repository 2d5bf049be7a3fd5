"""SSP (Fan et al., ECCV 2022) against direct per-episode computations on small tensors."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from fsslib.models import EXCLUDED, build_model
from fsslib.models.protonet import episode_prototypes
from fsslib.models.ssp import (
    REFINE_OUTPUT_WEIGHT,
    REFINE_PROTOTYPE_WEIGHTS,
    SSPConfig,
    adaptive_background_attention,
    confident_pixels,
    self_support,
    support_prototypes,
)

ALL_OFF = dict(use_ssfp=False, use_ssbp=False, use_asbp=False, refine=False, ssl_query=False, ssl_support=False)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------- a direct computation
def _map(feat, mask, eps=1e-5):
    """Masked average pooling of one image: mask [H, W] (binary) resized to feat [C, h, w]."""
    m = F.interpolate(mask[None, None].float(), size=feat.shape[-2:], mode="bilinear", align_corners=True)[0, 0]
    return (feat * m).sum((1, 2)) / (m.sum() + eps)


def _match(feat, fg, bg, scale=10.0):
    """[2, h, w] from feat [C, h, w] and prototypes [C] or [C, h, w], with F.cosine_similarity."""
    fg = fg[:, None, None] if fg.dim() == 1 else fg
    bg = bg[:, None, None] if bg.dim() == 1 else bg
    return scale * torch.stack([F.cosine_similarity(feat, bg, dim=0), F.cosine_similarity(feat, fg, dim=0)])


def _ssm(feat, logits, fg_thr=0.7, bg_thr=0.6, k=12):
    """One episode's self-support module by gathering the selected pixels (the authors' way)."""
    c, h, w = feat.shape
    flat = feat.view(c, -1)
    prob = logits.softmax(0).view(2, -1)
    chosen = []
    for p, thr in ((prob[1], fg_thr), (prob[0], bg_thr)):
        idx = (p > thr).nonzero().squeeze(1)
        chosen.append(idx if idx.numel() else p.topk(min(k, p.numel())).indices)
    fg_feat, bg_feat = flat[:, chosen[0]], flat[:, chosen[1]]
    asbp = torch.zeros(c, h * w)
    attention = torch.zeros(h * w, bg_feat.shape[1])
    for x in range(h * w):  # pixel by pixel
        sims = torch.stack([2.0 * F.cosine_similarity(flat[:, x], bg_feat[:, j], dim=0)
                            for j in range(bg_feat.shape[1])])
        attention[x] = sims.softmax(0)
        asbp[:, x] = (attention[x] * bg_feat).sum(1)
    return dict(fg_idx=chosen[0], bg_idx=chosen[1], ssfp=fg_feat.mean(1), ssbp=bg_feat.mean(1),
                asbp=asbp.view(c, h, w), attention=attention)


def _forward(query, supports, masks, refine=True, thresholds=(0.7, 0.6)):
    """Full SSP prediction of one episode at feature resolution: (out0, out1, final)."""
    fp = torch.stack([_map(f, m == 1) for f, m in zip(supports, masks)]).mean(0)
    bp = torch.stack([_map(f, m == 0) for f, m in zip(supports, masks)]).mean(0)
    out0 = _match(query, fp, bp)
    s1 = _ssm(query, out0, *thresholds)
    fp1 = 0.5 * fp + 0.5 * s1["ssfp"]
    bp1 = 0.3 * s1["ssbp"][:, None, None] + 0.7 * s1["asbp"]
    out1 = _match(query, fp1, bp1)
    if not refine:
        return out0, out1, out1
    s2 = _ssm(query, out1, *thresholds)
    fp2 = 0.5 * fp + 0.2 * fp1 + 0.3 * (0.5 * fp + 0.5 * s2["ssfp"])
    bp2 = 0.5 * bp[:, None, None] + 0.2 * bp1 + 0.3 * (0.3 * s2["ssbp"][:, None, None] + 0.7 * s2["asbp"])
    return out0, out1, 0.7 * _match(query, fp2, bp2) + 0.3 * out1


def _episode(b=3, k=1, c=6, h=5, w=5, size=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    query = torch.randn(b, c, h, w, generator=g)
    supports = torch.randn(b, k, c, h, w, generator=g)
    masks = torch.randint(0, 2, (b, k, size, size), generator=g)
    masks[:, :, 0, :3] = 255
    return query, supports, masks


def _head(model, query, supports, masks, out_size=None):
    stage = model.config.feature_stage
    return model.head({stage: query}, {stage: supports}, masks, 1, out_size or tuple(query.shape[-2:]))


# ---------------------------------------------------------------------- equations
def test_config_defaults_are_the_authors_constants():
    cfg = SSPConfig()
    assert (cfg.feature_stage, cfg.scale, cfg.eps) == ("layer3", 10.0, 1e-5)
    assert (cfg.fg_threshold, cfg.bg_threshold, cfg.fallback_topk, cfg.asbp_scale) == (0.7, 0.6, 12, 2.0)
    assert (cfg.ssfp_weight, cfg.asbp_weight) == (0.5, 0.7)
    assert REFINE_PROTOTYPE_WEIGHTS == (0.5, 0.2, 0.3) and REFINE_OUTPUT_WEIGHT == 0.7
    assert cfg.use_ssfp and cfg.use_ssbp and cfg.use_asbp and cfg.refine
    assert cfg.out1_loss and cfg.ssl_query and cfg.ssl_support
    assert (cfg.ssl_query_weight, cfg.ssl_support_weight) == (1.0, 0.2)
    assert cfg.frozen_stages == ("layer1",) and cfg.freeze_bn and cfg.freeze_bn_affine


def test_support_prototypes_by_hand_and_k_shot_mean_equals_protonet():
    # Mask at feature resolution: the resize is the identity, so pooling is a plain masked mean.
    feat = torch.tensor([[[1.0, 3.0], [0.0, 0.0]], [[0.0, 1.0], [2.0, 2.0]]])  # [C=2, 2, 2]
    mask = torch.tensor([[1, 1], [0, 255]])
    fg, bg = support_prototypes(feat[None, None], mask[None, None], eps=0.0)
    torch.testing.assert_close(fg[0, 0], torch.tensor([2.0, 0.5]))
    torch.testing.assert_close(bg[0, 0], torch.tensor([0.0, 2.0]))  # 255 is in neither

    query, supports, masks = _episode(k=3)
    fg, bg = support_prototypes(supports, masks)
    for b in range(3):
        for k in range(3):
            torch.testing.assert_close(fg[b, k], _map(supports[b, k], masks[b, k] == 1))
            torch.testing.assert_close(bg[b, k], _map(supports[b, k], masks[b, k] == 0))
    reference = episode_prototypes(supports, masks, way=1, pooling="resize_mask", eps=1e-5, background="labelled")
    out = _head(build_model("ssp"), query, supports, masks)
    torch.testing.assert_close(out["prototypes"], reference)
    torch.testing.assert_close(out["prototypes"], torch.stack([bg.mean(1), fg.mean(1)], dim=1))


def test_confident_pixels_thresholds_are_strict_and_fallback_is_top12():
    prob = torch.tensor([[0.71, 0.70, 0.2, 0.9],  # two pass 0.7 (0.70 does not: strict >)
                         [0.69, 0.1, 0.3, 0.5]])  # none passes: the top-k fall back
    selected = confident_pixels(prob, 0.7, fallback_topk=2)
    assert selected.tolist() == [[True, False, False, True], [True, False, False, True]]
    # The authors' 12: a 5x5 map where nothing passes 0.6 selects exactly the 12 largest.
    prob = torch.rand(2, 25, generator=torch.Generator().manual_seed(1)) * 0.5
    prob[1, 3] = 0.61
    selected = confident_pixels(prob, 0.6, fallback_topk=12)
    assert selected[0].sum() == 12 and set(selected[0].nonzero().squeeze(1).tolist()) == set(
        prob[0].topk(12).indices.tolist())
    assert selected[1].nonzero().squeeze(1).tolist() == [3]
    # Fewer than 12 pixels: all of them.
    assert confident_pixels(torch.full((1, 4), 0.5), 0.6, 12).all()


def test_self_support_module_against_per_episode_gathering():
    query, _, _ = _episode(b=3)
    logits = torch.randn(3, 2, 5, 5) * 3
    logits[1, 1] -= 20  # episode 1: no foreground probability above 0.7 -> top-12 fallback
    logits[2, 0] -= 20  # episode 2: no background probability above 0.6 -> top-12 fallback
    ss = self_support(query, logits)
    for b in range(3):
        ref = _ssm(query[b], logits[b])
        assert set(ss.fg_selected[b].flatten().nonzero().squeeze(1).tolist()) == set(ref["fg_idx"].tolist())
        assert set(ss.bg_selected[b].flatten().nonzero().squeeze(1).tolist()) == set(ref["bg_idx"].tolist())
        torch.testing.assert_close(ss.ssfp[b], ref["ssfp"])
        torch.testing.assert_close(ss.ssbp[b], ref["ssbp"])
        torch.testing.assert_close(ss.asbp[b], ref["asbp"])
        attention = adaptive_background_attention(query, ss.bg_selected, 2.0)[b]
        torch.testing.assert_close(attention[:, ref["bg_idx"]], ref["attention"])
        assert (attention.sum(-1) - 1).abs().max() < 1e-5
    assert ss.fg_selected[1].sum() == 12 and ss.bg_selected[2].sum() == 12
    torch.testing.assert_close(ss.probs, logits.softmax(1))


@pytest.mark.parametrize("fast_paths", [True, False])
def test_full_prediction_against_the_direct_computation_k_shot(fast_paths):
    query, supports, masks = _episode(b=2, k=2, seed=3)
    # thresholds of 1.0 are never passed: every selection is the top-12 fallback
    for refine, thresholds in ((True, (0.7, 0.6)), (False, (0.7, 0.6)), (True, (1.0, 1.0))):
        model = build_model("ssp", refine=refine, fg_threshold=thresholds[0], bg_threshold=thresholds[1],
                            fast_paths=fast_paths)
        out = _head(model, query, supports, masks)
        for b in range(2):
            out0, out1, final = _forward(query[b], supports[b], masks[b], refine, thresholds)
            torch.testing.assert_close(out["logits_plain"][b], out0)
            torch.testing.assert_close(out["logits_out1"][b], out1)
            torch.testing.assert_close(out["logits"][b], final)


def test_mixing_weights():
    query, supports, masks = _episode(seed=4)
    out = _head(build_model("ssp"), query, supports, masks)
    bp, fp = out["prototypes"].unbind(1)
    torch.testing.assert_close(out["fg_proto_1"], 0.5 * fp + 0.5 * out["ssfp"])
    torch.testing.assert_close(out["bg_proto_1"], 0.3 * out["ssbp"][..., None, None] + 0.7 * out["asbp"])
    ss2 = self_support(query, out["logits_out1"])  # out_size = feature size here
    torch.testing.assert_close(out["fg_proto_2"],
                               0.5 * fp + 0.2 * out["fg_proto_1"] + 0.3 * (0.5 * fp + 0.5 * ss2.ssfp))
    torch.testing.assert_close(out["bg_proto_2"], 0.5 * bp[..., None, None] + 0.2 * out["bg_proto_1"]
                               + 0.3 * (0.3 * ss2.ssbp[..., None, None] + 0.7 * ss2.asbp))
    assert torch.equal(out["fg_selected_2"], ss2.fg_selected) and torch.equal(out["bg_selected_2"], ss2.bg_selected)


def test_logits_are_upsampled_bilinearly_with_align_corners():
    query, supports, masks = _episode(seed=5)
    model = build_model("ssp")
    small, large = _head(model, query, supports, masks), _head(model, query, supports, masks, out_size=(17, 13))
    for key in ("logits", "logits_out1", "logits_plain"):
        expected = F.interpolate(small[key], size=(17, 13), mode="bilinear", align_corners=True)
        torch.testing.assert_close(large[key], expected)


# ---------------------------------------------------------------------- switches
def test_all_off_is_the_prototype_baseline():
    query, supports, masks = _episode(k=2, seed=6)
    protonet = build_model("protonet", feature_stage="layer3", scale=10.0, pooling="resize_mask", background="labelled")
    baseline = _head(protonet, query, supports, masks)["logits"]  # at feature size: no resize
    for refine in (False, True):
        out = _head(build_model("ssp", **{**ALL_OFF, "refine": refine}), query, supports, masks)
        torch.testing.assert_close(out["logits"], baseline)
        torch.testing.assert_close(out["logits_plain"], baseline)
    # The default model's plain output is the same baseline.
    torch.testing.assert_close(_head(build_model("ssp"), query, supports, masks)["logits_plain"], baseline)


def test_each_switch_changes_only_what_it_names():
    query, supports, masks = _episode(seed=7)
    model = build_model("ssp")
    base = _head(model, query, supports, masks)

    def flipped(**changes):
        model.config = dataclasses.replace(SSPConfig(), **changes)
        return _head(model, query, supports, masks)

    off = flipped(use_ssfp=False)  # foreground prototype only
    torch.testing.assert_close(off["fg_proto_1"], base["prototypes"][:, 1])
    torch.testing.assert_close(off["bg_proto_1"], base["bg_proto_1"])
    assert not torch.allclose(off["logits_out1"], base["logits_out1"])
    for changes, expected in (({"use_asbp": False}, base["ssbp"]), ({"use_ssbp": False}, base["asbp"])):
        off = flipped(**changes)  # background prototype only
        torch.testing.assert_close(off["fg_proto_1"], base["fg_proto_1"])
        torch.testing.assert_close(off["bg_proto_1"], expected)
        assert not torch.allclose(off["logits_out1"], base["logits_out1"])
    assert "asbp" not in flipped(use_asbp=False)
    off = flipped(use_ssbp=False, use_asbp=False)
    torch.testing.assert_close(off["bg_proto_1"], base["prototypes"][:, 0])
    off = flipped(refine=False)  # only the second round
    for key in ("logits_plain", "logits_out1", "fg_proto_1", "bg_proto_1"):
        torch.testing.assert_close(off[key], base[key])
    torch.testing.assert_close(off["logits"], base["logits_out1"])
    assert not torch.allclose(off["logits"], base["logits"]) and "fg_proto_2" not in off
    for loss_switch in ("out1_loss", "ssl_query", "ssl_support"):  # loss switches leave the head alone
        off = flipped(**{loss_switch: False})
        assert off.keys() == base.keys()
        for key in base:
            torch.testing.assert_close(off[key], base[key])


def test_loss_terms_and_their_switches():
    query, supports, masks = _episode(b=2, k=2, seed=8)
    query_mask = torch.randint(0, 2, (2, 9, 9))
    query_mask[:, -1] = 255
    batch = {"query_mask": query_mask, "support_masks": masks}
    model = build_model("ssp")
    out = _head(model, query, supports, masks, out_size=(9, 9))

    def ce(logits, target):  # mean over labelled pixels
        keep = target != 255
        return F.cross_entropy(logits.permute(0, 2, 3, 1)[keep], target[keep])

    def up(x):
        return F.interpolate(x, size=(9, 9), mode="bilinear", align_corners=True)

    q_self = torch.stack([_match(query[b], _map(query[b], query_mask[b] == 1), _map(query[b], query_mask[b] == 0))
                          for b in range(2)])
    s_self = torch.stack([_match(supports[b, k], _map(supports[b, k], masks[b, k] == 1),
                                 _map(supports[b, k], masks[b, k] == 0)) for b in range(2) for k in range(2)])
    terms = {"query_ce": ce(out["logits"], query_mask), "out1_ce": ce(out["logits_out1"], query_mask),
             "ssl_query_ce": ce(up(q_self), query_mask), "ssl_support_ce": ce(up(s_self), masks.flatten(0, 1))}
    total, parts = model.loss(out, batch)
    torch.testing.assert_close(total, terms["query_ce"] + terms["out1_ce"] + terms["ssl_query_ce"]
                               + 0.2 * terms["ssl_support_ce"])
    assert parts.keys() == terms.keys()
    for name, value in terms.items():
        assert parts[name] == pytest.approx(value.item(), rel=1e-5)

    for switch, term, weight in (("out1_loss", "out1_ce", 1.0), ("ssl_query", "ssl_query_ce", 1.0),
                                 ("ssl_support", "ssl_support_ce", 0.2)):
        model.config = dataclasses.replace(SSPConfig(), **{switch: False})
        off_total, off_parts = model.loss(out, batch)
        assert term not in off_parts
        torch.testing.assert_close(off_total, total - weight * terms[term])
    # Without refinement out_1 is the prediction and is counted once.
    model.config = SSPConfig(refine=False)
    out = _head(model, query, supports, masks, out_size=(9, 9))
    _, parts = model.loss(out, batch)
    assert "out1_ce" not in parts
    # All off: the baseline's cross-entropy.
    model.config = SSPConfig(**ALL_OFF)
    out = _head(model, query, supports, masks, out_size=(9, 9))
    total, parts = model.loss(out, batch)
    assert list(parts) == ["query_ce"]
    torch.testing.assert_close(total, ce(out["logits_plain"], query_mask))


def test_background_attention_maps_for_chosen_pixels():
    query, supports, masks = _episode(seed=9)
    model = build_model("ssp")
    out = _head(model, query, supports, masks)
    maps = model.background_attention(out, [(0, 0), (2, 3)])
    assert maps.shape == (3, 2, 5, 5)
    full = adaptive_background_attention(query, out["bg_selected"], 2.0)
    torch.testing.assert_close(maps[:, 1].flatten(1), full[:, 2 * 5 + 3])
    assert (maps.flatten(2).sum(-1) - 1).abs().max() < 1e-5
    assert (maps[~out["bg_selected"][:, None].expand_as(maps)] == 0).all()
    # Recomputing ASBP from the exposed attention gives the exposed ASBP.
    asbp = torch.einsum("bxy,bcy->bcx", full, query.flatten(2)).view_as(out["asbp"])
    torch.testing.assert_close(asbp, out["asbp"])
    per_episode_index = torch.tensor([[0], [7], [24]])
    torch.testing.assert_close(adaptive_background_attention(query, out["bg_selected"], 2.0, per_episode_index)[:, 0],
                               full[torch.arange(3), per_episode_index[:, 0]])


def test_n_way_is_rejected():
    query, supports, masks = _episode(k=2)
    with pytest.raises(ValueError, match="1-way"):
        build_model("ssp").head({"layer3": query}, {"layer3": supports}, masks, 2, (5, 5))


# ---------------------------------------------------------------------- backbones
def _batch(size, b=2, k=1):
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(b, size, size, dtype=torch.long)
    mask[:, size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 1
    return {"query_img": torch.randn(b, 3, size, size, generator=g),
            "support_imgs": torch.randn(b, k, 3, size, size, generator=g),
            "support_masks": mask[:, None].repeat(1, k, 1, 1), "query_mask": mask}


def test_smallcnn_forward_backward_trains_layer2_layer3_only_and_head_equals_forward():
    torch.manual_seed(0)
    model = build_model("ssp")
    bb = model.backbone
    convs = sum(p.numel() for s in ("layer2", "layer3") for n, p in bb.get_submodule(s).named_parameters()
                if p.dim() == 4)
    assert model.learnable_parameters() == convs  # layer1, layer4 (unused) and every BatchNorm frozen
    model.train()
    assert not any(m.training for m in bb.modules() if isinstance(m, torch.nn.BatchNorm2d))
    batch = _batch(64, k=2)
    out = model(batch)
    assert out["logits"].shape == (2, 2, 64, 64) and out["query_features"].shape == (2, 128, 8, 8)
    total, parts = model.loss(out, batch)
    total.backward()
    assert torch.isfinite(total) and set(parts) == {"query_ce", "out1_ce", "ssl_query_ce", "ssl_support_ce"}
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters() if p.requires_grad)
    assert all(p.grad is None for p in bb.get_submodule("layer1").parameters())

    model.eval()
    with torch.no_grad():
        out = model(batch)
        feats = model.extract(torch.cat([batch["query_img"], batch["support_imgs"].flatten(0, 1)]))
        query = {k: v[:2] for k, v in feats.items()}
        supports = {k: v[2:].unflatten(0, (2, 2)) for k, v in feats.items()}
        cached = model.head(query, supports, batch["support_masks"], 1, (64, 64))
    for key in ("logits", "logits_out1", "logits_plain"):
        torch.testing.assert_close(cached[key], out[key])


def test_resnet50_layer3_features_and_trainable_stages():
    model = build_model("ssp", backbone="resnet50", weights=None)
    bb = model.backbone
    convs = sum(p.numel() for s in ("layer2", "layer3") for p in bb.get_submodule(s).parameters() if p.dim() == 4)
    assert model.learnable_parameters() == convs
    model.eval()
    with torch.no_grad():
        out = model(_batch(65, b=1))
    assert out["query_features"].shape == (1, 1024, 9, 9) and out["logits"].shape == (1, 2, 65, 65)


def test_asbp_is_the_masked_softmax_over_all_pixels_with_gradients():
    """ASBP's values and gradients are those of a softmax over every pixel with -inf outside S_b
    (the fast twin, which gathers S_b, is checked against this module in test_fast_paths.py)."""
    torch.manual_seed(6)
    feats = torch.randn(3, 8, 5, 4, requires_grad=True)
    selection = torch.rand(3, 20) > 0.5
    selection[2] = False
    selection[2, 7] = True  # selections of very different sizes: the padding is exercised

    def dense(f):
        flat = f.flatten(2)
        normed = F.normalize(flat, dim=1)
        sim = 2.0 * torch.einsum("bcq,bcp->bqp", normed, normed)
        att = sim.masked_fill(~selection.unsqueeze(1), float("-inf")).softmax(-1)
        return att, torch.einsum("bxy,bcy->bcx", att, flat)

    logits = torch.zeros(3, 2, 5, 4)
    logits[:, 0] = torch.where(selection.view(3, 5, 4), 5.0, -5.0)  # p_b > 0.6 exactly on `selection`
    ss = self_support(feats, logits)
    assert torch.equal(ss.bg_selected.flatten(1), selection)
    att_ref, asbp_ref = dense(feats)
    torch.testing.assert_close(adaptive_background_attention(feats, selection, 2.0), att_ref)
    torch.testing.assert_close(ss.asbp.flatten(2), asbp_ref)
    weights = torch.randn_like(asbp_ref)
    (grad,) = torch.autograd.grad((ss.asbp.flatten(2) * weights).sum(), feats)
    (grad_ref,) = torch.autograd.grad((asbp_ref * weights).sum(), feats)
    torch.testing.assert_close(grad, grad_ref)


def test_excluded_pixels_act_exactly_as_the_old_ignore_coding():
    """Supports with unlabelled (scribble) pixels coded EXCLUDED give SSP's outputs and loss bit for
    bit as when they were coded 255, next to real void pixels; the loss does not reject 254."""
    query, supports, masks = _episode(b=2, k=2, seed=12)  # masks hold void (255) pixels
    masks[:, :, 4:, :] = EXCLUDED
    old_coding = masks.masked_fill(masks == EXCLUDED, 255)
    query_mask = torch.randint(0, 2, (2, 9, 9))
    model = build_model("ssp")
    new = _head(model, query, supports, masks, out_size=(9, 9))
    old = _head(model, query, supports, old_coding, out_size=(9, 9))
    assert new.keys() == old.keys()
    for key in new:
        assert torch.equal(new[key], old[key]), key
    new_total, new_parts = model.loss(new, {"query_mask": query_mask, "support_masks": masks})
    old_total, old_parts = model.loss(old, {"query_mask": query_mask, "support_masks": old_coding})
    assert torch.equal(new_total, old_total) and new_parts == old_parts and "ssl_support_ce" in new_parts
