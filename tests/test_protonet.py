import pytest
import torch
import torch.nn.functional as F

from fsslib.models import build_model
from fsslib.models.protonet import episode_prototypes


def test_prototypes_and_logits_match_a_hand_computation():
    # One episode, one support: 2-D features on a 2x2 grid, mask at feature resolution.
    support = torch.tensor([[[1.0, 3.0], [0.0, 0.0]], [[0.0, 1.0], [2.0, 2.0]]])  # [C=2, h, w]
    mask = torch.tensor([[1, 1], [0, 255]])
    prototypes = episode_prototypes(support[None, None], mask[None, None], way=1, pooling="upsample_features", eps=0,
                                    background="labelled")
    fg = torch.tensor([(1 + 3) / 2, (0 + 1) / 2])  # mean of the two foreground vectors
    bg = torch.tensor([0.0, 2.0])  # the single background vector; 255 is in neither under "labelled"
    torch.testing.assert_close(prototypes[0], torch.stack([bg, fg]))

    model = build_model("protonet", feature_stage="layer4", background="labelled")
    query = torch.tensor([[[1.0]], [[0.0]]])  # one query pixel with feature (1, 0)
    out = model.head({"layer4": query[None]}, {"layer4": support[None, None]}, mask[None, None], 1, (1, 1))
    expected = 20 * torch.stack([F.cosine_similarity(query[:, 0, 0], p, dim=0) for p in (bg, fg)])
    torch.testing.assert_close(out["logits"][0, :, 0, 0], expected, atol=1e-4, rtol=1e-4)


def test_k_shot_averages_per_shot_prototypes_and_n_way_has_one_channel_per_way():
    torch.manual_seed(0)
    feats = torch.randn(2, 6, 8, 5, 5)  # B=2, N*K = 3 ways x 2 shots
    masks = torch.randint(0, 2, (2, 6, 5, 5))
    prototypes = episode_prototypes(feats, masks, way=3, pooling="resize_mask", eps=1e-5)
    assert prototypes.shape == (2, 4, 8)
    from fsslib.models.ops import masked_average_pooling
    shot_protos = [masked_average_pooling(feats[:, k], masks[:, k] == 1, "resize_mask", 1e-5) for k in (2, 3)]
    torch.testing.assert_close(prototypes[:, 2], (shot_protos[0] + shot_protos[1]) / 2)

    model = build_model("protonet", feature_stage="layer3")
    batch = {"query_img": torch.randn(2, 3, 64, 64), "support_imgs": torch.randn(2, 6, 3, 64, 64),
             "support_masks": torch.randint(0, 2, (2, 6, 64, 64)), "support_classes": torch.ones(2, 3, dtype=torch.long)}
    assert model(batch)["logits"].shape == (2, 4, 64, 64)


def test_build_model_rejects_unknown_names_and_keys():
    with pytest.raises(ValueError, match="unknown model 'protonett'.*protonet"):
        build_model("protonett")
    with pytest.raises(ValueError, match="unknown config key.*'scal'.*valid keys"):
        build_model("protonet", scal=10)


def test_the_default_background_includes_void_pixels():
    # As above but the void pixel holds (4, 0): the authors' rule averages it into the background.
    support = torch.tensor([[[1.0, 3.0], [0.0, 4.0]], [[0.0, 1.0], [2.0, 0.0]]])  # [C=2, h, w]
    mask = torch.tensor([[1, 1], [0, 255]])
    default = episode_prototypes(support[None, None], mask[None, None], way=1, pooling="upsample_features", eps=0)
    labelled = episode_prototypes(support[None, None], mask[None, None], way=1, pooling="upsample_features", eps=0,
                                  background="labelled")
    torch.testing.assert_close(default[0, 0], torch.tensor([(0 + 4) / 2, (2 + 0) / 2]))
    torch.testing.assert_close(labelled[0, 0], torch.tensor([0.0, 2.0]))
    torch.testing.assert_close(default[0, 1], labelled[0, 1])
    query = torch.tensor([[[1.0]], [[0.0]]])
    out = build_model("protonet").head({"layer4": query[None]}, {"layer4": support[None, None]}, mask[None, None], 1,
                                      (1, 1))
    torch.testing.assert_close(out["prototypes"], default)
