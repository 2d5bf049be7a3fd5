import math

import pytest
import torch
import torch.nn.functional as F

from fsslib.models import build_model
from fsslib.models.ops import EXCLUDED, cosine_logits
from fsslib.models.panet import PANet, PANetConfig, par_loss, par_targets, prototype_alignment
from fsslib.models.protonet import ProtoNetConfig


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def support_fg_bg(lab, background):
    """Foreground and background masks of one coded support, written as the authors' getMask.

    ``"not_foreground"``: background = every pixel that is neither the class (1) nor another class
    of the episode (254), void (255) included. ``"labelled"``: background = the pixels coded 0.
    """
    fg = (lab == 1).float()
    if background == "not_foreground":
        bg = ((lab != 1) & (lab != EXCLUDED)).float()
    else:
        bg = (lab == 0).float()
    return fg, bg


def reference_par(query, supports, masks, way, scale=20.0, eps=1e-5, background="not_foreground"):
    """PAR written out with loops, one episode, way and shot at a time, as the authors' alignLoss.

    query [B, C, h, w], supports [B, N*K, C, h, w], masks [B, N*K, H, W] (1 / 0 / 255 / 254).
    """
    b, s = supports.shape[:2]
    shot, size = s // way, masks.shape[-2:]
    total = 0.0
    for e in range(b):
        feats = supports[e].view(way, shot, *supports.shape[2:])
        lab = masks[e].view(way, shot, *size)
        # support prototypes: features upsampled to the mask, pooled, averaged over shots (and ways for bg)
        def pool(f, m):
            up = F.interpolate(f[None], size=size, mode="bilinear", align_corners=False)[0]
            return (up * m).sum(dim=(1, 2)) / (m.sum() + eps)
        fg = [sum(pool(feats[n, k], support_fg_bg(lab[n, k], background)[0]) for k in range(shot)) / shot
              for n in range(way)]
        bg = sum(sum(pool(feats[n, k], support_fg_bg(lab[n, k], background)[1]) for k in range(shot)) / shot
                 for n in range(way)) / way
        pred = torch.stack([F.cosine_similarity(query[e], p[:, None, None], dim=0) * scale for p in [bg] + fg])
        y = pred.argmax(dim=0)
        q_protos = [(query[e] * (y == j)).sum(dim=(1, 2)) / ((y == j).sum() + eps) for j in range(1 + way)]
        for n in range(way):
            if (y == n + 1).sum() == 0:
                continue
            for k in range(shot):
                dist = torch.stack([F.cosine_similarity(feats[n, k], p[:, None, None], dim=0) * scale
                                    for p in (q_protos[0], q_protos[n + 1])])
                up = F.interpolate(dist[None], size=size, mode="bilinear", align_corners=False)
                # the support's label: 255 everywhere, then 1 on the foreground and 0 on the background
                fg_mask, bg_mask = support_fg_bg(lab[n, k], background)
                label = torch.full_like(lab[n, k], 255)
                label[fg_mask == 1] = 1
                label[bg_mask == 1] = 0
                total = total + F.cross_entropy(up, label[None], ignore_index=255) / shot / way
    return total / b


