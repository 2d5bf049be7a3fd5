"""Backbone features computed once per image and reused by every episode the image appears in.

A model in eval mode, or one whose backbone is entirely frozen (parameters and BatchNorm), maps
an image to the same features whatever the episode. Evaluation therefore runs each test image
through the backbone once per protocol run, and head-only training of such a model (PFENet,
MSPF, MSDNet on a frozen backbone) can skip the backbone altogether: episodes are assembled from
cached features and the head is all that runs per step.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..data import EpisodePool, eval_transform
from ..data.episodes import Episode, episode_mask


class FeatureCache:
    """Features, resized labels and original labels of a set of images, computed once.

    ``features[stage]`` is ``[n_images, C, h, w]`` on ``device``; ``row[stem]`` indexes it. Labels
    are dataset class ids: ``labels`` at the network size, ``original_labels`` as loaded.
    """

    def __init__(self, model: nn.Module, source, stems, size: int, device: torch.device,
                 batch_size: int = 64, progress: bool = False):
        from tqdm.auto import tqdm

        self.stems = sorted(set(stems))
        self.row = {stem: i for i, stem in enumerate(self.stems)}
        transform = eval_transform(size)
        images, labels, self.original_labels = [], [], []
        for stem in self.stems:
            image, label = source.load(stem)
            img, lab = transform(image, label)
            images.append(img)
            labels.append(lab)
            self.original_labels.append(torch.from_numpy(label))
        self.labels = torch.stack(labels)
        self.features: dict[str, Tensor] = {}
        if not getattr(model, "feature_stages", ()):
            return
        chunks = []
        with torch.inference_mode():
            for start in tqdm(range(0, len(images), batch_size), desc="features", disable=not progress, leave=False):
                chunks.append(model.extract(torch.stack(images[start:start + batch_size]).to(device)))
        self.features = {stage: torch.cat([c[stage] for c in chunks]) for stage in chunks[0]}

    def gather(self, stems: Sequence) -> dict[str, Tensor]:
        """Features of ``stems``: a list gives ``[B, C, h, w]``, a list of tuples ``[B, S, C, h, w]``."""
        rows = torch.tensor([[self.row[s] for s in group] if not isinstance(group, str) else self.row[group]
                             for group in stems])
        return {k: v[rows.flatten().to(v.device)].unflatten(0, rows.shape) for k, v in self.features.items()}

    def support_masks(self, episode: Episode) -> Tensor:
        """Coded support masks ``[N*K, H, W]`` of an episode at the network size."""
        shot = episode.shot
        masks = []
        for n, stem in enumerate(episode.supports):
            target = episode.classes[n // shot]
            masks.append(episode_mask(self.labels[self.row[stem]], [target],
                                      exclude=[c for c in episode.classes if c != target]))
        return torch.stack(masks)


class CachedEpisodeDataset(Dataset):
    """Training episodes drawn from ``(seed, index)`` like ``EpisodeDataset``, built from cached features.

    Items carry ``query_feats`` / ``support_feats`` (dicts of stage tensors) instead of images;
    ``FewShotSegmenter.forward`` then skips the backbone. No image augmentation is possible here.
    """

    def __init__(self, pool: EpisodePool, cache: FeatureCache, shot: int = 1, way: int = 1, length: int = 1000,
                 seed: int = 0):
        self.pool, self.cache, self.shot, self.way, self.length, self.seed = pool, cache, shot, way, length, seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        episode = self.pool.sample(np.random.default_rng([self.seed, index]), self.shot, self.way)
        classes = torch.tensor(episode.classes, dtype=torch.long)
        query = {k: v[0] for k, v in self.cache.gather([episode.query]).items()}
        supports = {k: v[0] for k, v in self.cache.gather([episode.supports]).items()}
        return {
            "query_feats": query,
            "support_feats": supports,
            "support_masks": self.cache.support_masks(episode),
            "query_mask": episode_mask(self.cache.labels[self.cache.row[episode.query]], episode.classes),
            "class_id": classes[0] if episode.way == 1 else classes,
            "support_classes": classes,
            "query_name": episode.query,
            "support_names": list(episode.supports),
        }
