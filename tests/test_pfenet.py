"""PFENet: constants, prototype, prior, enrichment module and loss against direct computations."""
import pytest
import torch
import torch.nn.functional as F
from batches import episode_batch  # tests/batches.py

from fsslib.models import build_model
from fsslib.models.ops import mask_to_feature_size, masked_average_pooling
from fsslib.models.pfenet import REAL_DATA_RECIPE, PFENetConfig, pyramid_bins
from fsslib.models.priors import max_cosine_prior

pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py


def _batch(b=2, k=1, size=64, seed=0):
    masks = torch.zeros(b, k, size, size, dtype=torch.long)
    masks[..., size // 4: 3 * size // 4, size // 8: size // 2] = 1
    return episode_batch(masks, seed)


def _model(**kw):
    torch.manual_seed(0)
    return build_model("pfenet", width=kw.pop("width", 16), **kw).eval()


def test_constants_from_the_authors_code():
    cfg = PFENetConfig()
    assert (cfg.frozen_stages, cfg.freeze_bn, cfg.width, cfg.bins) == ("all", True, 256, None)
    assert (cfg.projection_dropout, cfg.classifier_dropout) == (0.5, 0.1)
    assert (cfg.mask_eps, cfg.prior_eps, cfg.aux_weight, cfg.shared_projection) == (5e-4, 1e-7, 1.0, False)
    pascal, coco = REAL_DATA_RECIPE["pascal"], REAL_DATA_RECIPE["coco"]
    assert (pascal["optimizer"], pascal["lr"], pascal["momentum"], pascal["weight_decay"]) == ("sgd", 2.5e-3, 0.9, 1e-4)
    assert (pascal["schedule"], pascal["poly_power"], pascal["batch_size"], pascal["epochs"]) == ("poly", 0.9, 4, 200)
    assert pascal["image_size"] == 473 and pascal["model_args"]["bins"] == (60, 30, 15, 8)
    assert coco["epochs"] == 50


def test_bins_rule():
    assert pyramid_bins((60, 60)) == [(60, 60), (30, 30), (15, 15), (8, 8)]  # the authors' bins at 473
    assert pyramid_bins((16, 16)) == [(16, 16), (8, 8), (4, 4), (2, 2)]  # small CNN at 128
    assert pyramid_bins((9, 12)) == [(9, 12), (5, 6), (3, 3), (2, 2)]
    assert pyramid_bins((60, 60), (60, 30, 15, 8)) == [(60, 60), (30, 30), (15, 15), (8, 8)]
    assert pyramid_bins((81, 81), (1.0, 0.5, 0.25, 0.125)) == [(81, 81), (40, 40), (20, 20), (10, 10)]


def test_backbone_is_frozen_with_batchnorm_in_eval():
    model = _model().train()
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(not m.training for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert model.project_query[2].training  # the head's dropout does train


def test_prototype_and_prior_match_direct_computations():
    model = _model()
    batch = _batch(k=2)
    q, s = model.episode_features(batch)
    out = model.head(q, s, batch["support_masks"], 1, (64, 64))
    fg = (batch["support_masks"] == 1).float()
    # prototype: MAP of the projected [layer3; layer2] support features (layer2 resized), eps 5e-4, mean over shots
    protos = []
    for k in range(2):
        l2 = F.interpolate(s["layer2"][:, k], size=s["layer3"].shape[-2:], mode="bilinear", align_corners=True)
        mid = model.project_support(torch.cat([s["layer3"][:, k], l2], dim=1))
        m = F.interpolate(fg[:, k, None], size=mid.shape[-2:], mode="bilinear", align_corners=True)
        protos.append((mid * m).sum(dim=(2, 3)) / (m.sum(dim=(2, 3)) + 5e-4))
    torch.testing.assert_close(out["prototype"], (protos[0] + protos[1]) / 2)
    # prior: layer4(layer3 * m) * m, max cosine over support cells, min-max, mean over shots
    priors = []
    for k in range(2):
        m = mask_to_feature_size(fg[:, k], s["layer3"].shape[-2:]).unsqueeze(1)
        high = model.backbone.run_stage("layer4", s["layer3"][:, k] * m) * m
        priors.append(max_cosine_prior(q["layer4"], high.unsqueeze(1))[:, 0])
    torch.testing.assert_close(out["prior"][:, 0], (priors[0] + priors[1]) / 2)
    assert out["prior"].min() >= 0 and out["prior"].max() <= 1


def _reference_enrichment(model, query, prototype, prior, bins):
    """The authors' order of operations, written out for the given bins."""
    size = query.shape[-2:]
    outputs, inner = [], []
    for i, b in enumerate(bins):
        pooled, expanded = F.adaptive_avg_pool2d(query, b), prototype[..., None, None].expand(-1, -1, *b)
        resized = F.interpolate(prior, size=b, mode="bilinear", align_corners=True)
        merged = model.merge[i](torch.cat([pooled, expanded, resized], 1))
        if i:
            previous = F.interpolate(outputs[i - 1], size=b, mode="bilinear", align_corners=True)
            merged = merged + model.alpha[i - 1](torch.cat([merged, previous], 1))
        merged = merged + model.beta[i](merged)
        inner.append(model.inner_cls[i](merged))
        outputs.append(F.interpolate(merged, size=size, mode="bilinear", align_corners=True))
    x = model.res1(torch.cat(outputs, 1))
    return model.cls(x + model.res2(x)), inner


def test_enrichment_module_and_output_match_the_reference():
    model = _model()
    batch = _batch(k=1)
    q, s = model.episode_features(batch)
    out = model.head(q, s, batch["support_masks"], 1, (64, 64))
    l2 = F.interpolate(q["layer2"], size=q["layer3"].shape[-2:], mode="bilinear", align_corners=True)
    query = model.project_query(torch.cat([q["layer3"], l2], 1))
    bins = [(8, 8), (4, 4), (2, 2), (1, 1)]
    logits, inner = _reference_enrichment(model, query, out["prototype"], out["prior"], bins)
    torch.testing.assert_close(out["logits"], F.interpolate(logits, size=(64, 64), mode="bilinear", align_corners=True))
    assert len(out["aux_logits"]) == 4
    for got, want in zip(out["aux_logits"], inner):
        torch.testing.assert_close(got, want)


def test_loss_is_ce_plus_mean_inner_ce_with_255_ignored():
    model = _model()
    batch = _batch()
    out = model(batch)
    total, parts = model.loss(out, batch)
    target = batch["query_mask"]
    main = F.cross_entropy(out["logits"], target, ignore_index=255)
    inner = [F.cross_entropy(F.interpolate(z, size=(64, 64), mode="bilinear", align_corners=True), target,
                             ignore_index=255) for z in out["aux_logits"]]
    torch.testing.assert_close(total, main + sum(inner) / 4)
    assert parts["query_ce"] == pytest.approx(main.item()) and parts["aux_ce"] == pytest.approx(sum(inner).item() / 4)


def _head_parameters(w, mid, n=4):
    """PFENet's learnable parameters written out: convs followed by ReLU have no bias."""
    projection = mid * w
    merge, alpha, beta = (2 * w + 1) * w, 2 * w * w, 2 * 9 * w * w
    cls = 9 * w * w + 2 * w + 2  # 3x3 (no bias) + 1x1 to 2 logits with bias
    return 2 * projection + n * merge + (n - 1) * alpha + n * beta + n * cls + n * w * w + 2 * 9 * w * w + cls


def test_parameter_count_by_hand():
    model = _model(width=16)
    print(f"PFENet head, width 16, small CNN: {model.learnable_parameters()} learnable parameters")
    assert model.learnable_parameters() == _head_parameters(16, 64 + 128)
    assert _model(width=16, shared_projection=True).learnable_parameters() == _head_parameters(16, 64 + 128) - 192 * 16
    model = _model(width=256)
    print(f"PFENet head, width 256, small CNN: {model.learnable_parameters()} learnable parameters")
    assert model.learnable_parameters() == _head_parameters(256, 64 + 128)


def test_shared_projection_changes_only_the_support_projection():
    model = _model()
    batch = _batch()
    q, s = model.episode_features(batch)
    separate = model.head(q, s, batch["support_masks"], 1, (64, 64))
    model.config.shared_projection = True
    shared = model.head(q, s, batch["support_masks"], 1, (64, 64))
    assert torch.equal(separate["prior"], shared["prior"])
    assert not torch.allclose(separate["prototype"], shared["prototype"])
    l2 = F.interpolate(s["layer2"][:, 0], size=s["layer3"].shape[-2:], mode="bilinear", align_corners=True)
    expected = masked_average_pooling(model.project_query(torch.cat([s["layer3"][:, 0], l2], 1)),
                                      batch["support_masks"][:, 0] == 1, "resize_mask", 5e-4)
    torch.testing.assert_close(shared["prototype"], expected)



def test_train_step_smoke_smallcnn():
    model = _model().train()
    batch = _batch()
    out = model(batch)
    assert out["logits"].shape == (2, 2, 64, 64) and out["prior"].shape == (2, 1, 8, 8)
    loss, _ = model.loss(out, batch)
    loss.backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert model.merge[0][0].weight.grad is not None and model.project_support[0].weight.grad is not None


def test_resnet50_small_input_and_the_papers_parameter_count():
    model = _model(backbone="resnet50", width=256)
    assert model.project_query[0].in_channels == 1024 + 512
    out = model(_batch(b=1, size=65))
    assert out["logits"].shape == (1, 2, 65, 65) and out["prior"].shape == (1, 1, 9, 9)
    assert [tuple(z.shape[-2:]) for z in out["aux_logits"]] == [(9, 9), (5, 5), (3, 3), (2, 2)]
    # The paper reports 10.8M learnable parameters for PFENet on ResNet-50.
    print(f"PFENet head, width 256, ResNet-50: {model.learnable_parameters()} learnable parameters")
    assert model.learnable_parameters() == _head_parameters(256, 1024 + 512) == 10_817_034


# ---------------------------------------------------------------------- switches that are not the authors'
@pytest.mark.parametrize("name", ["pfenet", "mspf"])
def test_prior_shortcut_adds_the_scaled_centred_prior_to_the_foreground_logit(name):
    from fsslib.models.ops import resize_to

    torch.manual_seed(0)
    model = build_model(name, width=16, prior_shortcut=3.0).eval()
    assert build_model(name, width=16).shortcut is None  # off by default: the authors' head
    batch = _batch(size=64)
    with torch.no_grad():
        out = model(batch)
        model.shortcut.scale.zero_()
        plain = model(batch)
    prior = out["prior"] if name == "pfenet" else out["priors"][0]
    term = torch.cat([torch.zeros_like(prior), 3.0 * (prior - 0.5)], dim=1)
    expected = plain["logits"] + resize_to(term, plain["logits"].shape[-2:], "bilinear", align_corners=True)
    torch.testing.assert_close(out["logits"], expected, atol=1e-5, rtol=1e-5)
    assert model.shortcut.scale.requires_grad and model.shortcut in model.active_modules()


@pytest.mark.parametrize("name", ["pfenet", "mspf"])
def test_foreground_weight_weights_the_foreground_class_in_every_cross_entropy(name):
    from fsslib.models.ops import resize_to

    torch.manual_seed(0)
    model = build_model(name, width=16, foreground_weight=3.0).eval()
    batch = _batch(size=64)
    batch["query_mask"][:, :2] = 255
    out = model(batch)
    target = batch["query_mask"]
    weight = torch.tensor([1.0, 3.0])

    def ce(z):
        z = resize_to(z, target.shape[-2:], "bilinear", align_corners=True)
        return F.cross_entropy(z, target, weight=weight, ignore_index=255)

    expected = ce(out["logits"]) + torch.stack([ce(z) for z in out["aux_logits"]]).mean()
    total, parts = model.loss(out, batch)
    torch.testing.assert_close(total, expected)
    assert parts["query_ce"] == pytest.approx(ce(out["logits"]).item())
