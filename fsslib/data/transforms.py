"""Paired image/label transforms (torchvision.transforms.v2, labels as ``tv_tensors.Mask``).

A transform takes ``(image uint8 [H, W, 3] numpy, label uint8 [H, W] numpy)`` and returns
``(image float [3, S, S] normalised, label long [S, S])``. Labels keep dataset class ids, are
resized with nearest neighbour (v2 does this for ``Mask``), and every pixel that a geometric
transform invents (rotation corners, padding) is ``LABEL_IGNORE``, so no loss or metric sees it.

Both transforms resize to a square ``size x size`` first, as HSNet and PANet feed their networks
(PFENet instead pads to a square, SSP tests at the image's own size); evaluation on
original-resolution labels is the protocol's business (``query_mask_orig`` keeps the label).
"""
from __future__ import annotations

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from .sources import LABEL_IGNORE

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Invented image pixels are the mean colour, so they normalise to zero.
_FILL = {tv_tensors.Image: tuple(round(255 * m) for m in IMAGENET_MEAN), tv_tensors.Mask: LABEL_IGNORE}


class PairedTransform:
    """Wraps a v2 pipeline so that image and label always travel together."""

    def __init__(self, pipeline: v2.Transform):
        self.pipeline = pipeline

    def __call__(self, image: np.ndarray, label: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        img = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))
        mask = tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(label)))
        img, mask = self.pipeline(img, mask)
        return img.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor).long()

    def __repr__(self) -> str:
        return f"PairedTransform({self.pipeline})"


def _normalise() -> list[v2.Transform]:
    return [v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


def train_transform(size: int, scale: tuple[float, float] = (0.9, 1.1), rotation: float = 10.0,
                    hflip: bool = True) -> PairedTransform:
    """Resize to ``size``, random scale and rotation (PFENet's ranges), random horizontal flip."""
    steps: list[v2.Transform] = [v2.Resize((size, size), antialias=True)]
    if rotation or scale != (1.0, 1.0):
        steps.append(v2.RandomAffine(degrees=rotation, scale=scale, fill=_FILL))
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    return PairedTransform(v2.Compose(steps + _normalise()))


def eval_transform(size: int) -> PairedTransform:
    """Resize to ``size x size`` for the network; nothing random."""
    return PairedTransform(v2.Compose([v2.Resize((size, size), antialias=True)] + _normalise()))


def denormalise(image: torch.Tensor) -> np.ndarray:
    """Network input ``[3, H, W]`` back to a displayable ``float [H, W, 3]`` in 0..1."""
    mean = torch.tensor(IMAGENET_MEAN, device=image.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=image.device).view(3, 1, 1)
    return (image * std + mean).clamp(0, 1).permute(1, 2, 0).cpu().numpy()