def test_par_loss_matches_a_hand_computation():
    # One 1-way 1-shot episode on 1x2 feature maps, masks at the same size (no resizing anywhere).
    support = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])  # [C=2, 1, 2]: pixel A = (1, 0), pixel B = (0, 1)
    support_mask = torch.tensor([[1, 0]])  # A foreground, B background
    query = torch.tensor([[[1.0, 0.9]], [[0.9, 1.0]]])  # query pixels (1, 0.9) and (0.9, 1)
    model = build_model("panet").train()
    out = model.head({"layer4": query[None]}, {"layer4": support[None, None]}, support_mask[None, None], 1, (1, 2))
    # p_fg = (1, 0), p_bg = (0, 1): query pixel 1 is closer to the foreground, pixel 2 to the background
    assert out["logits"].argmax(dim=1).tolist() == [[[1, 0]]]
    # query prototypes, each pooled from one pixel: p^_bg = (0.9, 1), p^_fg = (1, 0.9)
    torch.testing.assert_close(out["query_prototypes"][0], torch.tensor([[0.9, 1.0], [1.0, 0.9]]) / (1 + 1e-5))

    def cos(u, v):
        return (u[0] * v[0] + u[1] * v[1]) / math.hypot(*u) / math.hypot(*v)

    p_bg, p_fg = (0.9, 1.0), (1.0, 0.9)
    a_bg, a_fg = 20 * cos((1, 0), p_bg), 20 * cos((1, 0), p_fg)  # support pixel A, label 1
    b_bg, b_fg = 20 * cos((0, 1), p_bg), 20 * cos((0, 1), p_fg)  # support pixel B, label 0
    ce_a = math.log(math.exp(a_bg) + math.exp(a_fg)) - a_fg
    ce_b = math.log(math.exp(b_bg) + math.exp(b_fg)) - b_bg
    expected = (ce_a + ce_b) / 2  # one support: CE averaged over its two labelled pixels
    torch.testing.assert_close(out["support_logits"][0, 0, :, 0], torch.tensor([[a_bg, b_bg], [a_fg, b_fg]]))

    query_mask = torch.tensor([[[1, 255]]])
    total, parts = model.loss(out, {"query_mask": query_mask, "support_masks": support_mask[None, None]})
    assert parts["par"] == pytest.approx(expected, rel=1e-5)
    assert total.item() == pytest.approx(parts["query_ce"] + expected, rel=1e-5)


@pytest.mark.parametrize("background", ["not_foreground", "labelled"])
def test_par_matches_the_loop_computation_for_n_way_k_shot_with_upsampling(background):
    torch.manual_seed(0)
    b, way, shot, c = 3, 2, 2, 8
    query, supports = torch.randn(b, c, 4, 5), torch.randn(b, way * shot, c, 4, 5)
    masks = torch.randint(0, 2, (b, way * shot, 13, 11))
    masks[:, :, :3] = 255  # void
    masks[:, :, -2:, :4] = EXCLUDED  # the other way's object
    model = build_model("panet", background=background).train()
    prototypes = model.head({"layer4": query}, {"layer4": supports}, masks, way, (13, 11))["prototypes"]
    query[1, :, :2] = prototypes[1, 1, :, None, None]  # episode 1: way 1 and background only, way 2 skipped
    query[1, :, 2:] = prototypes[1, 0, :, None, None]
    out = model.head({"layer4": query}, {"layer4": supports}, masks, way, (13, 11))
    assert out["par_valid"][1].tolist() == [True, False] and out["par_valid"][[0, 2]].any()
    assert out["support_logits"].shape == (b, way * shot, 2, 13, 11)
    _, parts = model.loss(out, {"query_mask": torch.randint(0, 3, (b, 13, 11)), "support_masks": masks})
    expected = reference_par(query, supports, masks, way, background=background).item()
    assert parts["par"] == pytest.approx(expected, rel=1e-5)
    other_rule = "labelled" if background == "not_foreground" else "not_foreground"
    other = reference_par(query, supports, masks, way, background=other_rule)
    assert other.item() != pytest.approx(expected, rel=1e-3)  # the rule matters on these masks


