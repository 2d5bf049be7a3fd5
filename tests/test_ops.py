"""Shared ops against hand computations on tiny tensors."""

import pytest
import torch
import torch.nn.functional as F

from fsslib.models.ops import (
    EXCLUDED,
    IGNORE_INDEX,
    background_mask,
    clamped_norm,
    cosine_logits,
    excluded_as_ignore,
    foreground_mask,
    mask_to_feature_size,
    masked_average_pooling,
    resize_by_matrices,
    resize_to,
    weighted_cell_sum,
)


def _map_loop(features, mask, eps):
    """Masked average pooling written out pixel by pixel (features and mask at one size)."""
    batch, channels, height, width = features.shape
    out = torch.zeros(batch, channels, dtype=torch.float64)
    for b in range(batch):
        total, area = torch.zeros(channels, dtype=torch.float64), 0.0
        for y in range(height):
            for x in range(width):
                total += features[b, :, y, x].double() * float(mask[b, y, x])
                area += float(mask[b, y, x])
        out[b] = total / (area + eps)
    return out


# ---------------------------------------------------------------------- masked average pooling
def test_map_resize_mask_same_size_by_hand():
    features = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # [1, 1, 2, 2]
    mask = torch.tensor([[[1, 1], [0, 0]]])
    proto = masked_average_pooling(features, mask, eps=0.0)
    assert proto.shape == (1, 1)
    assert proto.item() == pytest.approx(1.5)


def test_map_eps_is_a_parameter():
    features = torch.tensor([[[[2.0, 8.0], [8.0, 8.0]]]])
    mask = torch.tensor([[[1, 0], [0, 0]]])
    assert masked_average_pooling(features, mask, eps=1.0).item() == pytest.approx(1.0)  # 2 / 2
    assert masked_average_pooling(features, mask).item() == pytest.approx(2 / (1 + 1e-5))


def test_map_resize_mask_uses_align_corners_true():
    # 3x3 -> 2x2 with align_corners=True samples exactly the four corners of the mask.
    features = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    mask = torch.tensor([[[1, 0, 0], [0, 0, 0], [0, 0, 1]]])
    proto = masked_average_pooling(features, mask, "resize_mask", eps=0.0)
    assert proto.item() == pytest.approx((1 + 4) / 2)
    weights = mask_to_feature_size(mask, (2, 2))
    assert torch.equal(weights, torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]))


def test_map_upsample_features_by_hand():
    # Features [0, 4] upsampled 2 -> 4 columns.
    # align_corners=False (PANet, the default here): [0, 1, 3, 4]; True: [0, 4/3, 8/3, 4].
    features = torch.tensor([[[[0.0, 4.0]]]])
    mask = torch.tensor([[[1.0, 1.0, 0.0, 0.0]]])
    panet = masked_average_pooling(features, mask, "upsample_features", eps=0.0)
    assert panet.item() == pytest.approx((0 + 1) / 2)
    corners = masked_average_pooling(
        features, mask, "upsample_features", eps=0.0, align_corners=True
    )
    assert corners.item() == pytest.approx((0 + 4 / 3) / 2)


def test_map_both_modes_match_loop_at_equal_size():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(3, 5, 6, 7, generator=generator)
    mask = (torch.rand(3, 6, 7, generator=generator) > 0.5).long()
    expected = _map_loop(features, mask, eps=1e-5).float()
    for mode in ("resize_mask", "upsample_features"):
        proto = masked_average_pooling(features, mask, mode)
        torch.testing.assert_close(proto, expected)


def test_map_ignore_label_counts_as_zero():
    features = torch.tensor([[[[1.0, 100.0], [3.0, 5.0]]]])
    with_ignore = torch.tensor([[[1, 255], [1, 0]]])
    without = torch.tensor([[[1, 0], [1, 0]]])
    for mode in ("resize_mask", "upsample_features"):
        assert masked_average_pooling(features, with_ignore, mode, eps=0.0).item() == 2.0
        torch.testing.assert_close(
            masked_average_pooling(features, with_ignore, mode),
            masked_average_pooling(features, without, mode),
        )


def test_map_empty_mask_gives_zero_prototype_and_bool_masks_work():
    features = torch.randn(2, 4, 3, 3)
    mask = torch.zeros(2, 3, 3, dtype=torch.bool)
    assert torch.equal(masked_average_pooling(features, mask), torch.zeros(2, 4))


def test_map_rejects_bad_shapes_and_modes():
    with pytest.raises(ValueError, match="mask must be"):
        masked_average_pooling(torch.randn(2, 4, 3, 3), torch.ones(1, 3, 3))
    with pytest.raises(ValueError, match="features must be"):
        masked_average_pooling(torch.randn(4, 3, 3), torch.ones(1, 3, 3))
    with pytest.raises(ValueError, match="mode"):
        masked_average_pooling(torch.randn(1, 4, 3, 3), torch.ones(1, 3, 3), mode="bogus")


