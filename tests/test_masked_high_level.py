"""layer4 of the masked supports runs on a crop around the object: the priors must not change."""
import pytest
import torch

from fsslib.models import build_model
from fsslib.models.backbones import build_backbone
from fsslib.models.pfenet import masked_high_level
from fsslib.models.ops import mask_to_feature_size

from batches import episode_batch  # tests/batches.py

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
    first = model.backbone.stage_modules("layer4")[0]
    handle = first.register_forward_pre_hook(lambda module, args: sizes.append(tuple(args[0].shape[-2:])))
    return sizes, handle


def test_receptive_radius_of_layer4():
    # ResNet-50 dilated layer4: 3x3 convs with dilation 2, 4, 4; VGG-16: pool4 (3x3, stride 1) and
    # three 3x3 convs with dilation 2; the small CNN: two 3x3 convs with dilation 2.
    expected = {"resnet50": 10, "vgg16": 7, "smallcnn": 4}
    for name, radius in expected.items():
        assert build_backbone(name, weights=None).receptive_radius("layer4") == radius
    assert build_backbone("resnet50", weights=None).receptive_radius("layer2") is None  # stride 2


def test_crop_is_exact_where_the_mask_is_non_zero():
    torch.manual_seed(0)
    backbone = build_backbone("smallcnn", weights=None).eval()
    batch = _corner_batch()
    foreground = (batch["support_masks"] == 1).float().flatten(0, 1)
    layer3 = torch.randn(4, backbone.out_channels["layer3"], 20, 20)
    full = masked_high_level(backbone, layer3, foreground, crop_to_object=False)
    cropped = masked_high_level(backbone, layer3, foreground)
    weights = mask_to_feature_size(foreground, (20, 20)).unsqueeze(1)
    assert (weights > 0).any() and (weights == 0).any()
    torch.testing.assert_close(cropped * weights, full * weights)
    assert (cropped[..., 15:, 15:] == 0).all()  # far from every object: not computed
    empty = masked_high_level(backbone, layer3, torch.zeros_like(foreground))
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
    monkeypatch.setattr(model.backbone, "receptive_radius", lambda name: None)  # forces the whole map
    with torch.no_grad():
        full = model(batch)
    torch.testing.assert_close(cropped["logits"], full["logits"])
    key = "prior" if method == "pfenet" else "priors"
    torch.testing.assert_close(cropped[key], full[key])
    support_runs = sizes[1:]  # the first layer4 run is the query's, on the whole map
    assert support_runs
    crops = options.get("support_resize") != "area" or "bins" not in options
    assert all(size != (20, 20) for size in support_runs) == crops