def test_a_way_or_episode_with_no_predicted_foreground_contributes_no_par_term():
    torch.manual_seed(1)
    c = 6
    fg_vec, bg_vec = torch.randn(c), torch.randn(c)
    supports = torch.randn(2, 1, c, 4, 4)
    masks = torch.zeros(2, 1, 4, 4, dtype=torch.long)
    masks[:, :, :2] = 1
    supports[:, :, :, :2], supports[:, :, :, 2:] = fg_vec[:, None, None], bg_vec[:, None, None]
    query = torch.randn(2, c, 4, 4)
    query[1] = bg_vec[:, None, None] + 0.01 * torch.randn(c, 4, 4)  # episode 1: background everywhere
    model = build_model("panet").train()
    out = model.head({"layer4": query}, {"layer4": supports}, masks, 1, (4, 4))
    assert out["par_valid"].tolist() == [[True], [False]]

    alone = model.head({"layer4": query[:1]}, {"layer4": supports[:1]}, masks[:1], 1, (4, 4))
    par_both = par_loss(out["support_logits"], masks, out["par_valid"])
    par_first = par_loss(alone["support_logits"], masks[:1], alone["par_valid"])
    # episode 1 adds nothing, but counts in the mean over episodes (as the authors divide by B)
    torch.testing.assert_close(par_both, par_first / 2)
    assert par_loss(out["support_logits"][1:], masks[1:], out["par_valid"][1:]).item() == 0.0
    torch.testing.assert_close(reference_par(query, supports, masks, 1), par_both)


def test_gradients_reach_query_and_support_features_through_par():
    torch.manual_seed(2)
    query = torch.randn(2, 8, 4, 4, requires_grad=True)
    supports = torch.randn(2, 2, 8, 4, 4, requires_grad=True)
    masks = torch.randint(0, 2, (2, 2, 16, 16))
    model = build_model("panet").train()
    out = model.head({"layer4": query}, {"layer4": supports}, masks, 2, (16, 16))
    par_loss(out["support_logits"], masks, out["par_valid"]).backward()
    # the predicted mask is an argmax (no gradient), but the pooled query features are not detached
    assert query.grad.abs().sum() > 0 and supports.grad.abs().sum() > 0


def test_par_adds_no_parameters_and_does_not_change_the_segmentation():
    panet, without = build_model("panet", par_weight=1.0), build_model("panet", par_weight=0.0)
    protonet = build_model("protonet")
    assert panet.learnable_parameters() == without.learnable_parameters() == protonet.learnable_parameters()
    assert panet.state_dict().keys() == protonet.state_dict().keys()

    torch.manual_seed(3)
    query, supports = torch.randn(2, 8, 4, 4), torch.randn(2, 3, 8, 4, 4)
    masks = torch.randint(0, 2, (2, 3, 16, 16))
    args = ({"layer4": query}, {"layer4": supports}, masks, 3, (16, 16))
    reference = protonet.head(*args)["logits"]
    for model in (panet.train(), without.train(), panet.eval()):
        torch.testing.assert_close(model.head(*args)["logits"], reference)


def test_par_weight_switch_and_eval_mode():
    torch.manual_seed(4)
    query, supports = torch.randn(2, 8, 4, 4), torch.randn(2, 1, 8, 4, 4)
    masks = torch.randint(0, 2, (2, 1, 16, 16))
    batch = {"query_mask": torch.randint(0, 2, (2, 16, 16)), "support_masks": masks}
    args = ({"layer4": query}, {"layer4": supports}, masks, 1, (16, 16))
    model = build_model("panet", par_weight=1.0).train()
    out = model.head(*args)
    total, parts = model.loss(out, batch)
    ce = F.cross_entropy(out["logits"], batch["query_mask"], ignore_index=255)
    assert parts["par"] > 0 and total.item() == pytest.approx(ce.item() + parts["par"], rel=1e-6)

    model.config.par_weight = 0.5  # flipped at forward time on the same model
    total_half, parts_half = model.loss(model.head(*args), batch)
    assert total_half.item() == pytest.approx(ce.item() + 0.5 * parts["par"], rel=1e-6)
    assert parts_half["par"] == pytest.approx(parts["par"])

    model.config.par_weight = 0.0
    off = model.head(*args)
    assert "support_logits" not in off and model.loss(off, batch)[1] == {"query_ce": pytest.approx(ce.item())}

    model.config.par_weight = 1.0
    model.eval()
    evaluated = model.head(*args)
    assert set(evaluated) == {"logits", "prototypes"}
    total_eval, parts_eval = model.loss(evaluated, batch)
    assert parts_eval == {"query_ce": pytest.approx(ce.item())}