# ---------------------------------------------------------------------- cosine logits
def test_cosine_logits_by_hand():
    features = torch.tensor([[[[1.0]], [[0.0]]]])  # [1, C=2, 1, 1]: the vector (1, 0)
    prototypes = torch.tensor([[[1.0, 1.0], [0.0, -3.0], [0.0, 0.0]]])  # [1, P=3, 2]
    logits = cosine_logits(features, prototypes, scale=20.0)
    assert logits.shape == (1, 3, 1, 1)
    expected = torch.tensor([20 / 2**0.5, 0.0, 0.0])  # zero prototype: 0, not NaN
    torch.testing.assert_close(logits.flatten(), expected)


def test_cosine_logits_match_torch_cosine_similarity():
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(2, 8, 4, 5, generator=generator)
    features[0, :, 1, 2] = 0.0  # exercises the eps clamp
    prototypes = torch.randn(2, 3, 8, generator=generator)
    expected = torch.stack(
        [F.cosine_similarity(features, prototypes[:, p, :, None, None], dim=1) for p in range(3)],
        dim=1,
    )
    torch.testing.assert_close(cosine_logits(features, prototypes, 10.0), 10.0 * expected)


def test_cosine_logits_per_pixel_prototypes():
    generator = torch.Generator().manual_seed(2)
    features = torch.randn(2, 8, 4, 5, generator=generator)
    prototypes = torch.randn(2, 3, 8, 4, 5, generator=generator)
    expected = F.cosine_similarity(features[:, None], prototypes, dim=2)
    torch.testing.assert_close(cosine_logits(features, prototypes, 1.0), expected)


def test_zero_vectors_give_zero_cosines_and_finite_gradients():
    # the norms are sqrt(max(sum v^2, eps^2)): a zero feature or per-pixel prototype (a pixel
    # whose every attended feature is 0 after a ReLU) must not turn the gradients into NaN
    features = torch.randn(1, 4, 2, 3, requires_grad=True)
    prototypes = torch.randn(1, 2, 4, 2, 3)
    prototypes[0, 1, :, 1, 2] = 0.0
    prototypes.requires_grad_(True)
    zero_feature = features.detach().clone()
    zero_feature[0, :, 0, 0] = 0.0
    zero_feature.requires_grad_(True)
    logits = cosine_logits(features, prototypes, 5.0)
    assert logits[0, 1, 1, 2] == 0
    (logits.sum() + cosine_logits(zero_feature, prototypes, 5.0).sum()).backward()
    assert all(torch.isfinite(t.grad).all() for t in (features, prototypes, zero_feature))
    torch.testing.assert_close(clamped_norm(prototypes.detach(), dim=2), prototypes.detach().norm(dim=2).clamp_min(1e-8))
    tiny = torch.full((1, 3, 2), 1e-10)  # floor 0: the plain norm, even below 1e-8
    torch.testing.assert_close(clamped_norm(tiny, floor=0.0), tiny.norm(dim=1))


def test_weighted_cell_sum_is_the_weighted_sum_over_cells():
    values, weights = torch.randn(3, 5, 7), torch.rand(3, 7)
    torch.testing.assert_close(weighted_cell_sum(values, weights), (values * weights[:, None]).sum(-1))
    torch.testing.assert_close(weighted_cell_sum(values, weights > 0.5),
                               (values * (weights > 0.5)[:, None]).sum(-1))


def test_cosine_logits_accepts_tensor_scale_and_rejects_bad_shapes():
    scale = torch.tensor(3.0, requires_grad=True)
    cosine_logits(torch.randn(1, 4, 2, 2), torch.randn(1, 2, 4), scale).sum().backward()
    assert scale.grad is not None
    with pytest.raises(ValueError, match="prototypes must be"):
        cosine_logits(torch.randn(1, 4, 2, 2), torch.randn(1, 2, 5), 1.0)
    with pytest.raises(ValueError, match="prototypes must be"):
        cosine_logits(torch.randn(1, 4, 2, 2), torch.randn(1, 2, 4, 3, 3), 1.0)


# ---------------------------------------------------------------------- resizing and masks
@pytest.mark.parametrize("size", [(3, 5), (9, 4), (16, 12), (7, 7)])
@pytest.mark.parametrize("align_corners", [True, False])
def test_resize_by_matrices_is_bilinear_resizing(size, align_corners):
    x = torch.randn(2, 3, 7, 8)
    torch.testing.assert_close(resize_by_matrices(x, size, align_corners),
                               F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners))
    assert resize_by_matrices(x, (7, 8)) is x
    five_d = torch.randn(2, 2, 3, 7, 8)  # any leading dimensions
    torch.testing.assert_close(resize_by_matrices(five_d, size, align_corners),
                               resize_to(five_d.flatten(0, 1), size, "bilinear", align_corners).unflatten(0, (2, 2)))


