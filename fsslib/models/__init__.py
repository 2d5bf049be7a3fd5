"""Few-shot segmentation models: backbones, shared tensor operations and the methods."""

from fsslib.models.backbones import BACKBONE_NAMES, Backbone, build_backbone
from fsslib.models.base import FewShotSegmenter, ModelConfig
from fsslib.models.ops import (
    EXCLUDED,
    IGNORE_INDEX,
    background_mask,
    cosine_logits,
    foreground_mask,
    mask_to_feature_size,
    masked_average_pooling,
    resize_to,
)
from fsslib.models.protonet import ProtoNet, ProtoNetConfig
from fsslib.models.registry import METHODS, build_model, config_fields

__all__ = [
    "BACKBONE_NAMES",
    "METHODS",
    "FewShotSegmenter",
    "ModelConfig",
    "ProtoNet",
    "ProtoNetConfig",
    "build_model",
    "config_fields",
    "EXCLUDED",
    "IGNORE_INDEX",
    "Backbone",
    "background_mask",
    "build_backbone",
    "cosine_logits",
    "foreground_mask",
    "mask_to_feature_size",
    "masked_average_pooling",
    "resize_to",
]
