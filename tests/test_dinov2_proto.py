"""The training-free DINOv2 prototype row: ProtoNet's matching on ViT-S/14 patch features.

No network here: every test builds the model with random weights (``weights=None``).
"""
import pytest
import torch

from fsslib.engine.protocol import EvalProtocol, evaluate
from fsslib.engine.statistics import per_seed
from fsslib.experiments.ablation import Variant, train_config
from fsslib.experiments.configs import real_data_recipe
from fsslib.experiments.tables import tables
from fsslib.models import build_model
from fsslib.models.dinov2_proto import DINOV2_VIT_S14, RECORD
from fsslib.models.ops import resize_to
from fsslib.models.protonet import episode_prototypes, prototype_logits

pytest.importorskip("timm")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(RECORD.name, weights=None).eval()


def test_it_is_protonet_on_the_last_block_of_a_vit_s14_with_nothing_to_train(model):
    assert model.config.backbone == DINOV2_VIT_S14 and model.learnable_parameters() == 0
    assert model.backbone.out_channels["layer4"] == 384 and model.backbone.stride["layer4"] == 14
    assert not RECORD.episodic_training


def test_its_logits_are_prototype_matching_on_the_patch_features(model):
    g = torch.Generator().manual_seed(1)
    masks = torch.zeros(2, 1, 70, 70, dtype=torch.long)
    masks[..., 14:56, 20:50] = 1
    batch = {"query_img": torch.randn(2, 3, 70, 70, generator=g), "support_imgs": torch.randn(2, 1, 3, 70, 70, generator=g),
             "support_masks": masks}
    with torch.inference_mode():
        out = model(batch)
        features = model.backbone(torch.cat([batch["query_img"], batch["support_imgs"][:, 0]]))["layer4"]
    assert features.shape == (4, 384, 5, 5)  # 70 pixels = 5 patches of 14
    prototypes = episode_prototypes(features[2:, None], masks, 1, "upsample_features", 1e-5)
    expected = resize_to(prototype_logits(features[:2], prototypes, 20.0), (70, 70), "bilinear", align_corners=False)
    torch.testing.assert_close(out["logits"], expected)


def test_the_row_runs_through_the_evaluator_on_random_weights(model, synthetic_source):
    rows = evaluate(model, synthetic_source, 0, EvalProtocol(episodes=4, seeds=(0,), shots=(1,), image_size=56),
                    method=RECORD.name)
    assert per_seed(rows)["miou"].between(0, 100).all()


def test_the_row_is_in_the_real_data_main_tables_only():
    def main_models(benchmark):
        return {v.model for t in tables(benchmark) if t.key == "main" for v in t.variants}

    assert RECORD.name in main_models("pascal5i") and RECORD.name in main_models("coco20i")
    assert RECORD.name not in main_models("synthetic")


def test_its_real_data_run_has_no_steps(monkeypatch):
    monkeypatch.setenv("FSSLIB_FAST", "1")  # no dataset needed for a recipe without epochs
    assert real_data_recipe(RECORD.name, "pascal5i").steps == 0
    assert train_config(Variant("row", RECORD.name), 0, 0, recipe_args={"steps": 5}, benchmark="coco20i").steps == 0