def test_resize_nearest_keeps_labels_dtype_and_samples_pixel_centres():
    labels = torch.tensor([[[0, 1, 255, 1], [1, 0, 0, 255], [255, 1, 1, 0], [0, 0, 255, 1]]])
    small = resize_to(labels, (2, 2), "nearest")
    assert small.dtype == torch.long and small.shape == (1, 2, 2)
    assert torch.equal(small, labels[:, 1::2, 1::2])  # centres of 2x2 cells: rows/cols 1 and 3
    large = resize_to(labels, (8, 8), "nearest")
    assert torch.equal(large, labels.repeat_interleave(2, 1).repeat_interleave(2, 2))
    assert set(large.unique().tolist()) == {0, 1, 255}


def test_resize_bilinear_aligns_corners_and_skips_same_size():
    x = torch.tensor([[[[0.0, 3.0]]]])
    torch.testing.assert_close(resize_to(x, (1, 4)), torch.tensor([[[[0.0, 1.0, 2.0, 3.0]]]]))
    assert resize_to(x, (1, 2)) is x
    with pytest.raises(ValueError, match="nearest"):
        resize_to(torch.zeros(1, 1, 2, 2, dtype=torch.long), (4, 4))


def test_foreground_and_background_masks_leave_ignore_out():
    labels = torch.tensor([[0, 1, 255, 2]])
    assert torch.equal(foreground_mask(labels), torch.tensor([[0.0, 1.0, 0.0, 0.0]]))
    assert torch.equal(foreground_mask(labels, label=2), torch.tensor([[0.0, 0.0, 0.0, 1.0]]))
    assert torch.equal(background_mask(labels), torch.tensor([[1.0, 0.0, 0.0, 0.0]]))


def test_background_rules_differ_on_void_only():
    # 0 background, 1 the class, 255 void, 254 excluded (another way's class), 2 another way of a query map
    labels = torch.tensor([[0, 1, 255, 254, 2]])
    assert torch.equal(background_mask(labels), background_mask(labels, "labelled"))  # the default
    assert background_mask(labels, "labelled").tolist() == [[1.0, 0.0, 0.0, 0.0, 0.0]]
    assert background_mask(labels, "not_foreground").tolist() == [[1.0, 0.0, 1.0, 0.0, 0.0]]
    assert foreground_mask(labels).tolist() == [[0.0, 1.0, 0.0, 0.0, 0.0]]  # excluded is never foreground
    with pytest.raises(ValueError, match="background rule.*'void'"):
        background_mask(labels, "void")


def test_the_excluded_code_is_the_datas_and_can_be_ignored_by_a_loss():
    from fsslib.data import EXCLUDED as DATA_EXCLUDED
    from fsslib.data import IGNORE

    assert (EXCLUDED, IGNORE_INDEX) == (DATA_EXCLUDED, IGNORE) == (254, 255)
    labels = torch.tensor([[[0, 1, 254, 255]]])  # [B=1, H=1, W=4]
    assert excluded_as_ignore(labels).tolist() == [[[0, 1, 255, 255]]]
    logits = torch.randn(1, 2, 1, 4)
    with pytest.raises(IndexError, match="out of bounds"):  # 254 is no class of a two-channel output
        F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)
    expected = F.cross_entropy(logits[..., :2], labels[..., :2])
    torch.testing.assert_close(F.cross_entropy(logits, excluded_as_ignore(labels), ignore_index=IGNORE_INDEX), expected)


@pytest.mark.parametrize("mode", ["resize_mask", "upsample_features"])
def test_a_raw_label_map_pools_like_its_foreground_with_void_and_excluded_as_zero(mode):
    torch.manual_seed(0)
    features = torch.randn(2, 4, 3, 5)
    labels = torch.randint(0, 2, (2, 7, 9))
    labels[0, :2] = IGNORE_INDEX
    labels[1, :, :3] = EXCLUDED
    pooled = masked_average_pooling(features, labels, mode)
    torch.testing.assert_close(pooled, masked_average_pooling(features, labels == 1, mode), rtol=0, atol=0)
    assert torch.equal(mask_to_feature_size(labels, (3, 5)), mask_to_feature_size(labels == 1, (3, 5)))


@pytest.mark.parametrize("align_corners", [False, True])
def test_upsample_features_pooling_equals_explicit_upsampling(align_corners):
    """The transposed-interpolation shortcut gives PANet's prototype exactly (up to rounding)."""
    torch.manual_seed(0)
    features = torch.randn(3, 8, 13, 17, dtype=torch.float64)
    mask = (torch.rand(3, 101, 75) > 0.5).long()
    mask[0, :3] = 255
    upsampled = torch.nn.functional.interpolate(features, size=(101, 75), mode="bilinear",
                                                align_corners=align_corners)
    fg = (mask == 1).double()
    expected = torch.einsum("bchw,bhw->bc", upsampled, fg) / (fg.sum((1, 2))[:, None] + 1e-5)
    got = masked_average_pooling(features, mask == 1, "upsample_features", 1e-5, align_corners)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
