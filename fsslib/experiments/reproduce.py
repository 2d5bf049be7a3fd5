"""``python -m fsslib reproduce``: the main job on the embedded synthetic benchmark.

Stage 1 (this version): generate the benchmark once, print its summary and draw example
episodes to ``figures/episodes.png``. Training and evaluating every method follows in later stages.
"""
from __future__ import annotations

import os
import time

from ..analysis.plotting import episode_grid, save_figure
from ..data import (DEFAULT_SIZES, EpisodeDataset, EpisodePool, prepare_synthetic, sample_episodes,
                    synthetic_class_name, eval_transform)
from ..data.summary import fold_summary, split_sizes

PROFILES = ("fast", "default", "full")


def draw_example_episodes(source, fold: int = 0, n: int = 4, seed: int = 0):
    """A few 1-shot and one 2-way 2-shot test episodes of ``fold``: the grid notebook 01 also draws."""
    pool = EpisodePool.for_fold(source, fold, "val")
    transform = eval_transform(DEFAULT_SIZES["synthetic"])
    one_shot = EpisodeDataset(pool, transform, shot=1, episodes=sample_episodes(pool, n - 1, shot=1, seed=seed))
    two_way = EpisodeDataset(pool, transform, shot=2, way=2,
                             episodes=sample_episodes(pool, 1, shot=2, way=2, seed=seed))
    items = [one_shot[i] for i in range(len(one_shot))] + [two_way[0]]
    return episode_grid(items, synthetic_class_name, title=f"synthetic benchmark, fold {fold} test episodes")


def reproduce(profile: str = "default") -> None:
    if profile not in PROFILES:
        raise SystemExit(f"--profile must be one of {PROFILES}, got {profile!r}")
    if profile == "fast":
        os.environ["FSSLIB_FAST"] = "1"
    start = time.perf_counter()
    source = prepare_synthetic()
    print(f"synthetic benchmark at {source.root} ({time.perf_counter() - start:.0f} s)")
    print(f"classes: {source.num_classes} = 5 shapes x 4 appearances")
    print("images per split:", ", ".join(f"{k} {v}" for k, v in split_sizes(source).items()))
    print(fold_summary(source).to_string())
    path = save_figure(draw_example_episodes(source), "episodes.png")
    print(f"wrote {path}")
