"""``timm:<model name>`` backbones: stage mapping, equality with timm's own outputs, weight loading.

Tiny timm test models with random weights only (no network): ``test_resnet`` (a ResNet whose
features-only network keeps the model's names), ``test_convnext`` (one timm flattens:
``stages.0`` -> ``stages_0``), ``test_vit`` (class token, depth 6) and ``test_vit2`` (a register
token, no class token, an ``fc_norm`` classifier, depth 8).
"""

import copy
import itertools
import math
import sys

import pytest
import torch
from torch import nn

from fsslib.models import build_backbone, build_model

timm = pytest.importorskip("timm")

STAGES = ("layer1", "layer2", "layer3", "layer4")
CNNS = ("test_resnet", "test_convnext")
VITS = ("test_vit", "test_vit2")
VIT_ARGS = {"dynamic_img_size": True, "dynamic_img_pad": True}

pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py


def _images(seed=0, size=(48, 40)):
    return torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(seed))


def _resized_to_patches(x, patch):
    """What the ViT backbone feeds timm: ``x`` resized up to multiples of the patch size."""
    size = [math.ceil(s / patch) * patch for s in x.shape[-2:]]
    return torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _vit_map(tokens, model, size):
    """timm's ``[B, prefix + h * w, C]`` tokens -> patch-token map ``[B, C, h, w]``."""
    h, w = (math.ceil(s / model.patch_embed.patch_size[0]) for s in size)
    return tokens[:, model.num_prefix_tokens :].unflatten(1, (h, w)).permute(0, 3, 1, 2)


# ---------------------------------------------------------------------- CNNs
@pytest.mark.parametrize("name", CNNS)
def test_cnn_stages_are_timms_last_four_levels_and_forward_equals_features_only(name):
    torch.manual_seed(0)
    backbone = build_backbone(f"timm:{name}").eval()
    reference = timm.create_model(name, features_only=True, output_stride=8).eval()
    info = reference.feature_info
    assert backbone.stage_names == STAGES
    assert list(backbone.out_channels.values()) == info.channels()[-4:]
    assert list(backbone.stride.values()) == info.reduction()[-4:]
    assert backbone.stride["layer4"] == 8
    # Same modules in the same order; timm's features-only names flatten "stages.0" to "stages_0".
    own, theirs = backbone.state_dict(), reference.state_dict()
    assert len(own) == len(theirs)
    for (key, value), their_key in zip(own.items(), theirs, strict=True):
        assert key.replace("_", ".") == their_key.replace("_", "."), (key, their_key)
        assert value.shape == theirs[their_key].shape, key
    reference.load_state_dict(dict(zip(theirs, own.values(), strict=True)))

    x = _images()
    with torch.no_grad():
        features = backbone(x)
        expected = reference(x)[-4:]
        for stage, want in zip(STAGES, expected, strict=True):
            torch.testing.assert_close(features[stage], want)
            side = [math.ceil(s / backbone.stride[stage]) for s in x.shape[-2:]]
            assert list(features[stage].shape) == [2, backbone.out_channels[stage], *side]
        y = x  # stage by stage
        for stage in STAGES:
            y = backbone.run_stage(stage, y)
            torch.testing.assert_close(y, features[stage])
    assert list(backbone(x, upto="layer2")) == ["layer1", "layer2"]


def test_cnn_without_output_stride_keeps_its_native_strides():
    backbone = build_backbone("timm:test_maxvit").eval()  # MaxViT refuses output_stride
    reference = timm.create_model("test_maxvit", features_only=True)
    assert list(backbone.stride.values()) == reference.feature_info.reduction()[-4:] == [4, 8, 16, 32]
    with torch.no_grad():
        features = backbone(torch.randn(1, 3, 160, 160))  # its windows need multiples of 32 * 5
    assert [f.shape[-1] for f in features.values()] == [40, 20, 10, 5]