def test_multi_way_outputs_and_weak_supports():
    torch.manual_seed(5)
    b, way, shot = 2, 3, 2
    model = build_model("panet", feature_stage="layer4").train()
    masks = torch.full((b, way * shot, 64, 64), EXCLUDED)
    masks[..., 10:14, 10:30] = 1  # scribble-like supports: a few labelled pixels, the rest unlabelled
    masks[..., 50:52, :] = 0
    masks[0, 1] = EXCLUDED  # a support with no labelled pixel at all contributes 0, not NaN
    batch = {"query_img": torch.randn(b, 3, 64, 64), "support_imgs": torch.randn(b, way * shot, 3, 64, 64),
             "support_masks": masks, "support_classes": torch.ones(b, way, dtype=torch.long),
             "query_mask": torch.randint(0, way + 1, (b, 64, 64))}
    out = model(batch)
    channels = model.backbone.out_channels["layer4"]
    assert out["logits"].shape == (b, 1 + way, 64, 64)
    assert out["support_logits"].shape == (b, way * shot, 2, 64, 64)
    assert out["query_prototypes"].shape == (b, 1 + way, channels) and out["par_valid"].shape == (b, way)
    total, parts = model.loss(out, batch)
    assert torch.isfinite(total) and set(parts) == {"query_ce", "par"}


def test_smoke_forward_backward_and_cached_features():
    torch.manual_seed(6)
    model = build_model("panet")
    batch = {"query_img": torch.randn(2, 3, 64, 64), "support_imgs": torch.randn(2, 1, 3, 64, 64),
             "support_masks": torch.randint(0, 2, (2, 1, 64, 64)), "query_mask": torch.randint(0, 2, (2, 64, 64))}
    model.train()
    total, parts = model.loss(model(batch), batch)
    total.backward()
    assert "par" in parts and all(p.grad is not None for p in model.parameters() if p.requires_grad)

    model.eval()
    with torch.no_grad():
        direct = model(batch)["logits"]
        query = model.extract(batch["query_img"])
        supports = {k: v.unsqueeze(1) for k, v in model.extract(batch["support_imgs"][:, 0]).items()}
        cached = model.head(query, supports, batch["support_masks"], 1, (64, 64))["logits"]
    torch.testing.assert_close(cached, direct)


@pytest.mark.parametrize("backbone", ["resnet50", "vgg16"])
def test_real_backbones_train_step(backbone):
    torch.manual_seed(7)
    model = build_model("panet", backbone=backbone, weights=None).train()
    batch = {"query_img": torch.randn(1, 3, 65, 65), "support_imgs": torch.randn(1, 1, 3, 65, 65),
             "support_masks": torch.randint(0, 2, (1, 1, 65, 65)), "query_mask": torch.randint(0, 2, (1, 65, 65))}
    out = model(batch)
    assert out["logits"].shape == (1, 2, 65, 65) and out["support_logits"].shape == (1, 1, 2, 65, 65)
    total, _ = model.loss(out, batch)
    total.backward()
    assert isinstance(model, PANet) and torch.isfinite(total)


def test_prototype_alignment_is_usable_outside_training_for_figures():
    torch.manual_seed(8)
    query, supports = torch.randn(1, 8, 4, 4), torch.randn(1, 2, 8, 4, 4)
    model = build_model("panet").eval()
    masks = torch.randint(0, 2, (1, 2, 16, 16))
    prototypes = model.head({"layer4": query}, {"layer4": supports}, masks, 2, (16, 16))["prototypes"]
    reverse = prototype_alignment(query, cosine_logits(query, prototypes, 20.0), supports, 2, (16, 16), 20.0, 1e-5)
    trained = model.train().head({"layer4": query}, {"layer4": supports}, masks, 2, (16, 16))
    torch.testing.assert_close(reverse["support_logits"], trained["support_logits"])


