"""Every fast twin of ``fsslib.models.fast`` against the plain code it replaces, and each method's
whole head, loss and gradients with ``fast_paths`` on and off.

Reordered floating-point sums are not bit-equal, so twins are compared in float64 to rounding
(``atol=1e-10``) and in float32 with ``assert_close``'s default tolerances.
"""
from __future__ import annotations

import itertools

import pytest
import torch

from fsslib.models import build_model, fast, panet, protonet, ssp
from fsslib.models.ops import EXCLUDED, unit_vectors


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
    got = fast.ssp_self_support(features, logits, adaptive=adaptive)
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