# ---------------------------------------------------------------------- ViTs
@pytest.mark.parametrize("name", VITS)
def test_vit_stages_end_at_evenly_spaced_blocks_and_layer4_is_forward_features(name):
    torch.manual_seed(0)
    backbone = build_backbone(f"timm:{name}").eval()
    depth = len(backbone.blocks)
    ends = [k * depth // 4 - 1 for k in (1, 2, 3, 4)]
    assert [backbone.stage_blocks(s)[-1] for s in STAGES] == [backbone.blocks[i] for i in ends]
    assert sum(len(backbone.stage_blocks(s)) for s in STAGES) == depth
    patch = backbone.stride["layer1"]
    assert set(backbone.stride.values()) == {patch}

    reference = timm.create_model(name, num_classes=0, **VIT_ARGS).eval()
    missing, unexpected = reference.load_state_dict(backbone.state_dict(), strict=False)
    assert not unexpected and all(key.startswith("fc_norm.") for key in missing)  # the classifier's
    x = _images(size=(48, 40))  # 40 is not a multiple of 16: resized to 48 x 48 first
    timm_input = _resized_to_patches(x, patch)
    with torch.no_grad():
        features = backbone(x)
        for stage in STAGES:
            assert features[stage].shape == (2, backbone.out_channels[stage], 3, 3)
        torch.testing.assert_close(features["layer4"],
                                   _vit_map(reference.forward_features(timm_input), reference, x.shape[-2:]))
        # Every stage: the block's output after the final norm (timm's intermediates with norm=True).
        intermediates = reference.forward_intermediates(timm_input, indices=ends, norm=True, intermediates_only=True)
        for stage, want in zip(STAGES, intermediates, strict=True):
            torch.testing.assert_close(features[stage], want)
        # run_stage on a map (patch tokens only: close to, not equal to, forward's layer4).
        assert backbone.run_stage("layer4", features["layer3"]).shape == features["layer4"].shape
        torch.testing.assert_close(backbone.run_stage("layer1", x), features["layer1"])
    assert list(backbone(x, upto="layer2")) == ["layer1", "layer2"]


def test_vit_uses_the_backbones_parameters_after_copies_and_replacements():
    torch.manual_seed(0)
    backbone = build_backbone("timm:test_vit").eval()
    x = _images()
    with torch.no_grad():
        before = backbone(x)["layer4"]
        torch.testing.assert_close(copy.deepcopy(backbone)(x)["layer4"], before)
        torch.testing.assert_close(backbone.double()(x.double())["layer4"].float(), before)
        backbone.float()
        backbone.pos_embed = nn.Parameter(torch.zeros_like(backbone.pos_embed))
        assert not torch.allclose(backbone(x)["layer4"], before)


# ---------------------------------------------------------------------- weights
def test_load_weights_takes_timms_own_state_dict(tmp_path):
    torch.manual_seed(1)
    cnn = timm.create_model("test_resnet", output_stride=8).eval()  # fc included: dropped on load
    vit = timm.create_model("test_vit2", **VIT_ARGS).eval()  # head and fc_norm included
    x = _images()
    for name, model in (("test_resnet", cnn), ("test_vit2", vit)):
        path = tmp_path / f"{name}.pth"
        torch.save(model.state_dict(), path)
        torch.manual_seed(0)
        backbone = build_backbone(f"timm:{name}", weights=path).eval()
        assert set(backbone.state_dict()) < set(model.state_dict())
        dropped = set(model.state_dict()) - set(backbone.state_dict())
        assert all(key.startswith(backbone.head_prefixes) for key in dropped), dropped
        with torch.no_grad():
            want = model.forward_features(x if name == "test_resnet" else _resized_to_patches(x, 16))
            got = backbone(x)["layer4"]
        if name == "test_vit2":
            want = _vit_map(want, model, x.shape[-2:])
        torch.testing.assert_close(got, want)

    torch.save(timm.create_model("test_convnext").state_dict(), tmp_path / "convnext.pth")
    with pytest.raises(ValueError, match=r"convnext\.pth.*do not fit"):
        build_backbone("timm:test_resnet", weights=tmp_path / "convnext.pth")


# ---------------------------------------------------------------------- freezing, ReLU
@pytest.mark.parametrize("name", ["test_resnet", "test_vit2"])
def test_stages_partition_the_parameters_and_freeze(name):
    backbone = build_backbone(f"timm:{name}")
    per_stage = [{id(p) for p in backbone.stage_parameters(s)} for s in STAGES]
    assert sum(map(len, per_stage)) == len({id(p) for p in backbone.parameters()})
    assert all(not (a & b) for a, b in itertools.combinations(per_stage, 2))

    backbone.freeze("layer1", freeze_bn=True).train()
    backbone(_images())["layer4"].sum().backward()
    assert all(p.grad is None for p in backbone.stage_parameters("layer1"))
    assert all(p.grad is not None for p in backbone.stage_parameters("layer4"))
    assert not any(m.training for m in backbone.modules() if isinstance(m, nn.BatchNorm2d))
    frozen = build_backbone(f"timm:{name}", frozen_stages="all")
    assert not any(p.requires_grad for p in frozen.parameters()) and frozen.frozen_stages == STAGES
    assert not frozen.spatially_local  # fast.run_stage_in_box must not crop these stages


def test_remove_final_relu_on_timm_resnet_blocks_and_vits():
    torch.manual_seed(0)
    backbone = build_backbone("timm:test_resnet").eval()  # layer3 ends in a Bottleneck, layer4 a BasicBlock
    x = _images()
    with torch.no_grad():
        before = backbone(x)
        keys = set(backbone.state_dict())
        backbone.remove_final_relu("layer3").remove_final_relu("layer4")
        after = backbone(x)
    assert set(backbone.state_dict()) == keys
    assert after["layer3"].min() < 0 <= before["layer3"].min()
    torch.testing.assert_close(after["layer3"].clamp(min=0), before["layer3"])
    assert after["layer4"].min() < 0 <= before["layer4"].min()
    vit = build_backbone("timm:test_vit")
    assert vit.remove_final_relu("layer3") is vit  # ends in a LayerNorm: nothing to remove


# ---------------------------------------------------------------------- errors
def test_unknown_unsupported_and_offline_names_raise_clear_errors(monkeypatch):
    with pytest.raises(ValueError, match=r"resnet_nope.*timm\.list_models\('\*resnet\*'\)"):
        build_backbone("timm:resnet_nope")
    with pytest.raises(ValueError, match="timm:<model name>"):
        build_backbone("resnet18")
    with pytest.raises(ValueError, match="'timm:' backbones"):
        build_backbone("smallcnn", weights="pretrained")
    with pytest.raises(ValueError, match="test_efficientnet.*not supported"):
        build_backbone("timm:test_efficientnet")  # timm's own EfficientNetFeatures wrapper
    with pytest.raises(ValueError, match="no pretrained weights"):
        build_backbone("timm:test_vit4", weights="pretrained")

    real = timm.create_model

    def offline(name, pretrained=False, **kwargs):
        if pretrained:
            raise OSError("no network")
        return real(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", offline)
    for weights in ("pretrained", "imagenet"):
        with pytest.raises(RuntimeError, match=r"pretrained weights of 'test_resnet'.*no network.*weights="):
            build_backbone("timm:test_resnet", weights=weights)

    monkeypatch.setitem(sys.modules, "timm", None)  # as if timm were not installed
    with pytest.raises(ImportError, match="pip install timm"):
        build_backbone("timm:test_resnet")


# ---------------------------------------------------------------------- in a method
@pytest.mark.parametrize("name", ["test_resnet", "test_vit2"])
def test_protonet_runs_on_a_timm_backbone(name):
    torch.manual_seed(0)
    model = build_model("protonet", backbone=f"timm:{name}")
    g = torch.Generator().manual_seed(0)
    masks = torch.zeros(2, 1, 48, 48, dtype=torch.long)
    masks[..., 12:36, 12:36] = 1
    batch = {"query_img": torch.randn(2, 3, 48, 48, generator=g),
             "support_imgs": torch.randn(2, 1, 3, 48, 48, generator=g),
             "support_masks": masks, "query_mask": masks[:, 0]}
    logits = model(batch)["logits"]
    assert logits.shape == (2, 2, 48, 48) and torch.isfinite(logits).all()
