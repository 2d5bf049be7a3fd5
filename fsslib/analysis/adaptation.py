"""The optimisation family's inner loop, step by step (notebook 10).

``finetune`` and ``fomaml`` adapt to each episode by gradient steps on its support
(:meth:`adapt` returns every iterate); :func:`inner_loop_trace` scores each iterate on the
support (the loss the steps lower) and on the query (the IoU they never see).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import pandas as pd
import torch
from torch import Tensor

from ..engine import episode_iou
from ..models.ops import resize_to


@dataclass
class InnerLoopTrace:
    #: ``[episode, step]``: the support cross-entropy ``L_S`` of each iterate (step 0 = the start).
    support_loss: pd.DataFrame
    #: ``[episode, step]``: the query IoU (percent) of each iterate's prediction.
    query_iou: pd.DataFrame
    #: Per episode, the hard query predictions of every iterate, ``long [steps + 1, H, W]`` on the CPU.
    predictions: list[Tensor]


@torch.no_grad()
def inner_loop_trace(model, batch: dict, steps: int) -> InnerLoopTrace:
    """Run ``model``'s inner loop for ``steps`` steps on every (1-way) episode of ``batch``, whatever
    its own step count, and score every iterate. ``model``: a method with ``adapt``, ``score`` and
    ``episode_loss`` (the optimisation family), on the batch's device."""
    stage = model.config.feature_stage
    query, support = model.episode_features(batch)
    size = tuple(batch["query_mask"].shape[-2:])
    losses, ious, predictions = [], [], []
    for e in range(batch["query_mask"].shape[0]):
        masks = batch["support_masks"][e]
        iterates = model.adapt(support[stage][e], masks, steps=steps)
        losses.append([float(model.episode_loss(p, support[stage][e], masks)) for p in iterates])
        logits = torch.cat([model.score(p, query[stage][e:e + 1]) for p in iterates])
        predicted = resize_to(logits, size, "bilinear", align_corners=False).argmax(1).cpu()
        target = batch["query_mask"][e].cpu().expand_as(predicted)
        ious.append(episode_iou(predicted, target).tolist())
        predictions.append(predicted)
    return InnerLoopTrace(pd.DataFrame(losses), pd.DataFrame(ious), predictions)


def with_random_start(model, seed: int = 0):
    """A copy of a FO-MAML model whose head (its ``theta``) is freshly initialised, the backbone
    unchanged: what the inner loop achieves from a start that was not meta-learned."""
    device = next(model.parameters()).device
    fresh = copy.deepcopy(model).cpu()  # drawn on the CPU: the same start on every device
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name, module in fresh.named_modules():
            owns_theta = any(f"{name}.{p}" in fresh.initialisation() for p, _ in module.named_parameters(recurse=False))
            if name and owns_theta:
                module.reset_parameters()
    return fresh.to(device)
