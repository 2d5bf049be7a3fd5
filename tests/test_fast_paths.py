"""Every fast twin of ``fsslib.models.fast`` against the plain code it replaces, and each method's
whole head, loss and gradients with ``fast_paths`` on and off.

Reordered floating-point sums are not bit-equal, so twins are compared in float64 to rounding
(``atol=1e-10``) and in float32 with ``assert_close``'s default tolerances.
"""
from __future__ import annotations

import itertools

import pytest
import torch
from batches import episode_batch  # tests/batches.py

from fsslib.models import build_model, fast, panet, pfenet, priors, protonet, ssp
from fsslib.models.backbones import build_backbone
from fsslib.models.ops import EXCLUDED, mask_to_feature_size, unit_vectors


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


F64 = dict(atol=1e-10, rtol=1e-10)
DTYPES = (torch.float64, torch.float32)


def close(actual, expected, dtype):
    """``assert_close`` to float64 rounding, or with the float32 defaults; bool and integer exactly."""
    if isinstance(expected, torch.Tensor) and not expected.is_floating_point():
        assert torch.equal(actual, expected)
        return
    torch.testing.assert_close(actual, expected, **(F64 if dtype == torch.float64 else {}))


def _weights(like):
    """Random weights of a scalar objective, the same on every run."""
    return torch.randn(like.shape, generator=torch.Generator().manual_seed(99), dtype=like.dtype)


def grads(output, inputs, weights):
    """Gradients of ``sum(output * weights)`` with respect to ``inputs``."""
    return torch.autograd.grad((output * weights).sum(), inputs)


# --- prototype methods (ProtoNet, PANet, SSP)

