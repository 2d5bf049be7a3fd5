"""Backbone pre-training on a fold's base classes: the synthetic benchmark's stand-in for ImageNet.

Real-data methods start from ImageNet weights. The synthetic benchmark has none, so each fold
gets a backbone trained by plain supervised segmentation of its 15 base classes (+ background),
never seeing a novel class. One run per (fold, seed) is saved and reused by every method, so
methods are compared on one footing, like papers that all start from the same ImageNet ResNet.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ..data import DEFAULT_SIZES, EpisodePool, base_classes, build_source, eval_transform, train_transform
from ..data.sources import LABEL_IGNORE
from ..models.backbones import build_backbone
from ..models.ops import IGNORE_INDEX
from ..runtime import fast_mode, mode_suffix
from .trainer import RunLock, TrainConfig, Trainer, runs_dir


def pretrain_config(fold: int = 0, seed: int = 0, benchmark: str = "synthetic", backbone: str = "smallcnn",
                    **overrides) -> TrainConfig:
    """AdamW 2e-3 with a cosine schedule, 900 steps x 16 images (about 5 CPU minutes per fold)."""
    values = dict(task="pretrain", model="segmentation", model_args={"backbone": backbone}, benchmark=benchmark,
                  fold=fold, seed=seed, steps=900, batch_size=16, lr=2e-3, weight_decay=1e-4,
                  schedule="cosine", checkpoint_every=100, log_every=20)
    if fast_mode():
        values.update(steps=12, batch_size=4, log_every=4, checkpoint_every=6)
    values.update(overrides)
    return TrainConfig(**values)


class BaseClassSegmentation(Dataset):
    """Item ``i``: a training image of the fold (drawn from ``(seed, i)``) and its base-class labels.

    Base class ``c`` becomes ``1 + base.index(c)``; background and novel classes are 0; ignore 255.
    """

    def __init__(self, source, fold: int, transform, length: int, seed: int = 0, convention: str | None = None):
        pool = EpisodePool.for_fold(source, fold, "train", convention)
        self.source, self.transform, self.length, self.seed = source, transform, length, seed
        self.stems = sorted({s for stems in pool.queries.values() for s in stems})
        self.lookup = np.zeros(source.num_classes + 1, dtype=np.int64)
        for i, c in enumerate(base_classes(source.benchmark, fold, convention)):
            self.lookup[c] = i + 1
        self.num_classes = 1 + len(base_classes(source.benchmark, fold, convention))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, index])
        image, label = self.source.load(self.stems[rng.integers(len(self.stems))])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(rng.integers(2**62)))
            img, lab = self.transform(image, label)
        target = torch.from_numpy(self.lookup)[lab.clamp(min=0)]
        target[lab == LABEL_IGNORE] = IGNORE_INDEX
        return {"image": img, "label": target}


class BackboneClassifier(nn.Module):
    """Backbone + 1x1 classifier on its last stage, trained by per-pixel cross-entropy."""

    def __init__(self, backbone: str, num_classes: int):
        super().__init__()
        self.backbone = build_backbone(backbone)
        self.classifier = nn.Conv2d(self.backbone.out_channels[self.backbone.stage_names[-1]], num_classes, 1)

    def forward(self, batch: dict) -> dict:
        features = self.backbone(batch["image"])[self.backbone.stage_names[-1]]
        logits = F.interpolate(self.classifier(features), size=batch["image"].shape[-2:], mode="bilinear",
                               align_corners=True)
        return {"logits": logits}

    def loss(self, output: dict, batch: dict):
        ce = F.cross_entropy(output["logits"], batch["label"], ignore_index=IGNORE_INDEX)
        return ce, {"ce": ce.item()}


def pretrain_run_dir(config: TrainConfig) -> Path:
    backbone = config.model_args.get("backbone", "smallcnn")
    return runs_dir() / f"pretrain-{config.benchmark}-{backbone}-fold{config.fold}-seed{config.seed}{mode_suffix()}"


def pretrained_backbone(fold: int = 0, seed: int = 0, benchmark: str = "synthetic", backbone: str = "smallcnn",
                        **overrides) -> Path:
    """Path of the pre-trained backbone weights of ``(fold, seed)``, training them on first use.

    The first use is the first long wait of a fresh clone, so it is always announced (what, why,
    how long) and shown with a progress bar, also inside a caller that trains quietly. A second
    process that needs the same backbone meanwhile (a second notebook) waits for the first one
    with a message.
    """
    config = pretrain_config(fold, seed, benchmark, backbone, **overrides)
    run_dir = pretrain_run_dir(config)
    weights = run_dir / "backbone.pt"
    if weights.exists():
        return weights
    waiting = f"the {backbone} backbone of fold {fold} (seed {seed}) is being pre-trained by another process"
    with RunLock(run_dir, name="pretrain.lock", wait=waiting):
        if weights.exists():  # the other process finished it while this one waited
            return weights
        print(announcement(config), flush=True)
        source = build_source(benchmark, config.data_root)
        size = config.image_size or DEFAULT_SIZES[benchmark]
        transform = train_transform(size) if config.augment else eval_transform(size)
        dataset = BaseClassSegmentation(source, fold, transform, config.steps * config.batch_size, seed,
                                        config.convention)
        torch.manual_seed(seed)
        model = BackboneClassifier(backbone, dataset.num_classes)
        model = Trainer(config, model, dataset, run_dir).fit(progress=True)
        torch.save(model.backbone.state_dict(), weights)
    return weights


def announcement(config: TrainConfig) -> str:
    """What is about to happen, why, and for how long (printed before a pre-training starts)."""
    # A step of 16 images of 128 pixels took 0.45-0.67 s on the idle 2-core development machine
    # (measured on different days; 10.1 minutes for the 900 steps on a fresh clone at 0.67 s).
    fast, slow = (seconds * config.steps * config.batch_size / 16 for seconds in (0.45, 0.67))
    duration = (f"About {fast / 60:.0f}-{slow / 60:.0f} minutes" if slow > 90 else f"About {slow:.0f} s") + \
        " on an idle 2-core CPU (longer while other jobs run)"
    return (f"Pre-training the {config.model_args.get('backbone', 'smallcnn')} backbone of {config.benchmark} fold "
            f"{config.fold}: {config.steps} steps x {config.batch_size} images of supervised segmentation of the "
            f"fold's base classes (the synthetic benchmark's stand-in for ImageNet weights; novel classes are never "
            f"seen). Once per fold: every method and notebook reuses it from {pretrain_run_dir(config)}. {duration}, "
            f"under a minute on a GPU; start it up front with "
            f"`python -m fsslib prepare {config.benchmark} --pretrain --fold {config.fold}`.")


def learning_curve(run_dir: Path, every: int = 100):
    """The pre-training loss, averaged over windows of ``every`` steps (the log has one row per
    ``log_every`` steps), as a DataFrame ``(steps, ce)``."""
    import pandas as pd

    log = pd.read_csv(Path(run_dir) / "log.csv")
    window = (log["step"] - 1) // every
    last = int(log.step.max())
    return pd.DataFrame({"steps": [f"{w * every + 1}-{min((w + 1) * every, last)}" for w in sorted(set(window))],
                         "ce": log.groupby(window)["ce"].mean().round(3).tolist()})
