"""The fast twins of :mod:`fsslib.models.fast` against the plain code they replace, and each method's
whole head with ``fast_paths`` on and off."""
import pytest
import torch
from batches import episode_batch  # tests/batches.py

from fsslib.models import build_model, fast, pfenet, priors
from fsslib.models.backbones import build_backbone
from fsslib.models.ops import mask_to_feature_size

pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py

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


def _run(method, options, fast_paths, batch):
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
    out_fast, loss_fast, grads_fast, eval_fast = _run(method, options, True, batch)
    out_plain, loss_plain, grads_plain, eval_plain = _run(method, options, False, batch)
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
