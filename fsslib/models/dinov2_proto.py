"""A training-free foundation-model baseline: ProtoNet's matching on DINOv2 patch features.

Masked average pooling and cosine matching (:mod:`fsslib.models.protonet`, from Wang et al.,
"PANet: Few-Shot Image Semantic Segmentation with Prototype Alignment", ICCV 2019) on the patch
tokens of a self-supervised ViT-S/14 (Oquab et al., "DINOv2: Learning Robust Visual Features
without Supervision", TMLR 2024), with no episodic training at all: what a 2024 feature extractor
gives the 2019 prototype baseline. The equations are ProtoNet's, on ``F = layer4``: the last
block's patch tokens after the ViT's final LayerNorm, reshaped to ``[B, 384, ceil(H/14), ceil(W/14)]``
(:mod:`fsslib.models.backbones`, timm backbones).

Open choices:

1. Features: the last block only (the class and register tokens unused); the earlier blocks are
   the timm backbone's ``layer1..layer3``.
2. ProtoNet's constants: cosine x 20, features upsampled to the mask size before pooling, the
   support background every pixel that is not the class (PANet's code).
3. Input: the protocol's size (473 on PASCAL-5i), padded up to a multiple of the 14-pixel
   patch; position embeddings interpolated to the grid (timm's dynamic image size).
4. Weights: timm's ``vit_small_patch14_dinov2.lvd142m`` (``weights="pretrained"``: timm's cache,
   or a download where there is a network), or the path of a local copy of its state dict.

A row of the real-data main tables only: on the synthetic benchmark there are no DINOv2 weights to
speak of (the tests run the same code with random weights).
"""
from __future__ import annotations

from dataclasses import dataclass

from .protonet import ProtoNet, ProtoNetConfig
from .record import MethodRecord

DINOV2_VIT_S14 = "timm:vit_small_patch14_dinov2.lvd142m"


@dataclass
class DINOv2ProtoConfig(ProtoNetConfig):
    backbone: str = DINOV2_VIT_S14
    weights: str | None = "pretrained"
    frozen_stages: tuple[str, ...] | str = "all"
    freeze_bn: bool = True


class DINOv2Proto(ProtoNet):
    config_class = DINOv2ProtoConfig


# ---------------------------------------------------------------------- record
#: Nothing is trained: the recipe is the test input size. The config's defaults hold the weights.
REAL_DATA_RECIPE = {benchmark: {"model_args": {}, "steps": 0, "image_size": 473} for benchmark in ("pascal", "coco")}

RECORD = MethodRecord(
    name="dinov2-proto", display_name="DINOv2-proto", model_class=DINOv2Proto,
    paper="Oquab et al., DINOv2: Learning Robust Visual Features without Supervision, TMLR 2024 (features), with "
          "ProtoNet's matching (Wang et al., PANet, ICCV 2019)",
    family="metric", episodic_training=False,
    # Random weights on the synthetic benchmark (tests and doctor only: the row is not in its tables).
    synthetic_model_args={"backbone": DINOV2_VIT_S14, "weights": None, "frozen_stages": "all"},
    real_data_recipe=REAL_DATA_RECIPE,
    main_row="DINOv2-proto (training-free ViT-S/14)", main_row_benchmarks=("pascal5i", "coco20i"),
    job_cost=1,
)
