"""The optimisation family (not yet registered): fine-tuning and first-order MAML heads."""
import torch
import torch.nn.functional as F

from fsslib.models.finetune import FineTune, FineTuneConfig, gradient_steps, linear_logits, support_loss
from fsslib.models.fomaml import FOMAML, FOMAMLConfig, head_logits


def episode(shot=1, channels=4, size=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    masks = (torch.rand(1, shot, size * 2, size * 2, generator=g) < 0.4).long()
    masks[..., 0, 0] = 255  # a void pixel, ignored by the loss
    return (torch.randn(1, channels, size, size, generator=g), torch.randn(1, shot, channels, size, size, generator=g),
            masks)


def hand_gradient(w, b, x, y):
    """Gradient of the mean pixel cross-entropy of a linear 2-way classifier on upsampled logits,
    by the chain rule written out: dL/dz = (softmax - onehot) / N, then through the bilinear map."""
    z = torch.einsum("jc,kchw->kjhw", w, x) + b[None, :, None, None]
    z = z.detach().requires_grad_(True)  # only the upsampling is differentiated by autograd here
    up = F.interpolate(z, size=y.shape[-2:], mode="bilinear", align_corners=False)
    valid = y != 255
    p = up.softmax(dim=1)
    onehot = F.one_hot(y.clamp(max=1), 2).permute(0, 3, 1, 2).float()
    d_up = (p - onehot) * valid[:, None] / valid.sum()
    (d_z,) = torch.autograd.grad(up, z, d_up)  # the transpose of the bilinear map
    return torch.einsum("kjhw,kchw->jc", d_z, x), d_z.sum(dim=(0, 2, 3))


def test_gradient_steps_match_a_hand_computation_on_a_linear_head():
    _, support, masks = episode()
    x, y = support[0], masks[0]
    w, b = torch.randn(2, 4), torch.randn(2)
    iterates = gradient_steps({"weight": w, "bias": b}, lambda p: support_loss(linear_logits(p, x), y), 3, 0.5)
    for _ in range(3):
        gw, gb = hand_gradient(w, b, x, y)
        w, b = w - 0.5 * gw, b - 0.5 * gb
    torch.testing.assert_close(iterates[-1]["weight"], w)
    torch.testing.assert_close(iterates[-1]["bias"], b)


def test_finetune_adapts_and_lowers_the_support_loss():
    model = FineTune(FineTuneConfig(steps=20)).eval()
    query, support, masks = episode(channels=model.backbone.out_channels["layer4"])
    with torch.no_grad():  # evaluation adapts under no_grad too
        out = model.head({"layer4": query}, {"layer4": support}, masks, 1, (12, 12))
    before, after = out["support_loss"][0]
    assert after < before and out["logits"].shape == (1, 2, 12, 12)


def test_fomaml_inner_loop_moves_the_weights_and_the_outer_gradient_is_first_order():
    torch.manual_seed(0)
    model = FOMAML(FOMAMLConfig(width=0, inner_steps=2, inner_lr=0.5))
    channels = model.backbone.out_channels["layer4"]
    query, support, masks = episode(channels=channels)
    query_mask = (torch.rand(1, 12, 12) < 0.5).long()
    out = model.head({"layer4": query}, {"layer4": support}, masks, 1, (12, 12))
    F.cross_entropy(out["logits"], query_mask).backward()

    theta = {"weight": model.classifier.weight.detach()[:, :, 0, 0], "bias": model.classifier.bias.detach()}
    xs, xq = F.normalize(support[0], dim=1), F.normalize(query, dim=1)
    w, b = theta["weight"], theta["bias"]
    for _ in range(2):
        gw, gb = hand_gradient(w, b, xs, masks[0])
        w, b = w - 0.5 * gw, b - 0.5 * gb
    assert not torch.allclose(w, theta["weight"])  # the inner loop adapted the weights
    # First order: the meta-gradient is the query loss's gradient at the adapted weights.
    gw, gb = hand_gradient(w, b, xq, query_mask)
    torch.testing.assert_close(model.classifier.weight.grad[:, :, 0, 0], gw)
    torch.testing.assert_close(model.classifier.bias.grad, gb)


def test_anil_adapts_the_last_layer_only():
    model = FOMAML(FOMAMLConfig(width=8, anil=True))
    assert model.adapted_names() == ("classifier.weight", "classifier.bias")
    assert set(model.initialisation()) == {"hidden.weight", "hidden.bias", "classifier.weight", "classifier.bias"}
    params = {k: v.detach() for k, v in model.initialisation().items()}
    assert head_logits(params, torch.randn(2, model.backbone.out_channels["layer4"], 5, 5)).shape == (2, 2, 5, 5)
