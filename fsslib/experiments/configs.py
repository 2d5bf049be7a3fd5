"""Named experiments: a method and its training recipe, as TrainConfig factories.

Ablations are config variants (``key=value`` overrides), never code edits. On the synthetic
benchmark every method starts from the fold's pre-trained small backbone (see
``engine.pretrain``) with its early stages and BatchNorm frozen and the last stage trainable.
"""
from __future__ import annotations

from ..engine.pretrain import pretrained_backbone
from ..engine.trainer import TrainConfig
from ..runtime import fast_mode

#: Early stages frozen, BatchNorm frozen, last stage trainable (shared by every synthetic recipe).
SYNTHETIC_BACKBONE = {"backbone": "smallcnn", "frozen_stages": ("layer1", "layer2", "layer3"), "freeze_bn": True}
#: Where a method departs from that: SSP matches layer3 features and, like the authors' recipe,
#: trains layer2-layer3 with layer1 frozen; the prior-mask methods keep the whole backbone frozen
#: (their prior needs no training and their heads learn on top).
METHOD_BACKBONE = {"ssp": {"frozen_stages": ("layer1",)}, "pfenet": {"frozen_stages": "all"},
                   "mspf": {"frozen_stages": "all"}, "msdnet": {"frozen_stages": "all"}}
#: Training overrides per method. A backbone frozen entirely maps an image to the same features in
#: every episode, so the prior-mask methods train their heads on features computed once per image
#: (engine.feature_cache): 2-3x fewer seconds per step. The price is no image augmentation (a
#: cached feature map cannot be flipped or cropped consistently with its mask). MSDNet's decoder
#: convolutions at strides 4 and 2 are 1.6x faster in channels-last format on this CPU.
METHOD_TRAINING = {"pfenet": {"cache_features": True, "augment": False},
                   "mspf": {"cache_features": True, "augment": False},
                   "msdnet": {"cache_features": True, "augment": False, "channels_last": True}}


def synthetic_recipe(model: str, fold: int = 0, seed: int = 0, pretrain_seed: int = 0, progress: bool = True,
                     **model_args) -> TrainConfig:
    """AdamW 5e-4 with a cosine schedule, 1000 steps x 8 one-shot episodes, from the pre-trained backbone."""
    weights = pretrained_backbone(fold, pretrain_seed, progress=progress)
    steps, batch = (6, 2) if fast_mode() else (1000, 8)
    model_args = {**SYNTHETIC_BACKBONE, **METHOD_BACKBONE.get(model, {}), "weights": str(weights), **model_args}
    return TrainConfig(model=model, model_args=model_args,
                       benchmark="synthetic", fold=fold, seed=seed, steps=steps, batch_size=batch, lr=5e-4,
                       schedule="cosine", checkpoint_every=max(steps // 5, 1), log_every=max(steps // 50, 1),
                       **METHOD_TRAINING.get(model, {}))


#: Methods with a synthetic-benchmark recipe (``python -m fsslib train NAME``).
EXPERIMENTS = ("protonet", "panet", "ssp", "pfenet", "mspf", "msdnet")


def experiment(name: str, **kwargs) -> TrainConfig:
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment '{name}'; valid names: {list(EXPERIMENTS)} (or a path to a config.json)")
    return synthetic_recipe(name, **kwargs)
