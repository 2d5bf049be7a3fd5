"""MSDNet: constants, CMGM, STD, fusion and decoder, output threshold, Dice loss and parameter count
against direct computations."""
import math

import pytest
import torch
import torch.nn.functional as F
from batches import episode_batch  # tests/batches.py

from fsslib.models import build_model
from fsslib.models.msdnet import (
    REAL_DATA_RECIPE,
    MSDNetConfig,
    SpatialTransformerDecoder,
    dice_loss,
    sine_position_encoding,
    two_channel_logits,
)
from fsslib.models.pfenet import training_free_prior

pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py


def _batch(b=2, k=1, size=64, seed=0):
    masks = torch.zeros(b, k, size, size, dtype=torch.long)
    masks[..., size // 4: 3 * size // 4, size // 8: size // 2] = 1
    masks[:, k - 1, size // 2:, size // 2:] = 1  # shots differ
    return episode_batch(masks, seed)


def _model(**kw):
    torch.manual_seed(0)
    return build_model("msdnet", **kw).eval()


def _up(x, size):
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def _mid(model, feats, projection):
    """[layer2; layer3] (layer2 first, resized to layer3), then the given projection."""
    return projection(torch.cat([_up(feats["layer2"], feats["layer3"].shape[-2:]), feats["layer3"]], dim=1))


# ---------------------------------------------------------------------- constants
def test_constants_from_the_authors_code():
    cfg = MSDNetConfig()
    assert (cfg.frozen_stages, cfg.freeze_bn, cfg.width, cfg.bins) == ("all", True, 64, None)
    assert (cfg.projection_dropout, cfg.mask_eps, cfg.prior_eps) == (0.5, 5e-4, 1e-7)
    assert (cfg.heads, cfg.feedforward, cfg.transformer_dropout, cfg.token_self_attention) == (4, 16, 0.1, True)
    assert (cfg.decoder_support, cfg.decoder_shots, cfg.threshold) == ("prototype", "first", 0.5)
    pascal = REAL_DATA_RECIPE["pascal"]
    # Adam = AdamW without weight decay; no schedule
    assert (pascal["optimizer"], pascal["lr"], pascal["weight_decay"], pascal["schedule"]) == ("adamw", 1e-3, 0.0,
                                                                                              "constant")
    assert (pascal["batch_size"], pascal["image_size"], pascal["epochs"]) == (32, 473, 60)
    assert pascal["model_args"]["backbone"] == "resnet50" and pascal["model_args"]["width"] == 64
    assert REAL_DATA_RECIPE["coco"]["epochs"] == 30


def test_backbone_is_frozen_with_batchnorm_in_eval():
    model = _model().train()
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(not m.training for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert model.project_query[3].training and model.merge[0][1].training  # the head's dropout and BN train


# ---------------------------------------------------------------------- pieces against loops
def test_sine_position_encoding_matches_the_formula():
    h, w, c = 3, 5, 8
    pe = sine_position_encoding(h, w, c)
    n = c // 2
    for y in range(h):
        for x in range(w):
            for axis, coord, length in ((0, y + 1, h), (1, x + 1, w)):
                angle = coord / (length + 1e-6) * 2 * math.pi
                for i in range(n):
                    value = angle / 10000 ** (2 * (i // 2) / n)
                    expected = math.sin(value) if i % 2 == 0 else math.cos(value)
                    assert pe[axis * n + i, y, x].item() == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match="multiple of 4"):
        sine_position_encoding(2, 2, 6)


def _cmgm_loop(query, support, fg, size, eps=1e-7):
    """Per shot: support layer4 times its resized mask; per query cell the max cosine over support cells;
    min-max over the query cells; resized to ``size``; mean over shots. ``[B, 1, *size]``."""
    b_, k_ = support.shape[:2]
    h, w = query.shape[-2:]
    out = torch.zeros(b_, 1, *size, dtype=torch.float64)
    for b in range(b_):
        for k in range(k_):
            m = _up(fg[b, k][None, None].float(), support.shape[-2:])[0, 0]
            s = (support[b, k] * m).double().flatten(1)  # [C, h'w']
            values = torch.zeros(h * w, dtype=torch.float64)
            for cell in range(h * w):
                q = query[b, :, cell // w, cell % w].double()
                values[cell] = (q @ s / (q.norm() * s.norm(dim=0) + eps)).max()
            values = (values - values.min()) / (values.max() - values.min() + eps)
            out[b, 0] += _up(values.view(1, 1, h, w), size)[0, 0] / k_
    return out


def test_cmgm_matches_a_direct_computation():
    g = torch.Generator().manual_seed(1)
    query, support = torch.randn(2, 6, 4, 5, generator=g), torch.randn(2, 3, 6, 4, 5, generator=g)
    fg = (torch.rand(2, 3, 16, 20, generator=g) > 0.5).long()
    got = training_free_prior(query, support.flatten(0, 1), fg.flatten(0, 1).float(), (2, 3), (7, 9))
    torch.testing.assert_close(got.double(), _cmgm_loop(query, support, fg, (7, 9)), atol=1e-6, rtol=1e-5)


def test_cmgm_in_the_model_masks_layer4_after_layer4_only():
    model = _model()
    batch = _batch(k=2)
    q, s = model.episode_features(batch)
    out = model.head(q, s, batch["support_masks"], 1, (64, 64))
    fg = (batch["support_masks"] == 1).long()
    expected = _cmgm_loop(q["layer4"], s["layer4"], fg, q["layer3"].shape[-2:])
    torch.testing.assert_close(out["context_mask"].double(), expected, atol=1e-5, rtol=1e-5)
    # PFENet's prior (layer4 of the masked layer3) is a different map
    m = _up(fg[:, 0, None].float(), s["layer3"].shape[-2:])
    pfenet_support = model.backbone.run_stage("layer4", s["layer3"][:, 0] * m)[:, None]
    assert not torch.allclose(_cmgm_loop(q["layer4"], pfenet_support, fg[:, :1], q["layer3"].shape[-2:]),
                              _cmgm_loop(q["layer4"], s["layer4"][:, :1], fg[:, :1], q["layer3"].shape[-2:]))
    assert out["context_mask"].min() >= 0 and out["context_mask"].max() <= 1


def test_prototype_is_masked_average_pooling_of_layer2_then_layer3():
    model = _model()
    batch = _batch(k=2)
    q, s = model.episode_features(batch)
    out = model.head(q, s, batch["support_masks"], 1, (64, 64))
    fg = (batch["support_masks"] == 1).float()
    protos = []
    for k in range(2):
        mid = _mid(model, {n: v[:, k] for n, v in s.items()}, model.project_support)
        m = _up(fg[:, k, None], mid.shape[-2:])
        protos.append((mid * m).sum(dim=(2, 3)) / (m.sum(dim=(2, 3)) + 5e-4))
    torch.testing.assert_close(out["prototype"], (protos[0] + protos[1]) / 2)


def _std_direct(std, prototype, memory, self_attention=True):
    """The decoder layer written out: per-head scaled dot-product attention, post-norm, final LayerNorm."""
    b, c, h, w = memory.shape
    heads = std.cross_attn.num_heads
    d = c // heads
    layer_norm = lambda x, norm: F.layer_norm(x, (c,), norm.weight, norm.bias, norm.eps)  # noqa: E731
    keys_in = (memory + sine_position_encoding(h, w, c)).flatten(2).transpose(1, 2)  # [B, hw, C]
    values_in = memory.flatten(2).transpose(1, 2)
    t = prototype
    if self_attention:  # one token: attention weight 1, so W_o (W_v t + b_v) + b_o
        wv, bv = std.self_attn.in_proj_weight[2 * c:], std.self_attn.in_proj_bias[2 * c:]
        t = layer_norm(t + std.self_attn.out_proj(t @ wv.T + bv), std.norm1)
    wq, wk, wv = std.cross_attn.in_proj_weight.split(c)
    bq, bk, bv = std.cross_attn.in_proj_bias.split(c)
    query = ((t + std.query_pos) @ wq.T + bq).view(b, heads, d)
    keys = (keys_in @ wk.T + bk).view(b, h * w, heads, d)
    values = (values_in @ wv.T + bv).view(b, h * w, heads, d)
    weights = torch.softmax(torch.einsum("bjd,bqjd->bjq", query, keys) / math.sqrt(d), dim=-1)  # [B, heads, hw]
    attended = std.cross_attn.out_proj(torch.einsum("bjq,bqjd->bjd", weights, values).reshape(b, c))
    t = layer_norm(t + attended, std.norm2)
    linear1, linear2 = std.ffn[0], std.ffn[3]
    t = layer_norm(t + linear2(F.relu(linear1(t))), std.norm3)
    return layer_norm(t, std.norm), weights.view(b, heads, h, w)


@pytest.mark.parametrize("self_attention", [True, False])
def test_std_matches_the_equations_and_attention_sums_to_one(self_attention):
    torch.manual_seed(0)
    std = SpatialTransformerDecoder(width=16, heads=4, feedforward=8, dropout=0.1).eval()
    prototype, memory = torch.randn(2, 16), torch.randn(2, 16, 3, 4)
    token, attention = std(prototype, memory, self_attention)
    want_token, want_attention = _std_direct(std, prototype, memory, self_attention)
    torch.testing.assert_close(token, want_token)
    torch.testing.assert_close(attention, want_attention)
    assert attention.shape == (2, 4, 3, 4)
    torch.testing.assert_close(attention.sum(dim=(-2, -1)), torch.ones(2, 4))


def test_std_initialisation_follows_the_authors():
    torch.manual_seed(0)
    std = SpatialTransformerDecoder(width=64, heads=4, feedforward=16, dropout=0.1)
    for name, p in std.named_parameters():
        if name.endswith("bias") and "norm" not in name:
            assert torch.count_nonzero(p) == 0, name
        elif "norm" in name:
            assert torch.all(p == (1.0 if name.endswith("weight") else 0.0)), name
        elif p.dim() > 1:  # Xavier-uniform bound sqrt(6 / (fan_in + fan_out))
            assert p.abs().max() <= math.sqrt(6 / sum(p.shape)), name
    assert std.ffn[0].out_features == 16 and std.cross_attn.num_heads == 4


def _reference_fuse_decode(model, query, prototype, context, high, stage, bins):
    """The authors' fusion and decoder, written out for the given bins."""
    size = query.shape[-2:]
    ups, per_scale = [], []
    for i, b in enumerate(bins):
        x = model.merge[i](torch.cat([F.adaptive_avg_pool2d(query, b), prototype[..., None, None].expand(-1, -1, *b),
                                      _up(context, b)], 1))
        if i:
            x = x + model.alpha[i - 1](torch.cat([x, _up(ups[-1], b)], 1))
        x = x + model.beta[i](x)
        per_scale.append(x)
        ups.append(_up(x, size))
    g = model.res1(torch.cat(ups, 1))
    x = model.stride8[0](torch.cat([g, high], 1))
    x = x + model.stride8[1](torch.cat([x, high], 1))
    decoded = [x]
    x4, s4 = model.up_query[0](x), model.up_support[0](stage)
    for block in model.upsampled[0]:
        x4 = x4 + block(torch.cat([x4, s4], 1))
    x2, s2 = model.up_query[1](x4), model.up_support[1](s4)
    for block in model.upsampled[1]:
        x2 = x2 + block(torch.cat([x2, s2], 1))
    return per_scale, decoded + [x4, x2]


def test_fusion_decoder_and_output_match_the_reference():
    model = _model()
    batch = _batch(k=1)
    q, s = model.episode_features(batch)
    out = model.head(q, s, batch["support_masks"], 1, (64, 64))
    query = _mid(model, q, model.project_query)
    m = _up((batch["support_masks"][:, 0, None] == 1).float(), query.shape[-2:])
    high = model.project_support_high(s["layer4"][:, 0]) * m
    stage = out["prototype"][..., None, None] * m  # K = 1: the shot's prototype is the prototype
    per_scale, decoded = _reference_fuse_decode(model, query, out["prototype"], out["context_mask"], high, stage,
                                                [(8, 8), (4, 4), (2, 2), (1, 1)])
    for got, want in zip(out["fusion_features"] + out["decoder_features"], per_scale + decoded):
        torch.testing.assert_close(got, want)
    assert [tuple(x.shape[-2:]) for x in out["decoder_features"]] == [(8, 8), (16, 16), (32, 32)]  # strides 8, 4, 2
    score = torch.einsum("bchw,bc->bhw", decoded[-1], out["token"])[:, None]
    torch.testing.assert_close(out["score"], score)
    torch.testing.assert_close(out["probability"], _up(torch.sigmoid(score), (64, 64)))
    assert out["std_attention"].shape == (2, 4, 8, 8)
    torch.testing.assert_close(out["std_attention"].sum(dim=(-2, -1)), torch.ones(2, 4))


# ---------------------------------------------------------------------- output and loss
def test_two_channel_logits_threshold_the_probability():
    p = torch.tensor([0.0, 0.2, 0.5, 0.5 + 1e-7, 0.7, 1.0]).view(1, 1, 1, 6)
    logits = two_channel_logits(p)
    assert torch.isfinite(logits).all() and torch.all(logits[:, 0] == 0)
    assert logits.argmax(1).flatten().tolist() == [0, 0, 0, 1, 1, 1]  # P > 0.5, ties to the background
    torch.testing.assert_close(logits.softmax(1)[:, 1:, :, 1:5], p[..., 1:5])
    assert two_channel_logits(p, 0.3).argmax(1).flatten().tolist() == [0, 0, 1, 1, 1, 1]
    with pytest.raises(ValueError, match="threshold"):
        two_channel_logits(p, 1.0)


def test_model_output_shape_and_threshold_switch():
    model = _model()
    batch = _batch()
    out = model(batch)
    assert out["logits"].shape == (2, 2, 64, 64) and out["probability"].shape == (2, 1, 64, 64)
    assert torch.equal(model.predict(out), (out["probability"][:, 0] > 0.5).long())
    model.config.threshold = 0.4
    lowered = model(batch)
    assert torch.equal(lowered["probability"], out["probability"])  # the threshold changes only the decision
    assert torch.equal(model.predict(lowered), (out["probability"][:, 0] > 0.4).long())


def test_dice_loss_matches_a_loop_with_255_ignored():
    g = torch.Generator().manual_seed(0)
    p = torch.rand(3, 1, 5, 6, generator=g)
    target = torch.randint(0, 2, (3, 5, 6), generator=g)
    target[:, 0] = 255
    target[2] = 0
    target[2, 0] = 255
    losses = []
    for b in range(3):
        num = den = 0.0
        for y in range(5):
            for x in range(6):
                if target[b, y, x] == 255:
                    continue
                t, v = float(target[b, y, x] == 1), float(p[b, 0, y, x])
                num, den = num + v * t, den + v * v + t * t
        losses.append(1 - 2 * num / max(den, 1e-8))
    assert dice_loss(p, target).item() == pytest.approx(sum(losses) / 3, rel=1e-5)
    assert dice_loss(torch.zeros(1, 1, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long)).item() == 1.0


def test_model_loss_is_the_dice_of_the_probability():
    model = _model()
    batch = _batch()
    out = model(batch)
    total, parts = model.loss(out, batch)
    torch.testing.assert_close(total, dice_loss(out["probability"], batch["query_mask"]))
    assert parts == {"query_dice": pytest.approx(total.item())}


# ---------------------------------------------------------------------- switches
def test_decoder_switches_change_only_the_decoder_support():
    model = _model()
    batch = _batch(k=2)
    q, s = model.episode_features(batch)
    masks = batch["support_masks"]
    model.config.decoder_shots = "mean"
    mean = model.head(q, s, masks, 1, (64, 64))
    query = _mid(model, q, model.project_query)
    merged, _ = model.fuse(query, mean["prototype"], mean["context_mask"])
    fg = (masks == 1).float()
    ms = [_up(fg[:, k, None], query.shape[-2:]) for k in range(2)]
    highs = [model.project_support_high(s["layer4"][:, k]) * ms[k] for k in range(2)]
    mids = [_mid(model, {n: v[:, k] for n, v in s.items()}, model.project_support) for k in range(2)]
    protos = [(mids[k] * ms[k]).sum((2, 3)) / (ms[k].sum((2, 3)) + 5e-4) for k in range(2)]
    stages = [protos[k][..., None, None] * ms[k] for k in range(2)]
    features = [mids[k] * ms[k] for k in range(2)]
    expected = {("prototype", "mean"): ((highs[0] + highs[1]) / 2, (stages[0] + stages[1]) / 2),
                ("prototype", "first"): (highs[0], stages[0]),
                ("features", "mean"): ((highs[0] + highs[1]) / 2, (features[0] + features[1]) / 2),
                ("features", "first"): (highs[0], features[0])}
    for (support, shots), (high, stage) in expected.items():
        model.config.decoder_support, model.config.decoder_shots = support, shots
        out = model.head(q, s, masks, 1, (64, 64))
        for key in ("prototype", "context_mask", "token", "std_attention"):
            assert torch.equal(out[key], mean[key]), key
        for got, want in zip(out["decoder_features"], model.decode(merged, high, stage)):
            torch.testing.assert_close(got, want)
    assert not torch.allclose(out["probability"], mean["probability"])
    model.config.decoder_shots = "last"
    with pytest.raises(ValueError, match="decoder_shots"):
        model.head(q, s, masks, 1, (64, 64))


def test_token_self_attention_switch_changes_only_the_token():
    model = _model()
    batch = _batch()
    q, s = model.episode_features(batch)
    kept = model.head(q, s, batch["support_masks"], 1, (64, 64))
    model.config.token_self_attention = False
    dropped = model.head(q, s, batch["support_masks"], 1, (64, 64))
    for key in ("prototype", "context_mask", "fusion_features"):
        for a, b in zip(*([kept[key], dropped[key]] if key == "fusion_features" else [[kept[key]], [dropped[key]]])):
            assert torch.equal(a, b), key
    assert not torch.allclose(kept["token"], dropped["token"])
    query = _mid(model, q, model.project_query)
    torch.testing.assert_close(dropped["token"], _std_direct(model.std, kept["prototype"], query, False)[0])


# ---------------------------------------------------------------------- parameters, K-shot, smoke
def _head_parameters(w, mid, high, ff=16, heads_unused=False, n=4):
    """MSDNet's learnable parameters written out: convs have no bias, every BatchNorm has 2 W."""
    bn = 2 * w
    projections = 2 * (mid * w + bn) + (high * w + bn)
    attention = 4 * w * w + 4 * w  # in_proj (3 W^2 + 3 W) + out_proj (W^2 + W)
    std = w + 2 * attention + (w * ff + ff + ff * w + w) + 4 * 2 * w  # query_pos, attentions, FFN, 4 LayerNorms
    if heads_unused:
        std -= attention + 2 * w
    fusion = n * ((2 * w + 1) * w + bn) + (n - 1) * (2 * w * w + bn) + n * 2 * (9 * w * w + bn) + n * w * w
    decoder = 8 * (9 * 2 * w * w + bn) + 4 * (9 * w * w + bn)
    return projections + std + fusion + decoder


def test_parameter_count_small_cnn():
    model = _model()
    assert model.learnable_parameters() == _head_parameters(64, 64 + 128, 256) == 1_186_960
    model.config.token_self_attention = False
    assert model.learnable_parameters() == _head_parameters(64, 64 + 128, 256, heads_unused=True)


def test_resnet50_small_input_and_the_papers_parameter_count():
    model = _model(backbone="resnet50")
    assert model.project_query[0].in_channels == 512 + 1024 and model.project_support_high[0].in_channels == 2048
    count = model.learnable_parameters()
    print(f"MSDNet, ResNet-50: {count} learnable parameters")
    assert count == _head_parameters(64, 512 + 1024, 2048) == 1_473_680
    assert 1_300_000 <= count <= 1_700_000  # the paper: 1.5M
    out = model(_batch(b=1, size=65))
    assert out["logits"].shape == (1, 2, 65, 65) and out["context_mask"].shape == (1, 1, 9, 9)
    assert [tuple(x.shape[-2:]) for x in out["decoder_features"]] == [(9, 9), (18, 18), (36, 36)]
    assert [tuple(x.shape[-2:]) for x in out["fusion_features"]] == [(9, 9), (5, 5), (3, 3), (2, 2)]



def test_train_step_smoke_smallcnn():
    model = _model().train()
    batch = _batch()
    out = model(batch)
    loss, _ = model.loss(out, batch)
    loss.backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    for p in (model.std.cross_attn.in_proj_weight, model.std.query_pos, model.merge[0][0].weight,
              model.up_support[1][0].weight, model.project_support_high[0].weight, model.project_support[0].weight):
        assert p.grad is not None and torch.isfinite(p.grad).all()
