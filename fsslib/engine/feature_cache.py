"""Backbone features computed once per image and reused by every episode the image appears in.

A model in eval mode, or one whose backbone is entirely frozen (parameters and BatchNorm), maps
an image to the same features whatever the episode. Evaluation therefore runs each test image
through the backbone once per protocol run, and head-only training of such a model (PFENet,
MSPF, MSDNet on a frozen backbone) can skip the backbone altogether: episodes are assembled from
cached features and the head is all that runs per step.

Where the features live:

- in memory, when they fit in ``memory_budget`` bytes (default: :data:`DEFAULT_MEMORY_BUDGET`);
- otherwise in memory-mapped ``.npy`` files, written chunk by chunk as the backbone produces
  them, so a ResNet-50 PASCAL-5i fold at full resolution (tens of GiB of layer2-layer4
  features) never has to fit in RAM: the page cache holds what the episodes touch;
- in a persistent ``store`` directory when one is given: the files are named by a digest of the
  backbone's weights, the image size, the stages and the image list, so every training run of a
  frozen backbone on the same fold (each ablation variant, each seed) reuses them, and a change to
  any of these inputs computes new ones. A store is written under a temporary name and renamed
  when complete: an interrupted build leaves nothing that could be mistaken for a finished one.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..data import EpisodePool, eval_transform
from ..data.episodes import Episode, check_support_mask, episode_mask

#: Features larger than this (bytes) go to memory-mapped files instead of memory on the device
#: (GPU memory when the model runs on a GPU).
DEFAULT_MEMORY_BUDGET = int(os.environ.get("FSSLIB_CACHE_BUDGET_GB", "8")) * 2**30


def backbone_frozen(model: nn.Module) -> bool:
    """True when ``model``'s backbone can never change: no trainable parameter, BatchNorm frozen."""
    backbone = getattr(model, "backbone", None)
    return (backbone is not None and getattr(backbone, "bn_frozen", False)
            and not any(p.requires_grad for p in backbone.parameters()))


def cache_key(model: nn.Module, stems: Sequence[str], size: int) -> str:
    """Digest of everything the cached features depend on: backbone weights and buffers (BatchNorm
    statistics included), the stages read, the image size and the ordered image list."""
    digest = hashlib.sha1()
    for name, tensor in model.backbone.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    digest.update(json.dumps([type(model.backbone).__name__, list(model.feature_stages), size, list(stems)]).encode())
    return digest.hexdigest()[:16]


class FeatureCache:
    """Features, resized labels and original labels of a set of images, computed once.

    ``features[stage]`` is ``[n_images, C, h, w]`` (in memory on ``device``, or memory-mapped on
    the CPU); ``row[stem]`` indexes it. Labels are dataset class ids: ``labels`` at the network
    size, ``original_labels`` as loaded.

    Args:
        store: directory of persistent caches (e.g. ``runs/feature-cache``); ``None`` keeps the
            features for this object's lifetime only.
        memory_budget: bytes of features kept in memory on ``device`` (GPU memory on a GPU); beyond
            it they are memory-mapped from disk (in ``store`` if given, else in a temporary
            directory removed with the object).
    """

    def __init__(self, model: nn.Module, source, stems, size: int, device: torch.device,
                 batch_size: int = 64, progress: bool = False, store: str | os.PathLike | None = None,
                 memory_budget: int | None = None):
        self.stems = sorted(set(stems))
        self.row = {stem: i for i, stem in enumerate(self.stems)}
        self.device = torch.device(device)
        self.memory_budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else memory_budget
        self._tmpdir: str | None = None
        self.location: Path | None = None  # where memory-mapped features live, if they do
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
        target = Path(store) / cache_key(model, self.stems, size) if store is not None else None
        if target is not None and (target / "complete").exists():
            self._load(target)
            return
        self._compute(model, images, batch_size, progress, target)

    # ------------------------------------------------------------------ building
    def _compute(self, model, images, batch_size, progress, target: Path | None) -> None:
        from tqdm.auto import tqdm

        n = len(images)
        writers: dict[str, np.memmap] = {}
        in_memory: dict[str, list[Tensor]] = {}
        spill_dir = None
        with torch.inference_mode():
            for start in tqdm(range(0, n, batch_size), desc="features", disable=not progress, leave=False):
                chunk = model.extract(torch.stack(images[start:start + batch_size]).to(self.device))
                if start == 0:
                    per_image = sum(v[0].numel() * v.element_size() for v in chunk.values())
                    if target is not None or per_image * n > self.memory_budget:
                        spill_dir = self._spill_dir(target)
                        writers = {k: np.lib.format.open_memmap(spill_dir / f"{k}.npy", mode="w+", dtype=np.float32,
                                                                shape=(n, *v.shape[1:])) for k, v in chunk.items()}
                for stage, value in chunk.items():
                    if writers:
                        writers[stage][start:start + len(value)] = value.float().cpu().numpy()
                    else:
                        in_memory.setdefault(stage, []).append(value)
        if not writers:
            self.features = {stage: torch.cat(parts) for stage, parts in in_memory.items()}
            return
        for writer in writers.values():
            writer.flush()
        del writers
        if target is not None:
            (spill_dir / "complete").write_text(json.dumps({"images": n}))
            try:
                spill_dir.rename(target)
            except OSError:  # another process finished the same cache first: use theirs
                shutil.rmtree(spill_dir, ignore_errors=True)
            spill_dir = target
        self._load(spill_dir)

    def _spill_dir(self, target: Path | None) -> Path:
        if target is None:
            self._tmpdir = tempfile.mkdtemp(prefix="fsslib-features-")
            return Path(self._tmpdir)
        target.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))

    def _load(self, directory: Path) -> None:
        """Memory-map the stage files of ``directory`` (copy-on-write: the files are never modified)."""
        self.location = directory
        self.features = {path.stem: torch.from_numpy(np.load(path, mmap_mode="c"))
                         for path in sorted(directory.glob("*.npy"))}

    def __del__(self):
        if getattr(self, "_tmpdir", None):
            self.features = {}
            shutil.rmtree(self._tmpdir, ignore_errors=True)

    # ------------------------------------------------------------------ reading
    def gather(self, stems: Sequence) -> dict[str, Tensor]:
        """Features of ``stems`` on the cache's device: a list gives ``[B, C, h, w]``, a list of
        tuples ``[B, S, C, h, w]``."""
        rows = torch.tensor([[self.row[s] for s in group] if not isinstance(group, str) else self.row[group]
                             for group in stems])
        return {k: v[rows.flatten().to(v.device)].unflatten(0, rows.shape).to(self.device)
                for k, v in self.features.items()}

    def support_masks(self, episode: Episode) -> Tensor:
        """Coded support masks ``[N*K, H, W]`` of an episode at the network size."""
        shot = episode.shot
        masks = []
        for n, stem in enumerate(episode.supports):
            target = episode.classes[n // shot]
            masks.append(episode_mask(self.labels[self.row[stem]], [target],
                                      exclude=[c for c in episode.classes if c != target]))
            check_support_mask(masks[-1], self.original_labels[self.row[stem]], stem, target)
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
