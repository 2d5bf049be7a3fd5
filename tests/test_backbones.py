"""Backbones: stage shapes, freezing, and weight loading (all offline, on tiny inputs)."""

import itertools
import math
import urllib.error

import pytest
import torch
import torchvision
from torch import nn

from fsslib.models import BACKBONE_NAMES, build_backbone

EXPECTED = {  # name: (input size, channels of layer1..layer4, strides of layer1..layer4)
    "vgg16": (65, (128, 256, 512, 512), (2, 4, 8, 8)),
    "resnet50": (65, (256, 512, 1024, 2048), (4, 8, 8, 8)),
    "resnet101": (65, (256, 512, 1024, 2048), (4, 8, 8, 8)),
    "smallcnn": (128, (32, 64, 128, 256), (2, 4, 8, 8)),
}
STAGES = ("layer1", "layer2", "layer3", "layer4")


pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py


@pytest.fixture(scope="module", params=BACKBONE_NAMES)
def built(request):
    """(name, backbone in eval mode, its features of one random image)."""
    torch.manual_seed(0)
    backbone = build_backbone(request.param).eval()
    size = EXPECTED[request.param][0]
    with torch.no_grad():
        features = backbone(torch.randn(1, 3, size, size))
    return request.param, backbone, features


def _bn_layers(module):
    return [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]


# ---------------------------------------------------------------------- geometry
def test_stage_shapes_match_channels_and_strides(built):
    name, backbone, features = built
    size, channels, strides = EXPECTED[name]
    assert backbone.stage_names == STAGES
    assert backbone.out_channels == dict(zip(STAGES, channels, strict=True))
    assert backbone.stride == dict(zip(STAGES, strides, strict=True))
    for stage, c, s in zip(STAGES, channels, strides, strict=True):
        side = math.ceil(size / s)
        assert features[stage].shape == (1, c, side, side), stage


def test_run_stage_equals_the_stage_inside_forward(built):
    _, backbone, features = built
    with torch.no_grad():
        for previous, stage in itertools.pairwise(STAGES):
            torch.testing.assert_close(
                backbone.run_stage(stage, features[previous]), features[stage]
            )


def test_upto_stops_early_and_rejects_unknown_stages():
    backbone = build_backbone("smallcnn")
    assert list(backbone(torch.randn(1, 3, 32, 32), upto="layer2")) == ["layer1", "layer2"]
    with pytest.raises(ValueError, match="layer5"):
        backbone(torch.randn(1, 3, 32, 32), upto="layer5")


@pytest.mark.parametrize("built", ["vgg16"], indirect=True)
def test_vgg16_is_panets_encoder(built):
    _, backbone, features = built
    conv5_3 = backbone.features[28]
    assert conv5_3.dilation == (2, 2) and conv5_3.padding == (2, 2)
    assert backbone.features[23].stride == 1
    assert len(backbone.features) == 29  # no ReLU after conv5_3, no pool5
    assert (features["layer4"] < 0).any()  # hence negative values survive
    # torchvision's parameter names (its convs sit at these indices of `features`).
    convs = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
    names = {f"features.{i}.{p}" for i in convs for p in ("weight", "bias")}
    assert set(backbone.state_dict()) == names


def test_smallcnn_has_about_a_million_parameters():
    count = sum(p.numel() for p in build_backbone("smallcnn").parameters())
    assert 0.8e6 <= count <= 1.3e6


# ---------------------------------------------------------------------- freezing
def test_freeze_all_keeps_bn_statistics_and_drops_gradients():
    backbone = build_backbone("smallcnn", frozen_stages="all", freeze_bn=True)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    model = nn.Sequential(backbone).train()  # .train() on a parent must not undo the freeze
    assert backbone.training and not any(bn.training for bn in _bn_layers(backbone))
    model(torch.randn(2, 3, 32, 32))
    after = backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(p.requires_grad for p in backbone.parameters())
    assert backbone.frozen_stages == STAGES


