"""MSPF: each equation against a direct computation, each ablation switch against its definition."""
from dataclasses import fields

import pytest
import torch
import torch.nn.functional as F
from batches import episode_batch  # tests/batches.py

from fsslib.models import build_model
from fsslib.models.mspf import ASPP, PAPER_ABLATIONS, REAL_DATA_RECIPE, MSPFConfig
from fsslib.models.ops import mask_to_feature_size
from fsslib.models.priors import multi_scale_mean_cosine_priors

BINS = [(8, 8), (4, 4), (2, 2), (1, 1)]  # small CNN at 64x64: 8x8 features


pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py


def _batch(b=2, k=1, size=64, seed=0):
    masks = torch.zeros(b, k, size, size, dtype=torch.long)
    masks[..., size // 4:, : 5 * size // 8] = 1  # touches a corner, so even the 2x2 scale sees the object
    return episode_batch(masks, seed)


def _model(**kw):
    torch.manual_seed(0)
    return build_model("mspf", width=kw.pop("width", 16), **kw).eval()


@pytest.fixture(scope="module")
def setup():
    torch.set_num_threads(1)
    model = _model()
    batch = _batch(k=2)
    q, s = model.episode_features(batch)
    return model, batch, q, s


def _run(model, setup_, **switches):
    _, batch, q, s = setup_
    saved = {k: getattr(model.config, k) for k in switches}
    for k, v in switches.items():
        setattr(model.config, k, v)
    try:
        return model.head(q, s, batch["support_masks"], 1, (64, 64))
    finally:
        for k, v in saved.items():
            setattr(model.config, k, v)


def _query_mid(model, q):
    l2 = F.interpolate(q["layer2"], size=q["layer3"].shape[-2:], mode="bilinear", align_corners=True)
    return model.project_query(torch.cat([l2, q["layer3"]], 1))  # MSPF: [layer2; layer3]


def _classify(model, fused):
    fused = fused + model.block(fused)
    return F.interpolate(model.cls(fused), size=(64, 64), mode="bilinear", align_corners=True)


def _same(a, b):
    if isinstance(a, list):
        return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))
    return torch.equal(a, b)


# ---------------------------------------------------------------------- constants
def test_constants_recipe_and_ablation_rows():
    cfg = MSPFConfig()
    assert (cfg.frozen_stages, cfg.freeze_bn, cfg.width, cfg.prior_eps, cfg.mask_eps) == ("all", True, 256, 1e-7, 5e-4)
    assert all([cfg.multi_scale_prior, cfg.prior_connection, cfg.multi_scale_fusion, cfg.scale_interaction,
                cfg.scale_weights, cfg.aux_loss])
    pascal, coco = REAL_DATA_RECIPE["pascal"], REAL_DATA_RECIPE["coco"]
    assert (pascal["optimizer"], pascal["momentum"], pascal["weight_decay"], pascal["lr"]) == ("sgd", 0.9, 1e-4, 5e-3)
    assert (pascal["batch_size"], pascal["epochs"]) == (4, 200)
    assert (coco["batch_size"], coco["epochs"], coco["lr"]) == (8, 50, 5e-3)
    assert pascal["model_args"]["backbone"] == "resnet50" and pascal["model_args"]["frozen_stages"] == "all"
    names = {f.name for f in fields(MSPFConfig)}
    assert len(PAPER_ABLATIONS) == 11 and all(set(o) <= names for o in PAPER_ABLATIONS.values())
    assert PAPER_ABLATIONS["table3_baseline"] == {"multi_scale_prior": False, "multi_scale_fusion": False}


# ---------------------------------------------------------------------- features, prototype, priors
def test_prototype_and_priors_match_direct_computations(setup):
    model, batch, q, s = setup
    out = _run(model, setup)
    fg = (batch["support_masks"] == 1).float()
    protos = []
    for k in range(2):
        l2 = F.interpolate(s["layer2"][:, k], size=(8, 8), mode="bilinear", align_corners=True)
        mid = model.project_support(torch.cat([l2, s["layer3"][:, k]], 1))
        m = F.interpolate(fg[:, k, None], size=(8, 8), mode="bilinear", align_corners=True)
        protos.append((mid * m).sum(dim=(2, 3)) / (m.sum(dim=(2, 3)) + 5e-4))
    torch.testing.assert_close(out["prototype"], (protos[0] + protos[1]) / 2)
    # eq. 1: layer4 of the masked layer3; the cascade itself is checked against loops in test_priors
    m = mask_to_feature_size(fg.flatten(0, 1), (8, 8)).unsqueeze(1)
    high = model.backbone.run_stage("layer4", s["layer3"].flatten(0, 1) * m).unflatten(0, (2, 2))
    expected = multi_scale_mean_cosine_priors(q["layer4"], high, batch["support_masks"] == 1, BINS, connect=True)
    assert [tuple(p.shape) for p in out["priors"]] == [(2, 1, *b) for b in BINS]
    for got, want in zip(out["priors"], expected):
        torch.testing.assert_close(got, want)