# ---------------------------------------------------------------------- which pixels are background
def _one_support_episode(mask):
    """One 1-way 1-shot episode at feature resolution (no resizing): pixel i of the 1 x 4 support
    has feature e_i, so a prototype's coordinates say which pixels it pooled and with what weight."""
    support = torch.eye(4).view(4, 1, 4)  # [C=4, h=1, w=4]
    return {"layer4": support[None, None]}, mask.view(1, 1, 1, 4)


def test_config_default_is_the_authors_background_and_a_wrong_rule_is_a_clear_error():
    assert ProtoNetConfig().background == PANetConfig().background == "not_foreground"
    supports, masks = _one_support_episode(torch.tensor([1, 0, 255, 254]))
    model = build_model("panet", background="void")
    with pytest.raises(ValueError, match="background rule"):
        model.head({"layer4": torch.randn(1, 4, 1, 4)}, supports, masks, 1, (1, 4))


def test_the_authors_rule_pools_void_into_the_background_and_par_labels_it_background():
    mask = torch.tensor([1, 0, 255, 254])  # class, background, void, another way's class
    supports, masks = _one_support_episode(mask)
    query = {"layer4": torch.randn(1, 4, 1, 4)}
    eps = 1e-5
    authors = build_model("protonet").head(query, supports, masks, 1, (1, 4))["prototypes"][0]
    labelled = build_model("protonet", background="labelled").head(query, supports, masks, 1, (1, 4))["prototypes"][0]
    # background prototype: mean of pixels 1 and 2 (background and void) vs pixel 1 alone; never pixel 3
    torch.testing.assert_close(authors[0], torch.tensor([0.0, 1.0, 1.0, 0.0]) / (2 + eps))
    torch.testing.assert_close(labelled[0], torch.tensor([0.0, 1.0, 0.0, 0.0]) / (1 + eps))
    torch.testing.assert_close(authors[1], labelled[1])  # the foreground does not depend on the rule
    torch.testing.assert_close(authors[1], torch.tensor([1.0, 0.0, 0.0, 0.0]) / (1 + eps))
    # PAR's label: void is background (0) under the authors' rule, ignored under "labelled";
    # the other way's pixel is ignored under both
    assert par_targets(mask).tolist() == [1, 0, 0, 255]
    assert par_targets(mask, "labelled").tolist() == [1, 0, 255, 255]


def test_par_loss_counts_void_as_background_by_hand():
    # support logits at the mask size; the query side is irrelevant to the loss given the logits
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0], [0.0, 1.0, 1.5, -2.0]]).view(1, 1, 2, 1, 4)  # (bg, fg) per pixel
    masks = torch.tensor([1, 0, 255, 254]).view(1, 1, 1, 4)
    valid = torch.tensor([[True]])

    def ce(pixel, label):
        z = logits[0, 0, :, 0, pixel]
        return (torch.logsumexp(z, 0) - z[label]).item()

    authors = (ce(0, 1) + ce(1, 0) + ce(2, 0)) / 3  # void is labelled background; 254 ignored
    labelled = (ce(0, 1) + ce(1, 0)) / 2  # void and 254 ignored
    assert par_loss(logits, masks, valid).item() == pytest.approx(authors, rel=1e-6)
    assert par_loss(logits, masks, valid, "labelled").item() == pytest.approx(labelled, rel=1e-6)