def test_freeze_some_stages_and_unfreeze_bn():
    backbone = build_backbone("smallcnn").freeze(["layer1"], freeze_bn=False).train()
    backbone(torch.randn(2, 3, 32, 32))["layer4"].sum().backward()
    assert all(p.grad is None for p in backbone.stage_parameters("layer1"))
    assert all(p.grad is not None for p in backbone.stage_parameters("layer2"))
    assert all(bn.training for bn in _bn_layers(backbone))  # statistics still update
    backbone.freeze("layer2", freeze_bn=True)
    assert backbone.frozen_stages == ("layer1", "layer2")
    assert not any(bn.training for bn in _bn_layers(backbone))
    backbone.freeze((), freeze_bn=False)
    assert all(bn.training for bn in _bn_layers(backbone))
    with pytest.raises(ValueError, match="unknown stage"):
        backbone.freeze(["conv1"])


# ---------------------------------------------------------------------- weights
def test_weights_path_roundtrip_and_prefixed_model_state(tmp_path):
    source = build_backbone("smallcnn")
    torch.save(source.state_dict(), tmp_path / "backbone.pth")
    model_state = {f"backbone.{k}": v for k, v in source.state_dict().items()}
    model_state["head.conv1.weight"] = torch.zeros(1)  # other parts of a model are skipped
    torch.save({"model": model_state, "step": 3}, tmp_path / "model.pth")
    for file in ("backbone.pth", "model.pth"):
        loaded = build_backbone("smallcnn", weights=tmp_path / file)
        for key, value in source.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), (file, key)


@pytest.fixture(scope="module")
def torchvision_resnet50_file(tmp_path_factory):
    """A full torchvision ResNet-50 checkpoint (classifier included) named like the official one."""
    directory = tmp_path_factory.mktemp("hub") / "checkpoints"
    directory.mkdir()
    path = directory / "resnet50-0676ba61.pth"
    torch.manual_seed(1)
    torch.save(torchvision.models.resnet50().state_dict(), path)
    return path


def test_weights_path_accepts_a_torchvision_classification_checkpoint(torchvision_resnet50_file):
    backbone = build_backbone("resnet50", weights=str(torchvision_resnet50_file))
    reference = torch.load(torchvision_resnet50_file, weights_only=True)
    torch.testing.assert_close(
        backbone.state_dict()["layer4.2.conv3.weight"], reference["layer4.2.conv3.weight"]
    )
    assert "fc.weight" not in backbone.state_dict()


def test_imagenet_weights_come_from_the_hub_cache(torchvision_resnet50_file, monkeypatch):
    hub_dir = torchvision_resnet50_file.parent.parent
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub_dir))
    backbone = build_backbone("resnet50", weights="imagenet")
    reference = torch.load(torchvision_resnet50_file, weights_only=True)
    torch.testing.assert_close(backbone.state_dict()["conv1.weight"], reference["conv1.weight"])


def test_imagenet_offline_error_names_file_and_cache(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(RuntimeError) as error:
        build_backbone("resnet50", weights="imagenet")
    message = str(error.value)
    assert "resnet50-0676ba61.pth" in message
    assert str(tmp_path / "checkpoints") in message
    assert "weights=" in message


def test_weights_errors_name_the_problem(tmp_path):
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(FileNotFoundError, match=r"nowhere\.pth"):
        build_backbone("smallcnn", weights=missing)

    state = build_backbone("smallcnn").state_dict()
    del state["layer4.1.0.weight"]
    state["layer5.weight"] = torch.zeros(1)
    state["layer1.0.0.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(ValueError) as error:
        build_backbone("smallcnn", weights=path)
    message = str(error.value)
    for expected in ("bad.pth", "layer4.1.0.weight", "layer5.weight", "layer1.0.0.weight"):
        assert expected in message


def test_bad_names_and_smallcnn_imagenet_raise_value_errors():
    with pytest.raises(ValueError, match="resnet50"):
        build_backbone("resnet18")
    with pytest.raises(ValueError, match="pre-training"):
        build_backbone("smallcnn", weights="imagenet")


@pytest.mark.parametrize("name", ["smallcnn", "resnet50"])
def test_remove_final_relu_keeps_weights_and_lets_features_go_negative(name):
    torch.manual_seed(0)
    backbone = build_backbone(name).eval()
    x = torch.randn(1, 3, 65, 65)
    with torch.no_grad():
        before = backbone(x, upto="layer3")["layer3"]
        keys = set(backbone.state_dict())
        backbone.remove_final_relu("layer3")
        after = backbone(x, upto="layer3")["layer3"]
    assert set(backbone.state_dict()) == keys
    assert before.min() >= 0 and after.min() < 0
    torch.testing.assert_close(after.clamp(min=0), before)  # exactly the ReLU, nothing else
