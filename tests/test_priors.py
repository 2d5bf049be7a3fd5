"""Prior masks against direct loop computations on tiny tensors."""
import math

import pytest
import torch
import torch.nn.functional as F

from fsslib.models.ops import mask_to_feature_size, resize_to
from fsslib.models.priors import (
    PRIOR_EPS,
    max_cosine_prior,
    mean_cosine_prior,
    min_max_normalize,
    multi_scale_mean_cosine_priors,
    pairwise_cosine,
)


def _cos(a, b, eps):
    """Cosine of two vectors with eps on the product of the norms (PFENet's form), in float64."""
    a, b = a.double(), b.double()
    return float(a @ b) / (math.sqrt(float(a @ a)) * math.sqrt(float(b @ b)) + eps)


def _normalise(values, eps):
    low, high = min(values), max(values)
    return [(v - low) / (high - low + eps) for v in values]


def _prior_loop(query, support, weights, reduction, eps):
    """One normalised prior per shot, ``[B, K, h, w]``, written out cell by cell."""
    b_, k_, _, hs, ws = support.shape
    h, w = query.shape[-2:]
    out = torch.zeros(b_, k_, h, w, dtype=torch.float64)
    for b in range(b_):
        for k in range(k_):
            values = []
            for y in range(h):
                for x in range(w):
                    sims = [_cos(query[b, :, y, x], support[b, k, :, v, u], eps) for v in range(hs) for u in range(ws)]
                    if reduction == "max":
                        values.append(max(sims))
                    else:
                        ws_ = [float(weights[b, k, v, u]) for v in range(hs) for u in range(ws)]
                        values.append(sum(m * s for m, s in zip(ws_, sims)) / (sum(ws_) + eps))
            out[b, k] = torch.tensor(_normalise(values, eps)).view(h, w)
    return out


@pytest.fixture(params=["a shot covered by its object", "every object smaller than its map"])
def tensors(request):
    """Masked supports; in the second case every shot has masked-out cells (which the fast twins skip)."""
    torch.manual_seed(0)
    query = torch.randn(2, 5, 3, 4)
    support = torch.randn(2, 2, 5, 4, 3)
    weights = torch.rand(2, 2, 4, 3)
    if request.param == "every object smaller than its map":
        weights[..., 0, :] = 0.0
    weights[0, 1] = 0.0
    weights[0, 1, 1, 2] = 1.0  # a one-cell object
    support = support * weights.unsqueeze(2)  # masked, as the callers pass them
    return query, support, weights


def test_pairwise_cosine_puts_eps_on_the_product_of_norms():
    query = torch.tensor([[[[3.0]], [[4.0]]]])  # one cell, norm 5
    support = torch.tensor([[[[[1.0, 0.0]], [[0.0, 0.0]]]]])  # K=1, cells (1, 0) and (0, 0)
    cos = pairwise_cosine(query, support, eps=0.5)
    assert cos.shape == (1, 1, 2, 1)
    assert cos[0, 0, 0, 0].item() == pytest.approx(3 / (5 * 1 + 0.5))
    assert cos[0, 0, 1, 0].item() == 0.0  # a zero (masked-out) support cell


def test_pairwise_cosine_matches_the_loop(tensors):
    query, support, _ = tensors
    cos = pairwise_cosine(query, support)
    for b, k, v, u, y, x in [(0, 0, 1, 2, 2, 3), (1, 1, 3, 0, 0, 1), (1, 0, 2, 1, 1, 1)]:
        expected = _cos(query[b, :, y, x], support[b, k, :, v, u], PRIOR_EPS)
        assert cos[b, k, v * 3 + u, y * 4 + x].item() == pytest.approx(expected, abs=1e-6)


def test_min_max_normalize_by_hand():
    values = torch.tensor([[[1.0, 3.0], [2.0, 5.0]], [[7.0, 7.0], [7.0, 7.0]]])  # [2, 2, 2]
    out = min_max_normalize(values, eps=1.0)
    torch.testing.assert_close(out[0], torch.tensor([[0.0, 2 / 5], [1 / 5, 4 / 5]]))  # (v - 1) / (4 + 1)
    assert torch.equal(out[1], torch.zeros(2, 2))  # a constant map becomes 0, not NaN
    out = min_max_normalize(values[0])
    assert out.max().item() == pytest.approx(4 / (4 + 1e-7))


def test_max_prior_matches_the_loop(tensors):
    query, support, weights = tensors
    prior = max_cosine_prior(query, support)
    assert prior.shape == (2, 2, 3, 4)
    torch.testing.assert_close(prior.double(), _prior_loop(query, support, weights, "max", PRIOR_EPS),
                               atol=1e-5, rtol=1e-5)


def test_mean_prior_matches_the_loop(tensors):
    query, support, weights = tensors
    prior = mean_cosine_prior(query, support, weights)
    assert prior.shape == (2, 2, 3, 4)
    torch.testing.assert_close(prior.double(), _prior_loop(query, support, weights, "mean", PRIOR_EPS),
                               atol=1e-5, rtol=1e-5)
    # eps is a parameter of all three places (cosine, weight sum, normalisation)
    torch.testing.assert_close(mean_cosine_prior(query, support, weights, eps=0.3).double(),
                               _prior_loop(query, support, weights, "mean", 0.3), atol=1e-5, rtol=1e-5)