@pytest.mark.parametrize("background", ["not_foreground", "labelled"])
def test_other_way_pixels_are_neither_foreground_nor_background_in_two_way_supports(background):
    # 2-way 1-shot at feature resolution: what a support's EXCLUDED pixels hold changes nothing,
    # neither the prototypes nor the prediction nor PAR; what its void pixels hold changes the
    # background only under the authors' rule.
    torch.manual_seed(9)
    c, size = 6, (5, 6)
    query, supports = torch.randn(2, c, *size), torch.randn(2, 2, c, *size)
    masks = torch.randint(0, 2, (2, 2, *size))
    masks[:, 0, :, :2] = EXCLUDED  # way 0's supports show way 1's object here, and vice versa
    masks[:, 1, -1, :] = EXCLUDED
    masks[:, :, 0, -2:] = 255  # void
    model = build_model("panet", background=background).train()
    batch = {"query_mask": torch.randint(0, 3, (2, *size)), "support_masks": masks}

    def run(feats):
        out = model.head({"layer4": query}, {"layer4": feats}, masks, 2, size)
        return out, model.loss(out, batch)[1]["par"]

    base, par = run(supports)
    excluded = supports.clone()
    excluded.permute(0, 1, 3, 4, 2)[masks == EXCLUDED] = 100.0  # [B, S, h, w, C] view: every channel
    assert not torch.equal(excluded, supports)
    changed, par_changed = run(excluded)
    torch.testing.assert_close(changed["prototypes"], base["prototypes"], rtol=0, atol=0)
    torch.testing.assert_close(changed["logits"], base["logits"], rtol=0, atol=0)
    assert par_changed == par
    assert (par_targets(masks, background)[masks == EXCLUDED] == 255).all()

    void = supports.clone()
    void.permute(0, 1, 3, 4, 2)[masks == 255] = 100.0
    moved, _ = run(void)
    torch.testing.assert_close(moved["prototypes"][:, 1:], base["prototypes"][:, 1:], rtol=0, atol=0)
    assert torch.equal(moved["prototypes"][:, 0], base["prototypes"][:, 0]) == (background == "labelled")


def test_the_labelled_rule_reproduces_the_old_coding_exactly():
    """``background="labelled"`` on masks coded with EXCLUDED gives bit for bit what the same
    model gave when other ways' pixels were coded 255 like void (the rule before EXCLUDED)."""
    torch.manual_seed(10)
    way, shot, c = 2, 2, 8
    query, supports = torch.randn(2, c, 4, 5), torch.randn(2, way * shot, c, 4, 5)
    masks = torch.randint(0, 2, (2, way * shot, 13, 11))
    masks[:, :, :3] = 255
    masks[:, :, -3:, 5:] = EXCLUDED
    old_coding = masks.masked_fill(masks == EXCLUDED, 255)
    batch = {"query_mask": torch.randint(0, 3, (2, 13, 11))}
    model = build_model("panet", background="labelled").train()
    new = model.head({"layer4": query}, {"layer4": supports}, masks, way, (13, 11))
    old = model.head({"layer4": query}, {"layer4": supports}, old_coding, way, (13, 11))
    for key in ("logits", "prototypes", "support_logits", "query_prototypes", "par_valid"):
        assert torch.equal(new[key], old[key]), key
    new_total, new_parts = model.loss(new, {**batch, "support_masks": masks})
    old_total, old_parts = model.loss(old, {**batch, "support_masks": old_coding})
    assert torch.equal(new_total, old_total) and new_parts == old_parts
    # and the old coding's PAR is the loop reference with 255 ignored and 0 as background
    assert old_parts["par"] == pytest.approx(reference_par(query, supports, old_coding, way, background="labelled").item(),
                                             rel=1e-5)
    # the authors' rule, on the same masks, gives another background prototype
    authors = build_model("panet").train().head({"layer4": query}, {"layer4": supports}, masks, way, (13, 11))
    assert not torch.allclose(authors["prototypes"][:, 0], new["prototypes"][:, 0])
    torch.testing.assert_close(authors["prototypes"][:, 1:], new["prototypes"][:, 1:], rtol=0, atol=0)
