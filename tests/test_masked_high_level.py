"""layer4 of the masked supports runs on a crop around the object: the priors must not change."""
import pytest
import torch
from batches import episode_batch  # tests/batches.py

from fsslib.models import build_model, fast
from fsslib.models.backbones import build_backbone
from fsslib.models.ops import mask_to_feature_size
from fsslib.models.pfenet import masked_high_level

SIZE = 160  # small CNN: 20 x 20 layer3 / layer4 cells, receptive radius of layer4: 4


pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py


def _corner_batch(b=2, k=2):
    """Objects in the top-left quarter, of different sizes per support (the crop is their union)."""
    masks = torch.zeros(b, k, SIZE, SIZE, dtype=torch.long)
    masks[0, 0, 10:40, 12:30] = 1
    masks[-1, -1, 30:50, 5:45] = 1
    return episode_batch(masks, seed=3)


def _layer4_input_sizes(model):
    sizes = []
    first = model.backbone.stage_blocks("layer4")[0]
    handle = first.register_forward_pre_hook(lambda module, args: sizes.append(tuple(args[0].shape[-2:])))
    return sizes, handle


def test_receptive_radius_of_layer4():
    # ResNet-50 dilated layer4: 3x3 convs with dilation 2, 4, 4; VGG-16: pool4 (3x3, stride 1) and
    # three 3x3 convs with dilation 2; the small CNN: two 3x3 convs with dilation 2.
    expected = {"resnet50": 10, "vgg16": 7, "smallcnn": 4}
    for name, radius in expected.items():
        assert fast.receptive_radius(build_backbone(name, weights=None), "layer4") == radius
    assert fast.receptive_radius(build_backbone("resnet50", weights=None), "layer2") is None  # stride 2


@pytest.mark.parametrize("name, size", [("smallcnn", 20), ("vgg16", 16), ("resnet50", 16)])
def test_stage_in_box_equals_the_full_stage_on_the_box(name, size):
    torch.manual_seed(0)
    backbone = build_backbone(name, weights=None).eval()
    x = torch.randn(2, backbone.out_channels["layer3"], size, size)
    with torch.no_grad():
        full = backbone.run_stage("layer4", x)
        # inside, touching one border, touching two, a single cell, the whole grid
        for box in [((5, 9), (6, 12)), ((0, 4), (3, 10)), ((10, size), (0, size)), ((7, 8), (7, 8)),
                    ((0, size), (0, size))]:
            (top, bottom), (left, right) = box
            torch.testing.assert_close(fast.run_stage_in_box(backbone, "layer4", x, box),
                                       full[..., top:bottom, left:right])


def test_stage_in_box_runs_each_block_on_what_the_later_blocks_need():
    # ResNet-50 layer4: radii 2, 4, 4; a 4 x 6 box in the middle of a 40 x 40 grid
    backbone = build_backbone("resnet50", weights=None).eval()
    sizes = []
    for block in backbone.stage_blocks("layer4"):
        block.register_forward_pre_hook(lambda module, args: sizes.append(tuple(args[0].shape[-2:])))
    with torch.no_grad():
        out = fast.run_stage_in_box(backbone, "layer4", torch.randn(1, 1024, 40, 40), ((18, 22), (17, 23)))
    assert sizes == [(24, 26), (20, 22), (12, 14)] and out.shape[-2:] == (4, 6)
    assert fast.run_stage_in_box(build_backbone("resnet50", weights=None), "layer2", torch.randn(1, 256, 8, 8),
                                 ((0, 2), (0, 2))) is None  # strided


def test_crop_is_exact_where_the_mask_is_non_zero():
    torch.manual_seed(0)
    backbone = build_backbone("smallcnn", weights=None).eval()
    batch = _corner_batch()
    foreground = (batch["support_masks"] == 1).float().flatten(0, 1)
    layer3 = torch.randn(4, backbone.out_channels["layer3"], 20, 20)
    full = masked_high_level(backbone, layer3, foreground)
    cropped = fast.masked_high_level(backbone, layer3, foreground)
    weights = mask_to_feature_size(foreground, (20, 20)).unsqueeze(1)
    assert (weights > 0).any() and (weights == 0).any()
    torch.testing.assert_close(cropped * weights, full * weights)
    assert (cropped[..., 15:, 15:] == 0).all()  # far from every object: not computed
    empty = fast.masked_high_level(backbone, layer3, torch.zeros_like(foreground))
    assert empty.shape == full.shape and (empty == 0).all()


@pytest.mark.parametrize("method, options", [
    ("pfenet", {}),
    ("mspf", {}),
    ("mspf", {"support_resize": "area"}),
    ("mspf", {"support_resize": "bilinear", "bins": (0.5, 0.25, 0.125)}),
    ("mspf", {"support_resize": "area", "bins": (0.5, 0.25, 0.125)}),  # reads far cells: no crop
])
def test_priors_and_predictions_equal_the_uncropped_computation(method, options, monkeypatch):
    torch.manual_seed(0)
    model = build_model(method, width=16, **options).eval()
    batch = _corner_batch()
    sizes, handle = _layer4_input_sizes(model)
    with torch.no_grad():
        cropped = model(batch)
    handle.remove()
    monkeypatch.setattr(fast, "receptive_radius", lambda backbone, name: None)  # forces the whole map
    with torch.no_grad():
        full = model(batch)
    torch.testing.assert_close(cropped["logits"], full["logits"])
    key = "prior" if method == "pfenet" else "priors"
    torch.testing.assert_close(cropped[key], full[key])
    support_runs = sizes[1:]  # the first layer4 run is the query's, on the whole map
    assert support_runs
    crops = options.get("support_resize") != "area" or "bins" not in options
    assert all(size != (20, 20) for size in support_runs) == crops