def test_multi_scale_prior_switch_changes_only_the_priors_of_later_scales(setup):
    model = setup[0]
    on, off = _run(model, setup), _run(model, setup, multi_scale_prior=False)
    assert torch.equal(on["priors"][0], off["priors"][0]) and torch.equal(on["prototype"], off["prototype"])
    for i, b in enumerate(BINS[1:], start=1):
        torch.testing.assert_close(off["priors"][i], F.interpolate(off["priors"][0], size=b, mode="bilinear",
                                                                   align_corners=True))
        if i < 3:  # the 1x1 scale is 0 in the cascade (one cell) but a sample of Y^1 without it
            assert not torch.allclose(on["priors"][i], off["priors"][i])
    # the rest of the head is the same function of the priors
    mixed = model.mix(_query_mid(model, setup[2]), off["prototype"], off["priors"])
    assert _same(off["scale_features"], model.interact(mixed))


def test_prior_connection_switch_changes_only_the_prior_cascade(setup):
    model = setup[0]
    on, off = _run(model, setup), _run(model, setup, prior_connection=False)
    assert torch.equal(on["priors"][0], off["priors"][0])
    assert all(not torch.allclose(a, b, atol=1e-3) for a, b in zip(on["priors"][1:3], off["priors"][1:3]))
    # a 1x1 scale has one cell, whose min-max normalised prior is 0 either way
    assert torch.equal(on["priors"][3], torch.zeros(2, 1, 1, 1)) and torch.equal(off["priors"][3], on["priors"][3])
    assert torch.equal(on["prototype"], off["prototype"])
    # a single-scale prior has no cascade, so the switch does nothing there
    single_on = _run(model, setup, multi_scale_prior=False)
    single_off = _run(model, setup, multi_scale_prior=False, prior_connection=False)
    assert torch.equal(single_on["logits"], single_off["logits"])


# ---------------------------------------------------------------------- fusion
def test_mix_is_equation_8(setup):
    model, _, q, _ = setup
    out = _run(model, setup, scale_interaction=False)
    query = _query_mid(model, q)
    for i, b in enumerate(BINS):
        x = torch.cat([F.adaptive_avg_pool2d(query, b), out["prototype"][..., None, None].expand(-1, -1, *b),
                       out["priors"][i]], 1)
        expected = F.relu(F.conv2d(x, model.merge[i][0].weight))  # 1x1, no bias, ReLU
        torch.testing.assert_close(out["scale_features"][i], expected)


def test_scale_interaction_is_equations_9_to_12_and_its_switch_removes_them(setup):
    model, _, q, _ = setup
    on, off = _run(model, setup), _run(model, setup, scale_interaction=False)
    mixed = off["scale_features"]  # without interaction the scales are the eq. 8 outputs
    chain = [model.refine[0](mixed[0])]
    for i in range(1, 4):
        previous = F.interpolate(chain[-1], size=BINS[i], mode="bilinear", align_corners=True)
        chain.append(model.refine[i](model.connect[i - 1](torch.cat([mixed[i], previous], 1))))
    for i in range(4):
        torch.testing.assert_close(on["scale_features"][i], mixed[i] + chain[i])
    assert _same(on["priors"], off["priors"]) and torch.equal(on["prototype"], off["prototype"])
    assert [tuple(z.shape[-2:]) for z in off["aux_logits"]] == BINS


def test_scale_weights_are_equations_14_to_16_and_their_switch_gives_a_plain_sum(setup):
    model = setup[0]
    on, off = _run(model, setup), _run(model, setup, scale_weights=False)
    assert _same(on["scale_features"], off["scale_features"]) and _same(on["aux_logits"], off["aux_logits"])
    up = [F.interpolate(x, size=(8, 8), mode="bilinear", align_corners=True) for x in on["scale_features"]]
    hidden = F.relu(F.conv2d(torch.cat(up, 1), model.weight_net[0].weight))
    weights = torch.sigmoid(F.conv2d(hidden, model.weight_net[2].weight, model.weight_net[2].bias, padding=1))
    assert weights.shape == (2, 4, 8, 8)
    torch.testing.assert_close(on["scale_weights"], weights)
    torch.testing.assert_close(on["logits"], _classify(model, sum(weights[:, i:i + 1] * up[i] for i in range(4))))
    assert "scale_weights" not in off
    torch.testing.assert_close(off["logits"], _classify(model, up[0] + up[1] + up[2] + up[3]))


