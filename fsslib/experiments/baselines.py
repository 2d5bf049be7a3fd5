"""The reference table: the trained prototype baseline against what it must beat.

Rows, all on one protocol (identical episodes):

- ``all-foreground``: every pixel labelled foreground (the metric's floor for a lazy model);
- ``protonet, random backbone``: no training at all;
- ``protonet, pre-trained backbone``: the fold's pre-trained backbone without episodic training
  (the synthetic analogue of PANet's "PANet-init": ImageNet weights, no episodic training);
- ``protonet, episodic training``: the trained baseline (``experiments.configs``).
"""
from __future__ import annotations

import pandas as pd
import torch
from torch import nn

from ..data import build_source
from ..engine.episodic import train_fewshot
from ..engine.pretrain import pretrained_backbone
from ..engine.protocol import EvalProtocol, evaluate
from ..models import build_model
from ..models.registry import REFERENCE_METHOD
from .configs import SYNTHETIC_BACKBONE, experiment


class AllForeground(nn.Module):
    """Reference predictor that labels every pixel foreground (no features needed)."""

    feature_stages: tuple[str, ...] = ()

    def head(self, query_feats, support_feats, support_masks, way, out_size):
        logits = torch.zeros(support_masks.shape[0], 1 + way, *out_size, device=support_masks.device)
        logits[:, 1] = 1.0
        return {"logits": logits}

def baseline_rows(fold: int = 0, seed: int = 0, protocol: EvalProtocol = EvalProtocol(), progress: bool = True,
                  device=None, trained=None) -> pd.DataFrame:
    """The four rows on ``protocol``. ``trained``: the episodically trained ProtoNet to score (a
    notebook's shorter run); None trains (or loads) the standard recipe's run of ``(fold, seed)``."""
    source = build_source("synthetic")
    if trained is None:
        trained = train_fewshot(experiment(REFERENCE_METHOD, fold=fold, seed=seed), progress=progress, source=source)
    torch.manual_seed(seed)
    untrained = build_model(REFERENCE_METHOD, backbone="smallcnn")
    weights = pretrained_backbone(fold)
    pretrained = build_model(REFERENCE_METHOD, **{**SYNTHETIC_BACKBONE, "weights": str(weights)})
    candidates = {"all-foreground": AllForeground(), "protonet, random backbone": untrained,
                  "protonet, pre-trained backbone": pretrained, "protonet, episodic training": trained}
    return pd.concat([evaluate(model, source, fold, protocol, method=name, device=device, progress=progress)
                      for name, model in candidates.items()], ignore_index=True)
