"""Episodic training of a few-shot method, and loading finished runs."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from functools import partial
from pathlib import Path

import torch

from ..data import (
    DEFAULT_SIZES,
    EpisodeDataset,
    EpisodePool,
    build_source,
    collate_episodes,
    eval_transform,
    train_transform,
)
from ..models import FewShotSegmenter, build_model
from ..runtime import default_device
from .feature_cache import CachedEpisodeDataset, FeatureCache, backbone_frozen
from .trainer import TrainConfig, Trainer, runs_dir


def fewshot_dataset(config: TrainConfig, source=None) -> EpisodeDataset:
    source = source or build_source(config.benchmark, config.data_root)
    size = config.image_size or DEFAULT_SIZES[config.benchmark]
    pool = EpisodePool.for_fold(source, config.fold, "train", config.convention)
    transform = train_transform(size) if config.augment else eval_transform(size)
    return EpisodeDataset(pool, transform, shot=config.shot, way=config.way,
                          length=config.steps * config.batch_size, seed=config.seed)


def cached_fewshot_dataset(config: TrainConfig, model: FewShotSegmenter, source=None) -> CachedEpisodeDataset:
    """Training episodes on features computed once: only valid for a backbone frozen entirely."""
    if not backbone_frozen(model) or config.augment:
        backbone = model.backbone
        trainable = [n for n, p in backbone.named_parameters() if p.requires_grad]
        raise ValueError("cache_features=True needs frozen_stages='all', freeze_bn=True and augment=False "
                         f"(trainable backbone parameters: {len(trainable)}, BatchNorm frozen: {backbone.bn_frozen}, "
                         f"augment: {config.augment})")
    source = source or build_source(config.benchmark, config.data_root)
    pool = EpisodePool.for_fold(source, config.fold, "train", config.convention)
    stems = {s for stems in (*pool.queries.values(), *pool.supports.values()) for s in stems}
    device = default_device(config.device)
    # The store is shared by every run on this backbone and fold (each variant, each seed).
    cache = FeatureCache(model.to(device).eval(), source, stems, config.image_size or DEFAULT_SIZES[config.benchmark],
                         device, store=runs_dir() / "feature-cache")
    return CachedEpisodeDataset(pool, cache, config.shot, config.way, config.steps * config.batch_size, config.seed)


#: Fields that do not change what a run learns: a run started on a GPU resumes on the CPU in the
#: same folder, whatever the loader's worker count or the logging cadence.
_NOT_IN_DIGEST = ("device", "num_workers", "log_every", "checkpoint_every")


def config_digest(config: TrainConfig) -> str:
    """8 hex digits of the config (without :data:`_NOT_IN_DIGEST`): two configs share a run folder
    only if they train the same run, so the fast mode's runs (another recipe, another backbone)
    never meet the default mode's, and changing one value starts a new run instead of failing."""
    values = {k: v for k, v in asdict(config).items() if k not in _NOT_IN_DIGEST}
    return hashlib.sha1(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:8]


def default_run_dir(config: TrainConfig) -> Path:
    """``runs/<model>-<benchmark>-fold<f>-seed<s>-<digest>``: where a run goes when no directory is given."""
    name = f"{config.model}-{config.benchmark}-fold{config.fold}-seed{config.seed}-{config_digest(config)}"
    return runs_dir() / name


def train_fewshot(config: TrainConfig, run_dir: str | os.PathLike | None = None, progress: bool = True,
                  stop_after: int | None = None, source=None) -> FewShotSegmenter:
    """Train (or resume, or load when finished) a few-shot method; returns the model on the training device."""
    if config.task != "episodic":
        raise ValueError(f"train_fewshot trains task='episodic' configs, got task={config.task!r}")
    run_dir = Path(run_dir) if run_dir else default_run_dir(config)
    torch.manual_seed(config.seed)  # the same seed initialises the same weights
    model = build_model(config.model, **config.model_args)
    if config.cache_features:
        dataset = partial(cached_fewshot_dataset, config, model, source)
    else:
        dataset = partial(fewshot_dataset, config, source)
    trainer = Trainer(config, model, dataset, run_dir, collate_fn=collate_episodes)
    return trainer.fit(progress=progress, stop_after=stop_after)


def load_run(run_dir: str | os.PathLike,
             device: str | torch.device | None = None) -> tuple[FewShotSegmenter, TrainConfig]:
    """The finished model of a run directory and its training config."""
    run_dir = Path(run_dir)
    config_path, weights = run_dir / "config.json", run_dir / "model.pt"
    if not config_path.exists():
        raise FileNotFoundError(f"no run at {run_dir} (config.json missing)")
    if not weights.exists():
        raise FileNotFoundError(f"run {run_dir} has not finished (no model.pt); resume it with "
                                f"`python -m fsslib train {run_dir / 'config.json'}`")
    config = TrainConfig.from_dict(json.loads(config_path.read_text())["train"])
    model = build_model(config.model, **config.model_args)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model.to(device or "cpu"), config