def test_aux_loss_switch_changes_only_the_loss(setup):
    model, batch, _, _ = setup
    on, off = _run(model, setup), _run(model, setup, aux_loss=False)
    assert torch.equal(on["logits"], off["logits"]) and off["aux_logits"] == [] and len(on["aux_logits"]) == 4
    target = batch["query_mask"]
    main = F.cross_entropy(off["logits"], target, ignore_index=255)
    total, parts = model.loss(off, batch)
    torch.testing.assert_close(total, main)
    assert set(parts) == {"query_ce"}
    total, parts = model.loss(on, batch)
    aux = sum(F.cross_entropy(F.interpolate(z, size=(64, 64), mode="bilinear", align_corners=True), target,
                              ignore_index=255) for z in on["aux_logits"]) / 4
    torch.testing.assert_close(total, main + aux)
    assert parts["aux_ce"] == pytest.approx(aux.item())
    # each auxiliary classifier has the final classifier's head on its scale's features
    for i, z in enumerate(on["aux_logits"]):
        torch.testing.assert_close(z, model.aux_cls[i](on["scale_features"][i]))
        assert [type(m).__name__ for m in model.aux_cls[i]] == [type(m).__name__ for m in model.cls]


def test_multi_scale_fusion_off_is_the_aspp_baseline(setup):
    model = setup[0]
    off = _run(model, setup, multi_scale_fusion=False)
    reference = _run(model, setup, scale_interaction=False)
    assert _same(off["priors"], reference["priors"])
    assert _same(off["scale_features"], reference["scale_features"])  # eq. 8 is kept
    assert off["aux_logits"] == [] and "scale_weights" not in off  # no auxiliary loss, whatever aux_loss says
    up = [F.interpolate(x, size=(8, 8), mode="bilinear", align_corners=True) for x in off["scale_features"]]
    merged = F.relu(F.conv2d(torch.cat(up, 1), model.aspp_merge[0].weight))
    torch.testing.assert_close(off["logits"], _classify(model, model.aspp(merged)))


def test_aspp_is_canets():
    aspp = ASPP(8).eval()
    convs = [aspp.image_pool[0], *(b[0] for b in aspp.branches), aspp.project[0]]
    assert [c.kernel_size[0] for c in convs] == [1, 1, 3, 3, 3, 1]
    assert [c.dilation[0] for c in convs] == [1, 1, 6, 12, 18, 1]
    assert all(c.bias is not None for c in convs) and aspp.project[0].in_channels == 5 * 8
    assert all(seq[2].p == 0.5 for seq in [aspp.image_pool, *aspp.branches, aspp.project])
    x = torch.randn(1, 8, 5, 5)
    pooled = aspp.image_pool(x.mean(dim=(2, 3), keepdim=True)).expand(-1, -1, 5, 5)
    torch.testing.assert_close(aspp(x), aspp.project(torch.cat([pooled, *(b(x) for b in aspp.branches)], 1)))


# ---------------------------------------------------------------------- parameter counts
def _counts(w, mid, n=4):
    cls = 9 * w * w + 2 * w + 2
    return {
        "common": 2 * mid * w + n * (2 * w + 1) * w + 2 * 9 * w * w + cls,  # projections, eq. 8, block, classifier
        "interaction": n * 2 * 9 * w * w + (n - 1) * 2 * w * w,
        "aux": n * cls,
        "weights": n * w * w + (9 * w * n + n),
        "aspp": n * w * w + 2 * (w * w + w) + 3 * (9 * w * w + w) + (5 * w * w + w),
    }


@pytest.mark.parametrize("name", sorted(PAPER_ABLATIONS))
def test_parameter_counts_by_hand(name):
    overrides = PAPER_ABLATIONS[name]
    model = _model(**overrides)
    c = _counts(16, 64 + 128)
    if not overrides.get("multi_scale_fusion", True):
        expected = c["common"] + c["aspp"]
    else:
        parts = [("interaction", "scale_interaction"), ("aux", "aux_loss"), ("weights", "scale_weights")]
        expected = c["common"] + sum(c[key] for key, switch in parts if overrides.get(switch, True))
    print(f"MSPF {name}, width 16, small CNN: {model.learnable_parameters()} learnable parameters")
    assert model.learnable_parameters() == expected


def test_resnet50_parameter_count_and_small_input():
    model = _model(backbone="resnet50", width=256)
    c = _counts(256, 512 + 1024)
    assert model.learnable_parameters() == c["common"] + c["interaction"] + c["aux"] + c["weights"]
    print(f"MSPF, width 256, ResNet-50: {model.learnable_parameters()} learnable parameters; "
          f"baseline: {c['common'] + c['aspp']}")
    out = model(_batch(b=1, size=65))
    assert out["logits"].shape == (1, 2, 65, 65)
    assert [tuple(p.shape[-2:]) for p in out["priors"]] == [(9, 9), (5, 5), (3, 3), (2, 2)]



@pytest.mark.parametrize("name", ["table3_full", "table3_baseline"])
def test_train_step_smoke_smallcnn(name):
    model = _model(**PAPER_ABLATIONS[name]).train()
    batch = _batch()
    out = model(batch)
    loss, _ = model.loss(out, batch)
    loss.backward()
    assert out["logits"].shape == (2, 2, 64, 64)
    assert all(p.grad is None for p in model.backbone.parameters())
    assert model.cls[-1].weight.grad is not None and model.merge[3][0].weight.grad is not None
