"""``python -m fsslib factors``: where does each method help? Every evaluation split by each factor.

The synthetic benchmark records, per object, the factors each paper's mechanism is built for
(:mod:`fsslib.data.factors`). Splitting the main table's test episodes by them gives, per method,
shot, factor and bin, an mIoU over that bin's episodes (class-wise IoU accumulated over the
bin's episodes, averaged over the classes present), with a 95% interval over training seeds.
Episodes are identical for every method, so a gap between two methods inside one bin is paired.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..analysis.plotting import factor_panels, save_figure
from ..data import build_source
from ..data.factors import FACTOR_BINS, FACTORS, episode_factors
from ..engine.statistics import class_wise_miou, interval95
from .ablation import run_ablation
from .profiles import evaluations_dir, figures_of, protocol_of, results_root
from .tables import tables

FACTOR_COLUMNS = ["method", "shot", "factor", "bin", "miou", "miou_ci95", "seeds", "episodes"]


def with_factors(episode_rows: pd.DataFrame, records) -> pd.DataFrame:
    """``episode_rows`` with one column per factor (its bin), from the images' factor records."""
    labels = [episode_factors(records, query, supports.split(), int(class_id))
              for query, supports, class_id in zip(episode_rows["query"], episode_rows["supports"],
                                                   episode_rows["class"])]
    return pd.concat([episode_rows.reset_index(drop=True), pd.DataFrame(labels, columns=list(FACTORS))], axis=1)


def bin_miou(episodes: pd.DataFrame) -> float:
    """mIoU (percent) of a set of episodes: class-wise sums of intersections and unions, then the mean
    over the classes present (a bin need not hold every class)."""
    return float(class_wise_miou(episodes, []).iloc[0])


def factor_breakdown(rows: pd.DataFrame) -> pd.DataFrame:
    """mIoU per (method, shot, factor, bin) with its 95% interval over training seeds
    (``rows``: per-episode rows with factor columns and ``train_seed``)."""
    out = []
    for factor in FACTORS:
        order = FACTOR_BINS[factor][1]
        for (method, shot), group in rows.groupby(["method", "shot"], sort=False):
            for label in order:
                in_bin = group[group[factor] == label]
                if in_bin.empty:
                    continue
                per_seed = class_wise_miou(in_bin, ["train_seed"])
                mean, half = interval95(per_seed)
                episodes = len(in_bin) / max(in_bin["train_seed"].nunique(), 1)
                out.append(dict(method=method, shot=shot, factor=factor, bin=label, miou=mean, miou_ci95=half,
                                seeds=len(per_seed), episodes=round(episodes, 1)))
    return pd.DataFrame(out, columns=FACTOR_COLUMNS)


def factor_spread(breakdown: pd.DataFrame, method: str, shot: int = 1) -> pd.DataFrame:
    """Per factor: the worst and best bin of ``method`` and the gap between them (property 4 of the
    benchmark: every factor moves the baseline's IoU by at least 5 points)."""
    rows = breakdown[(breakdown.method == method) & (breakdown.shot == shot)]
    out = []
    for factor, group in rows.groupby("factor", sort=False):
        worst, best = group.loc[group.miou.idxmin()], group.loc[group.miou.idxmax()]
        out.append(dict(factor=factor, worst=worst.bin, worst_miou=worst.miou, best=best.bin, best_miou=best.miou,
                        gap=best.miou - worst.miou))
    return pd.DataFrame(out)


def main_episode_rows(profile, main=None, progress: bool = False, stored_only: bool = False) -> pd.DataFrame:
    """Per-episode rows of the main table's rows (methods and reference rows; ``main``: that
    table, default the registry's) under ``profile`` (trained and evaluated once, then read from
    the profile's stored evaluations; ``stored_only``: only read), with their factors."""
    if profile.benchmark != "synthetic":
        raise ValueError(f"factors are recorded by the synthetic benchmark only, not {profile.benchmark}")
    main = main or next(t for t in tables() if t.key == "main")
    source = build_source("synthetic")
    frames = [run_ablation(main.variants, fold=fold, seeds=profile.seeds, protocol=protocol_of(profile),
                           results=evaluations_dir(profile), progress=progress, recipe_args=profile.recipe,
                           episodes=True, stored_only=stored_only)
              for fold in profile.folds]
    return with_factors(pd.concat(frames, ignore_index=True), source.factors("val"))


def stored_or_computed_factors(profile, recompute: bool = False) -> pd.DataFrame:
    """The factor breakdown of ``profile``: ``results/factors.csv`` as ``make reproduce`` wrote it
    (committed for the default profile; read-only) unless ``recompute`` or none is stored, else
    computed here from the main table's runs (trained where missing) and stored."""
    path = results_root(profile) / "factors.csv"
    if recompute or not path.exists():
        print(f"Computing the factor breakdown of profile {profile.name} "
              "(the main table's runs, trained where missing)")
        path, _ = write_factors(profile, progress=True)
    else:
        print(f"Stored factor breakdown of `make reproduce` (profile {profile.name}): {path.name}, read-only")
    return pd.read_csv(path)


def write_factors(profile, main=None, progress: bool = False, stored_only: bool = False) -> tuple[Path, Path]:
    """``results/factors.csv`` and ``figures/factors.png`` of ``profile`` (``main``: the main
    table, default the registry's; ``stored_only``: from stored evaluations only); returns their paths."""
    breakdown = factor_breakdown(main_episode_rows(profile, main, progress, stored_only))
    root = results_root(profile)
    root.mkdir(parents=True, exist_ok=True)
    csv = root / "factors.csv"
    breakdown.round(2).to_csv(csv, index=False)
    figure = save_figure(factor_panels(breakdown, {f: FACTOR_BINS[f][1] for f in FACTORS}), "factors.png",
                         close=True, folder=figures_of(profile))
    return csv, figure