def test_max_and_mean_differ_and_empty_mask_gives_zero(tensors):
    query, support, weights = tensors
    assert not torch.allclose(max_cosine_prior(query, support), mean_cosine_prior(query, support, weights))
    empty = torch.zeros_like(weights)
    assert torch.equal(mean_cosine_prior(query, support * 0, empty), torch.zeros(2, 2, 3, 4))


def test_max_prior_includes_background_cells_like_pfenet():
    # Every object cell is anti-parallel to the query, so the zero background cell (similarity 0) wins the max.
    query = torch.tensor([[1.0, 1.0], [0.0, 1.0]]).view(1, 2, 1, 2)  # two query cells
    support = torch.tensor([[-1.0, 0.0], [0.0, 0.0]]).view(1, 1, 2, 1, 2)  # object cell (-1, 0), background 0
    cos = pairwise_cosine(query, support)
    assert cos.max(dim=2).values.flatten().tolist() == pytest.approx([0.0, 0.0])
    assert torch.equal(max_cosine_prior(query, support), torch.zeros(1, 1, 1, 2))


def _cascade_loop(query, support, masks, sizes, connect, eps):
    """Section 3.2 written step by step with the per-pixel prior loop."""
    b_, k_ = support.shape[:2]
    q, s = query.double(), support.flatten(0, 1).double()
    priors = []
    for i, size in enumerate(sizes):
        if i > 0:
            q = F.adaptive_avg_pool2d(q * priors[-1] if connect else q, size)
        m = mask_to_feature_size(masks.flatten(0, 1), size).double()
        s = F.interpolate(s, size=size, mode="bilinear", align_corners=True) * m.unsqueeze(1)
        per_shot = _prior_loop(q, s.unflatten(0, (b_, k_)), m.unflatten(0, (b_, k_)), "mean", eps)
        priors.append(per_shot.mean(dim=1, keepdim=True))
    return priors


@pytest.fixture
def cascade_inputs():
    torch.manual_seed(1)
    query = torch.randn(2, 4, 6, 6)
    support = torch.randn(2, 2, 4, 6, 6)
    masks = torch.zeros(2, 2, 24, 24, dtype=torch.long)
    masks[:, 0, 4:16, 6:20] = 1
    masks[:, 1, 10:24, 0:9] = 1
    masks[1, 1, 0:3] = 255
    return query, support, masks


@pytest.mark.parametrize("connect", [True, False])
def test_multi_scale_cascade_matches_the_loop(cascade_inputs, connect):
    query, support, masks = cascade_inputs
    sizes = [(6, 6), (3, 3), (2, 2), (1, 1)]
    priors = multi_scale_mean_cosine_priors(query, support, masks, sizes, connect=connect)
    expected = _cascade_loop(query, support, masks, sizes, connect, PRIOR_EPS)
    assert [tuple(p.shape) for p in priors] == [(2, 1, 6, 6), (2, 1, 3, 3), (2, 1, 2, 2), (2, 1, 1, 1)]
    for got, want in zip(priors, expected):
        torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


def test_cascade_scale_one_is_the_k_shot_mean_prior_and_connect_changes_only_later_scales(cascade_inputs):
    query, support, masks = cascade_inputs
    sizes = [(6, 6), (3, 3), (2, 2)]
    on = multi_scale_mean_cosine_priors(query, support, masks, sizes, connect=True)
    off = multi_scale_mean_cosine_priors(query, support, masks, sizes, connect=False)
    weights = mask_to_feature_size(masks.flatten(0, 1), (6, 6)).unflatten(0, (2, 2))
    scale_one = mean_cosine_prior(query, support * weights.unsqueeze(2), weights).mean(dim=1, keepdim=True)
    assert torch.equal(on[0], off[0])
    torch.testing.assert_close(on[0], scale_one)
    assert not torch.allclose(on[1], off[1]) and not torch.allclose(on[2], off[2])
    # without the connection, scale 2 pools the raw query features
    weights2 = mask_to_feature_size(masks.flatten(0, 1), (3, 3)).unflatten(0, (2, 2))
    support2 = resize_to((support * weights.unsqueeze(2)).flatten(0, 1), (3, 3)).unflatten(0, (2, 2))
    support2 = support2 * weights2.unsqueeze(2)
    expected = mean_cosine_prior(F.adaptive_avg_pool2d(query, (3, 3)), support2, weights2).mean(dim=1, keepdim=True)
    torch.testing.assert_close(off[1], expected)


def test_area_support_resize_keeps_a_small_object_that_bilinear_sampling_loses():
    torch.manual_seed(0)
    query, support = torch.randn(1, 8, 16, 16), torch.randn(1, 1, 8, 16, 16)
    mask = torch.zeros(1, 1, 128, 128)
    mask[..., 10:30, 10:30] = 1  # between the 4x4 sample points 0, 42, 85, 127
    sizes = [(16, 16), (8, 8), (4, 4)]
    sampled = multi_scale_mean_cosine_priors(query, support, mask, sizes)
    area = multi_scale_mean_cosine_priors(query, support, mask, sizes, support_resize="area")
    assert sampled[2].abs().max() == 0 and area[2].abs().max() > 0
    with pytest.raises(ValueError, match="support_resize"):
        multi_scale_mean_cosine_priors(query, support, mask, sizes, support_resize="nearest")