def _features(shape, dtype, seed, zero_pixel=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    if zero_pixel and dtype == torch.float64:
        # a zero vector: cosines of 0, not NaN, on both paths (its gradients, scaled by 1 / 1e-8,
        # are beyond float32's relative tolerance)
        x[0, :, 0, 0] = 0
    return x.to(dtype).requires_grad_(True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_prototype_logits(dtype):
    features = _features((2, 6, 4, 5), dtype, 0)
    prototypes = torch.randn(2, 3, 6, generator=torch.Generator().manual_seed(1), dtype=dtype)
    if dtype == torch.float64:
        prototypes[1, 2] = 0  # a zero prototype (see _features)
    prototypes.requires_grad_(True)
    got, want = fast.prototype_logits(features, prototypes, 20.0), protonet.prototype_logits(features, prototypes, 20.0)
    close(got, want, dtype)
    weights = _weights(want)
    for g, w in zip(grads(got, (features, prototypes), weights), grads(want, (features, prototypes), weights)):
        close(g, w, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("way,shot", [(1, 1), (1, 5), (2, 3)])
def test_panet_prototype_alignment(dtype, way, shot):
    query = _features((2, 6, 4, 5), dtype, 2)
    supports = _features((2, way * shot, 6, 4, 5), dtype, 3, zero_pixel=False)
    query_logits = torch.randn(2, 1 + way, 4, 5, generator=torch.Generator().manual_seed(4), dtype=dtype)
    query_logits[1, 1:] -= 50  # episode 1 predicts no foreground: a zero prototype, PAR skipped
    args = (query, query_logits, supports, way, (9, 11), 20.0, 1e-5)
    got, want = fast.panet_prototype_alignment(*args), panet.prototype_alignment(*args)
    assert got.keys() == want.keys() and not want["par_valid"][1].any()
    for key in want:
        close(got[key], want[key], dtype)
    weights = _weights(want["support_logits"])
    got_grads = grads(got["support_logits"], (query, supports), weights)
    for g, w in zip(got_grads, grads(want["support_logits"], (query, supports), weights)):
        close(g, w, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("per_pixel", [False, True])
def test_ssp_match(dtype, per_pixel):
    features = _features((2, 6, 4, 5), dtype, 5)
    shape = (2, 6, 4, 5) if per_pixel else (2, 6)
    fg = torch.randn(*shape, dtype=dtype, generator=torch.Generator().manual_seed(6)).requires_grad_(True)
    bg = torch.randn(*shape, dtype=dtype, generator=torch.Generator().manual_seed(7)).requires_grad_(True)
    want = ssp.match(features, fg, bg, 10.0)
    weights = _weights(want)
    want_grads = grads(want, (features, fg, bg), weights)
    unit = unit_vectors(features)
    for got in (fast.ssp_match(features, fg, bg, 10.0), fast.ssp_match(features, fg, bg, 10.0, unit)):
        close(got, want, dtype)
        for g, w in zip(grads(got, (features, fg, bg), weights), want_grads):
            close(g, w, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_ssp_selected_mean(dtype):
    features = _features((3, 6, 20), dtype, 8, zero_pixel=False)
    selection = torch.rand(3, 20, generator=torch.Generator().manual_seed(9)) > 0.5
    selection[2] = False
    selection[2, 4] = True
    got, want = fast.ssp_selected_mean(features, selection), ssp.selected_mean(features, selection)
    close(got, want, dtype)
    weights = _weights(want)
    close(grads(got, features, weights)[0], grads(want, features, weights)[0], dtype)


def _selection(seed, b=3, p=20):
    selection = torch.rand(b, p, generator=torch.Generator().manual_seed(seed)) > 0.5
    selection[-1] = False
    selection[-1, 7] = True  # selections of very different sizes: the twin's padding is exercised
    return selection


@pytest.mark.parametrize("dtype", DTYPES)
def test_ssp_background_attention(dtype):
    features = _features((3, 6, 5, 4), dtype, 10)
    selection = _selection(11)
    per_episode = torch.tensor([[0, 19], [3, 3], [7, 12]])
    for index in (None, torch.tensor([0, 5, 19]), per_episode):
        got = fast.ssp_background_attention(features, selection, 2.0, index)
        want = ssp.adaptive_background_attention(features, selection, 2.0, index)
        close(got, want, dtype)
        weights = _weights(want)
        close(grads(got, features, weights)[0], grads(want, features, weights)[0], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("adaptive", [True, False])
def test_ssp_self_support(dtype, adaptive):
    features = _features((3, 6, 5, 4), dtype, 12)
    selection = _selection(13)
    logits = torch.zeros(3, 2, 5, 4, dtype=dtype)
    logits[:, 0] = torch.where(selection.view(3, 5, 4), 5.0, -5.0)  # p_b > 0.6 exactly on `selection`
    logits[:, 1] = 0.5 * torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(14), dtype=dtype)
    logits[1, 1] -= 20  # no p_f above 0.7 in episode 1 (the top-12 fallback) and every p_b above 0.6
    got = fast.ssp_self_support(features, logits, adaptive=adaptive, equations=ssp)
    want = ssp.self_support(features, logits, adaptive=adaptive)
    assert want.fg_selected[1].sum() == 12
    assert want.bg_selected.flatten(1).sum(1).tolist() == [selection[0].sum(), 20, 1]  # padding exercised
    for name, w in want._asdict().items():
        if w is None:
            assert getattr(got, name) is None
        else:
            close(getattr(got, name), w, dtype)
    outputs = ("ssfp", "ssbp") + (("asbp",) if adaptive else ())
    for name in outputs:
        weights = _weights(getattr(want, name))
        close(grads(getattr(got, name), features, weights)[0], grads(getattr(want, name), features, weights)[0],
              dtype)


def _prototype_terms(dtype, seed, vectors):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 6, *(() if v else (4, 5)), generator=g, dtype=dtype) for v in vectors]


@pytest.mark.parametrize("dtype", DTYPES)
def test_weighted_sum(dtype):
    for vectors in ((True, True), (True, True, True), (True, False), (False, True), (True, False, False)):
        terms = _prototype_terms(dtype, len(vectors), vectors)
        weights = (0.5, 0.2, 0.3)[:len(terms)]
        as_maps = any(not v for v in vectors)
        want = sum(w * (p[..., None, None] if as_maps and p.dim() == 2 else p) for w, p in zip(weights, terms))
        close(fast.weighted_sum(*zip(weights, terms)), want, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_ssp_self_support_prototypes(dtype):
    fp, bp, ssfp, ssbp, asbp = _prototype_terms(dtype, 15, (True, True, True, True, False))
    ss = ssp.SelfSupport(None, None, None, ssfp, ssbp, asbp)
    for switches in itertools.product((True, False), repeat=3):
        config = ssp.SSPConfig(**dict(zip(("use_ssfp", "use_ssbp", "use_asbp"), switches)))
        got, want = fast.ssp_self_support_prototypes(config, fp, bp, ss), ssp.self_support_prototypes(config, fp, bp, ss)
        for g, w in zip(got, want):
            close(g, w, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_ssp_self_matching_logits(dtype):
    features = _features((3, 6, 5, 4), dtype, 16)
    mask = torch.randint(0, 2, (3, 11, 9), generator=torch.Generator().manual_seed(17))
    mask[:, :2] = 255
    mask[1, 5:] = EXCLUDED
    got, want = fast.ssp_self_matching_logits(features, mask), ssp.self_matching_logits(features, mask)
    close(got, want, dtype)
    weights = _weights(want)
    close(grads(got, features, weights)[0], grads(want, features, weights)[0], dtype)


# ------------------------------------------------------------- whole heads, losses and gradients
def _episode_batch(shot, way=1, b=2, size=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    masks = (torch.rand(b, way * shot, size, size, generator=g) > 0.6).long()
    masks[:, :, size // 4: size // 2, size // 4: size // 2] = 1
    masks[:, :, :3] = 255
    query_mask = (torch.rand(b, size, size, generator=g) > 0.5).long() * way
    query_mask[:, :2] = 255
    return {"query_img": torch.randn(b, 3, size, size, generator=g),
            "support_imgs": torch.randn(b, way * shot, 3, size, size, generator=g),
            "support_masks": masks, "query_mask": query_mask, "support_classes": torch.ones(b, way, dtype=torch.long)}


def _run(model, batch, fast_paths):
    """Head outputs, loss (and its parts) and parameter gradients of one training step."""
    model.config.fast_paths = fast_paths
    model.zero_grad()
    output = model(batch)
    loss, parts = model.loss(output, batch)
    loss.backward()
    gradients = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return output, loss.detach(), parts, gradients


def _compare_paths(name, dtype, shot, way=1, **model_args):
    torch.manual_seed(0)
    model = build_model(name, **model_args).to(dtype).train()
    batch = _episode_batch(shot, way)
    batch = {k: v.to(dtype) if v.is_floating_point() else v for k, v in batch.items()}
    out_fast, loss_fast, parts_fast, grads_fast = _run(model, batch, True)
    out_plain, loss_plain, parts_plain, grads_plain = _run(model, batch, False)
    assert out_fast.keys() == out_plain.keys()
    for key in out_plain:
        close(out_fast[key].detach(), out_plain[key].detach(), dtype)
    close(loss_fast, loss_plain, dtype)
    assert parts_fast.keys() == parts_plain.keys()
    assert grads_fast.keys() == grads_plain.keys() and grads_plain
    for n in grads_plain:
        close(grads_fast[n], grads_plain[n], dtype)
    return out_plain


SSP_SWITCHES = [
    {},
    {"refine": False},
    {"use_ssbp": False},
    {"use_asbp": False},
    {"use_ssfp": False, "use_ssbp": False},
    {"use_ssfp": False, "use_ssbp": False, "use_asbp": False},
]


@pytest.mark.parametrize("shot", [1, 5])
@pytest.mark.parametrize("switches", SSP_SWITCHES, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()) or "all")
def test_ssp_head_loss_and_gradients_fast_equals_plain(shot, switches):
    out = _compare_paths("ssp", torch.float64, shot, **switches)
    if switches.get("use_asbp", True):
        assert "asbp" in out and out["bg_selected"].any() and not out["bg_selected"].all()


@pytest.mark.parametrize("shot", [1, 5])
def test_ssp_head_float32(shot):
    _compare_paths("ssp", torch.float32, shot)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("way,shot", [(1, 1), (1, 5), (2, 2)])
def test_panet_head_loss_and_gradients_fast_equals_plain(dtype, way, shot):
    out = _compare_paths("panet", dtype, shot, way)
    assert "support_logits" in out  # PAR ran


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shot", [1, 5])
def test_protonet_head_loss_and_gradients_fast_equals_plain(dtype, shot):
    _compare_paths("protonet", dtype, shot)


@pytest.mark.parametrize("name", ["ssp", "panet", "protonet"])
def test_fast_paths_switch_picks_the_twins(name, monkeypatch):
    """The comparisons above compare two different computations: with ``fast_paths=False`` no twin
    runs, with ``True`` they do."""
    twins = [t for t in dir(fast) if t.startswith(("ssp_", "panet_", "prototype_"))]
    assert len(twins) >= 8

    def forbidden(*args, **kwargs):
        raise AssertionError("a fast twin ran")

    torch.manual_seed(0)
    model = build_model(name).train()
    batch = _episode_batch(1)
    for twin in twins:
        monkeypatch.setattr(fast, twin, forbidden)
    model.config.fast_paths = False
    model.loss(model(batch), batch)[0].backward()
    model.config.fast_paths = True
    with pytest.raises(AssertionError, match="a fast twin ran"):
        model.loss(model(batch), batch)


# ---------------------------------------------------------------------- PFENet family (PFENet, MSPF, MSDNet)
# float64 to rounding; float32 with assert_close's defaults
PRECISIONS = [pytest.param(torch.float64, {"atol": 1e-10, "rtol": 1e-10}, id="float64"),
              pytest.param(torch.float32, {}, id="float32")]


def _masked_supports(dtype, seed=0):
    """Query ``[2, 6, 5, 7]``, soft masks ``[2, 3, 4, 5]`` and masked supports ``[2, 3, 6, 4, 5]``: shots
    with an object, one covering the whole map, one of a single cell and one empty."""
    g = torch.Generator().manual_seed(seed)
    query = torch.randn(2, 6, 5, 7, generator=g, dtype=dtype)
    weights = torch.rand(2, 3, 4, 5, generator=g, dtype=dtype) * (torch.rand(2, 3, 4, 5, generator=g) > 0.5)
    weights[0, 1] = torch.rand(4, 5, generator=g, dtype=dtype) + 0.1  # the whole map
    weights[1, 0] = 0
    weights[1, 0, 2, 3] = 0.7  # a single cell
    weights[1, 2] = 0  # no object
    support = torch.randn(2, 3, 6, 4, 5, generator=g, dtype=dtype) * weights.unsqueeze(2)
    return query, support, weights


@pytest.mark.parametrize("dtype, tol", PRECISIONS)
def test_max_cosine_prior_twin(dtype, tol):
    query, support, weights = _masked_supports(dtype)
    plain = priors.max_cosine_prior(query, support)
    torch.testing.assert_close(fast.max_cosine_prior(query, support), plain, **tol)
    torch.testing.assert_close(fast.max_cosine_prior(query, support, object_cells=weights > 0), plain, **tol)
    assert plain.abs().sum() > 0


def test_max_cosine_prior_twin_is_wrong_when_told_the_wrong_object_cells():
    query, support, weights = _masked_supports(torch.float64)
    none = torch.zeros_like(weights, dtype=torch.bool)  # the twin then compares the first cell only
    assert not torch.allclose(fast.max_cosine_prior(query, support, object_cells=none),
                              priors.max_cosine_prior(query, support))


@pytest.mark.parametrize("dtype, tol", PRECISIONS)
def test_mean_cosine_prior_twin(dtype, tol):
    query, support, weights = _masked_supports(dtype)
    plain = priors.mean_cosine_prior(query, support, weights)
    torch.testing.assert_close(fast.mean_cosine_prior(query, support, weights), plain, **tol)
    torch.testing.assert_close(fast.mean_cosine_prior(query, support, weights, eps=0.3),
                               priors.mean_cosine_prior(query, support, weights, eps=0.3), **tol)
    assert plain.abs().sum() > 0


@pytest.mark.parametrize("dtype, tol", PRECISIONS)
@pytest.mark.parametrize("support_resize", ["bilinear", "area"])
@pytest.mark.parametrize("connect", [True, False])
@pytest.mark.parametrize("sizes", [[(9, 9), (5, 5), (3, 3), (2, 2)], [(4, 6), (2, 3), (1, 1)]])
def test_multi_scale_mean_cosine_priors_twin(dtype, tol, support_resize, connect, sizes):
    g = torch.Generator().manual_seed(1)
    query = torch.randn(2, 8, 9, 9, generator=g, dtype=dtype)
    support = torch.randn(2, 3, 8, 9, 9, generator=g, dtype=dtype)
    masks = torch.zeros(2, 3, 36, 36, dtype=torch.long)
    masks[:, :, 4:20, 10:30] = 1
    masks[0, 1] = 1
    masks[1, 2, 30:33, 2:4] = 255
    masks[1, 2, 34, 35] = 1  # a one-pixel object in the corner
    plain = priors.multi_scale_mean_cosine_priors(query, support, masks, sizes, connect, support_resize=support_resize)
    got = fast.multi_scale_mean_cosine_priors(query, support, masks, sizes, connect, support_resize=support_resize)
    assert len(got) == len(plain) == len(sizes)
    for g_, p_ in zip(got, plain):
        torch.testing.assert_close(g_, p_, **tol)


@pytest.mark.parametrize("dtype, tol", PRECISIONS)
def test_training_free_prior_twin(dtype, tol):
    g = torch.Generator().manual_seed(2)
    query, support = torch.randn(2, 8, 6, 7, generator=g, dtype=dtype), torch.randn(6, 8, 6, 7, generator=g, dtype=dtype)
    foreground = (torch.rand(6, 25, 29, generator=g) > 0.7).float()
    foreground[3] = 0
    plain = pfenet.training_free_prior(query, support, foreground, (2, 3), (11, 9))
    # both compute in float32, the authors' precision
    torch.testing.assert_close(fast.training_free_prior(query, support, foreground, (2, 3), (11, 9)), plain,
                               **({} if dtype == torch.float32 else {"atol": 1e-6, "rtol": 1e-6}))
    assert plain.shape == (2, 1, 11, 9) and plain.abs().sum() > 0


def _backbone(name, dtype):
    torch.manual_seed(0)
    return build_backbone(name, weights=None).eval().to(dtype)


BOXES = [((0, 3), (0, 4)), ((9, 12), (5, 12)), ((11, 12), (0, 12)), ((6, 7), (4, 5)), ((0, 12), (0, 12))]


@pytest.mark.parametrize("dtype, tol", PRECISIONS)
@pytest.mark.parametrize("box", BOXES, ids=["top-left", "bottom-right", "last-row", "one-cell", "whole"])
def test_run_stage_in_box_twin(dtype, tol, box):
    backbone = _backbone("smallcnn", dtype)
    x = torch.randn(2, backbone.out_channels["layer3"], 12, 12, dtype=dtype)
    (top, bottom), (left, right) = box
    with torch.no_grad():
        torch.testing.assert_close(fast.run_stage_in_box(backbone, "layer4", x, box),
                                   backbone.run_stage("layer4", x)[..., top:bottom, left:right], **tol)


def _foreground(case, size=45):
    """Support masks ``[3, size, size]`` whose object box, on a 12 x 12 grid, is at a border, one
    cell, the whole map or nowhere."""
    fg = torch.zeros(3, size, size)
    if case == "top-left":
        fg[0, :5, :9] = 1
        fg[2, 2, 3] = 1
    elif case == "bottom-right":
        fg[1, 30:, 38:] = 1
    elif case == "one-cell":
        fg[0, 24, 24] = 1  # on a grid node: one cell of the bilinear mask
    elif case == "whole":
        fg[1, 0, 0] = fg[2, -1, -1] = 1
    return fg


@pytest.mark.parametrize("dtype, tol", PRECISIONS)
@pytest.mark.parametrize("case", ["top-left", "bottom-right", "one-cell", "whole", "empty"])
def test_masked_high_level_twin_where_the_mask_reads_it(dtype, tol, case):
    backbone = _backbone("smallcnn", dtype)
    layer3 = torch.randn(3, backbone.out_channels["layer3"], 12, 12, dtype=dtype)
    foreground = _foreground(case)
    m = mask_to_feature_size(foreground, (12, 12)).to(dtype).unsqueeze(1)
    plain = pfenet.masked_high_level(backbone, layer3, foreground)
    for margin in (0, 2):
        got = fast.masked_high_level(backbone, layer3, foreground, margin)
        torch.testing.assert_close(got * m, plain * m, **tol)
    if case == "one-cell":
        assert int((m > 0).sum()) == 1 and int((got.abs().sum(dim=1) > 0).sum()) <= 25  # a 5 x 5 box at margin 2
    if case == "empty":
        assert (got == 0).all()


@pytest.mark.parametrize("support_resize", ["bilinear", "area"])
@pytest.mark.parametrize("sizes", [[(12, 12), (6, 6), (3, 3)], [(6, 6), (3, 3)], [(5, 7), (2, 2)]])
def test_mspf_masked_high_level_twin_gives_the_plain_priors(support_resize, sizes):
    backbone = _backbone("smallcnn", torch.float64)
    layer3 = torch.randn(3, backbone.out_channels["layer3"], 12, 12, dtype=torch.float64)
    query = torch.randn(1, backbone.out_channels["layer4"], 12, 12, dtype=torch.float64)
    foreground = _foreground("top-left") + _foreground("one-cell")
    masks = foreground.unflatten(0, (1, 3))
    plain = priors.multi_scale_mean_cosine_priors(
        query, pfenet.masked_high_level(backbone, layer3, foreground).unflatten(0, (1, 3)), masks, sizes,
        support_resize=support_resize)
    high = fast.mspf_masked_high_level(backbone, layer3, foreground, sizes, support_resize)
    got = priors.multi_scale_mean_cosine_priors(query, high.unflatten(0, (1, 3)), masks, sizes,
                                                support_resize=support_resize)
    for g_, p_ in zip(got, plain):
        torch.testing.assert_close(g_, p_, atol=1e-10, rtol=1e-10)


def _episode(shots, size=64):
    masks = torch.zeros(2, shots, size, size, dtype=torch.long)
    masks[..., 16:40, 8:30] = 1
    masks[:, -1, 40:, 44:] = 1
    masks[1, 0] = 0
    masks[1, 0, 50:54, 5:9] = 1  # a small object
    return episode_batch(masks, seed=shots)


def _run_prior_head(method, options, fast_paths, batch):
    torch.manual_seed(0)
    model = build_model(method, width=16, fast_paths=fast_paths, **options)
    model.train()
    torch.manual_seed(1)  # the same dropout masks on both paths
    out = model(batch)
    loss, _ = model.loss(out, batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.eval()
    with torch.no_grad():
        evaluated = model(batch)
    return out, loss, grads, evaluated


@pytest.mark.parametrize("shots", [1, 5])
@pytest.mark.parametrize("method, options, prior_key", [
    ("pfenet", {}, "prior"),
    ("pfenet", {"prior_shortcut": 2.0, "shared_projection": True}, "prior"),
    ("mspf", {}, "priors"),
    ("mspf", {"support_resize": "area"}, "priors"),
    ("mspf", {"multi_scale_prior": False, "multi_scale_fusion": False}, "priors"),
    ("mspf", {"support_resize": "area", "bins": (0.5, 0.25, 0.125)}, "priors"),
    ("msdnet", {}, "context_mask"),
    ("msdnet", {"decoder_shots": "mean"}, "context_mask"),
])
def test_whole_head_with_and_without_fast_paths(method, options, prior_key, shots):
    batch = _episode(shots)
    out_fast, loss_fast, grads_fast, eval_fast = _run_prior_head(method, options, True, batch)
    out_plain, loss_plain, grads_plain, eval_plain = _run_prior_head(method, options, False, batch)
    torch.testing.assert_close(out_fast[prior_key], out_plain[prior_key])
    # MSDNet's logits are logit(P), which magnifies float32 rounding of P near 0 and 1: compare P itself
    logit_tol = {"atol": 1e-4, "rtol": 1e-4} if method == "msdnet" else {}
    if method == "msdnet":
        torch.testing.assert_close(out_fast["probability"], out_plain["probability"])
    torch.testing.assert_close(out_fast["logits"], out_plain["logits"], **logit_tol)
    torch.testing.assert_close(loss_fast, loss_plain)
    assert grads_fast.keys() == grads_plain.keys() and grads_fast
    for name in grads_fast:
        if method == "msdnet":
            # Its head BatchNorms normalise over two episodes in training, down to 2 x 2 bins: float32
            # rounding of the context mask (1e-7) comes back up to 1e-3 of a gradient, a wrong one to 1.
            error = (grads_fast[name] - grads_plain[name]).norm() / grads_plain[name].norm().clamp_min(1e-12)
            assert error < 1e-2, name
        else:
            torch.testing.assert_close(grads_fast[name], grads_plain[name], msg=name)
    torch.testing.assert_close(eval_fast["logits"], eval_plain["logits"], **logit_tol)
    prior = out_fast[prior_key][0] if isinstance(out_fast[prior_key], list) else out_fast[prior_key]
    assert prior.std() > 0  # a prior that says something, so the comparison does too
