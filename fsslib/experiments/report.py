"""The tables and figures of ``reproduce``: ``results/tables.md``, ``results/<table>.csv``, ``figures/*.png``.

Everything here reads finished runs and stored evaluations; it trains nothing that the jobs of
:mod:`fsslib.experiments.reproduce` did not already train (a job that failed is retried once here,
in this process, and reported again if it fails).

Every mIoU is the class-wise accumulated IoU of the common evaluator, averaged over a fold's
test classes; each row gives the mean and 95% t-interval over training seeds, and the paired
difference to its reference row (same training seed, same test episodes) with its interval. A row
whose difference interval contains zero is marked *not resolved*. The paper columns are the
papers' numbers on PASCAL-5i (MSDNet: COCO-20i, the only one published for it): a different
dataset, shown for the direction and size of effects, not for comparison of values.
"""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..analysis.plotting import overlay, save_figure
from ..data import EpisodeDataset, EpisodePool, collate_episodes, eval_transform, sample_episodes
from ..engine.statistics import interval95, paired_difference, with_interval
from ..engine.trainer import read_log, to_device
from ..models import build_model
from .ablation import (
    ablation_table,
    format_ablation,
    per_training_seed,
    run_ablation,
    shot_gain_table,
    train_config,
    train_variant,
    variant_run_dir,
)
from .claims import format_scorecard, scorecard
from .factors import write_factors
from .profiles import evaluations_dir, figures_of, protocol_of, results_root

# ---------------------------------------------------------------------- the papers' numbers
PAPER_NOTE = "paper: PASCAL-5i, ResNet-50 unless noted"


# ---------------------------------------------------------------------- collecting
def table_rows(table, profile, progress: bool = False, stored_only: bool = False) -> pd.DataFrame:
    """The IoU rows of every row of ``table`` over the profile's folds and seeds: the stored
    evaluations, the missing ones trained and evaluated here unless ``stored_only``."""
    frames = []
    for fold in profile.folds:
        rows = run_ablation(table.variants, fold=fold, seeds=profile.seeds, protocol=protocol_of(profile),
                            results=evaluations_dir(profile), progress=progress,
                            recipe_args=profile.recipe, benchmark=profile.benchmark, stored_only=stored_only)
        frames.append(rows)
    return pd.concat(frames, ignore_index=True)


def fb_iou_per_training_seed(rows: pd.DataFrame) -> pd.DataFrame:
    """FB-IoU per (method, fold, shot, train_seed): mean IoU of the background (class 0) and the
    foreground (class -1) rows, each accumulated over evaluation seeds."""
    fb = rows[rows["class"] <= 0]
    sums = fb.groupby(["method", "fold", "shot", "train_seed", "class"], sort=False)[["intersection", "union"]].sum()
    iou = sums["intersection"] / sums["union"].where(sums["union"] > 0)
    fbiou = 100 * iou.groupby(["method", "fold", "shot", "train_seed"], sort=False).mean()
    return fbiou.rename("fbiou").reset_index()


def learnable_parameters(variant, profile=None) -> int:
    """Parameters the optimiser updates in ``variant``'s training configuration (weights not
    loaded); ``profile`` None = the synthetic benchmark's standard recipe."""
    if profile is None:
        config = train_config(variant, 0, 0)
    else:
        config = train_config(variant, profile.folds[0], profile.seeds[0], recipe_args=profile.recipe,
                              benchmark=profile.benchmark)
    return build_model(variant.model, **{**config.model_args, "weights": None}).learnable_parameters()


def _trained(variant, profile, source):
    return train_variant(variant, profile.folds[0], profile.seeds[0], recipe_args=profile.recipe,
                         benchmark=profile.benchmark, source=source)


def _test_size(profile) -> int:
    return protocol_of(profile).size(profile.benchmark)


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def ms_per_episode(model, pool: EpisodePool, size: int, repeats: int = 5, shot: int = 1) -> float:
    """Median wall time of one ``shot``-shot episode (backbone included) on the model's device."""
    device = _model_device(model)
    episodes = sample_episodes(pool, 1, shot=shot)
    batch = collate_episodes([EpisodeDataset(pool, eval_transform(size), shot=shot, episodes=episodes)[0]])
    batch = to_device(batch, device)
    model = model.eval()

    def episode():
        model(batch)
        if device.type == "cuda":  # kernels run asynchronously: wait for them
            torch.cuda.synchronize(device)

    episode()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        episode()
        times.append(time.perf_counter() - start)
    return 1000 * sorted(times)[len(times) // 2]


def main_table(rows: pd.DataFrame, table, profile, measurements: pd.DataFrame | None = None) -> str:
    """The main comparison: mIoU per fold and mean, FB-IoU, difference to ProtoNet, and, from
    ``measurements`` (:func:`measure_main_rows`), parameters and ms/episode."""
    miou = per_training_seed(rows)
    fb = fb_iou_per_training_seed(rows)
    folds = list(profile.folds)
    header = (["method", "shot"] + [f"fold {f}" for f in folds] + ["mean mIoU", "FB-IoU", "vs ProtoNet", "",
                                                                     "learnable params", "ms / episode", "paper"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    reference = table.variants[0].name
    measured = {} if measurements is None else measurements.set_index("method").to_dict("index")
    for variant in table.variants:
        params, ms = "", ""
        if variant.name in measured:  # a reference row evaluates its reference's weights: not measured
            params = f"{measured[variant.name]['learnable_parameters'] / 1e6:.2f}M"
            ms = f"{measured[variant.name]['ms_per_episode']:.0f}"
        for shot in profile.shots:
            mine = miou[(miou.method == variant.name) & (miou.shot == shot)]
            if mine.empty:  # the oracle row has one shot
                continue
            per_fold = [with_interval(*interval95(mine[mine.fold == f]["miou"])) for f in folds]
            seed_means = mine.groupby("train_seed")["miou"].mean()
            fb_means = fb[(fb.method == variant.name) & (fb.shot == shot)].groupby("train_seed")["fbiou"].mean()
            diff, flag = "", ""
            if variant.name != reference:
                ref = miou[(miou.method == reference) & (miou.shot == shot)].groupby("train_seed")["miou"].mean()
                paired = paired_difference(seed_means, ref)
                diff = with_interval(paired.mean, paired.half, 2, sign=True)
                flag = "" if paired.resolved else "not resolved"
            cells = [variant.name, str(shot), *per_fold, with_interval(*interval95(seed_means)),
                     with_interval(*interval95(fb_means)), diff, flag, params, ms,
                     table.paper_value(variant, shot)]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def shot_gain_markdown(rows: pd.DataFrame, table) -> str:
    """Every row's 5-shot minus 1-shot mIoU, paired per training seed on identical queries."""
    gains = shot_gain_table(rows)
    if gains.empty:
        return ""
    order = {v.name: i for i, v in enumerate(table.variants)}
    gains = gains.assign(order=gains["method"].map(order)).sort_values(["fold", "order"])
    lines = ["| row | fold | 5-shot minus 1-shot (paired) | |", "|---|---|---|---|"]
    lines += [f"| {r.method} | {r.fold} | {with_interval(r.diff, r.diff_ci95, 2, sign=True)} | "
              f"{'' if r.resolved else 'not resolved'} |" for r in gains.itertuples()]
    return "\n".join(lines)


def ablation_markdown(rows: pd.DataFrame, table) -> str:
    """``format_ablation`` of a method table (fold by fold), with the paper's column."""
    result = ablation_table(rows, table.references)
    order = {v.name: i for i, v in enumerate(table.variants)}
    result = result.assign(order=result["method"].map(order)).sort_values(["fold", "shot", "order"])
    lines = format_ablation(result).split("\n")
    by_name = {v.name: v for v in table.variants}
    lines[0] += " fold | paper |"
    lines[1] += "---|---|"
    for i, r in enumerate(result.itertuples(), start=2):
        lines[i] += f" {r.fold} | {table.paper_value(by_name[r.method], r.shot)} |"
    return "\n".join(lines)


# ---------------------------------------------------------------------- figures
def bar_chart(rows: pd.DataFrame, table, profile) -> Path:
    import matplotlib.pyplot as plt

    result = ablation_table(rows, table.references)
    names = [v.name for v in table.variants]
    fig, axes = plt.subplots(1, len(profile.shots), figsize=(5 * len(profile.shots), 0.35 * len(names) + 1.2),
                             sharey=True, squeeze=False)
    for ax, shot in zip(axes[0], profile.shots):
        part = result[(result.shot == shot) & (result.fold == profile.folds[0])].set_index("method").reindex(names)
        y = np.arange(len(names))
        colours = ["tab:grey" if pd.isna(d) else ("tab:blue" if ok else "tab:orange")
                   for d, ok in zip(part.get("diff", pd.Series(np.nan, index=part.index)),
                                    part.get("resolved", pd.Series(False, index=part.index)).fillna(False))]
        ax.barh(y, part["miou"], xerr=part["miou_ci95"].fillna(0), color=colours, capsize=3)
        ax.set_yticks(y, names, fontsize=7)
        ax.invert_yaxis()
        low = np.nanmin(part["miou"] - part["miou_ci95"].fillna(0))
        ax.set_xlim(max(0, low - 5), None)
        ax.set_xlabel(f"mIoU, {shot}-shot (fold {profile.folds[0]}, mean and 95% interval over seeds)")
    fig.suptitle(f"{table.title}  (blue: resolved vs its reference, orange: not resolved, grey: reference)",
                 fontsize=9)
    fig.tight_layout()
    return save_figure(fig, f"table_{table.key}.png", close=True, folder=figures_of(profile))


def learning_curves(table, profile) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for variant in table.variants:
        run = variant_run_dir(variant, profile.folds[0], profile.seeds[0], recipe_args=profile.recipe,
                              benchmark=profile.benchmark)
        if (run / "log.csv").exists():
            log = read_log(run)
            ax.plot(log["step"], log["loss"].rolling(5, min_periods=1).mean(), label=variant.name)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (moving mean of 5 logs)")
    ax.set_yscale("log")
    ax.set_title(f"learning curves, fold {profile.folds[0]}, seed {profile.seeds[0]} (losses differ by method)",
                 fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, "learning_curves.png", close=True, folder=figures_of(profile))


@torch.inference_mode()
def qualitative(table, profile, source, n: int = 4) -> Path:
    import matplotlib.pyplot as plt

    pool = EpisodePool.for_fold(source, profile.folds[0], "val")
    dataset = EpisodeDataset(pool, eval_transform(_test_size(profile)),
                             episodes=sample_episodes(pool, n, shot=1, seed=5))
    batch = collate_episodes([dataset[i] for i in range(n)])
    predictions = {}
    for variant in table.variants:
        model = _trained(variant, profile, source).eval()
        predictions[variant.name] = model.predict(model(to_device(batch, _model_device(model)))).cpu()
    columns = 2 + len(predictions)
    fig, axes = plt.subplots(n, columns, figsize=(1.9 * columns, 1.9 * n), squeeze=False)
    for i, row in enumerate(axes):
        row[0].imshow(overlay(batch["support_imgs"][i, 0], batch["support_masks"][i, 0]))
        row[1].imshow(overlay(batch["query_img"][i], batch["query_mask"][i]))
        for ax, (name, prediction) in zip(row[2:], predictions.items()):
            ax.imshow(overlay(batch["query_img"][i], prediction[i]))
            if i == 0:
                ax.set_title(name, fontsize=7)
        if i == 0:
            row[0].set_title("support", fontsize=7)
            row[1].set_title("query, truth", fontsize=7)
        for ax in row:
            ax.axis("off")
    fig.suptitle(f"the same test episodes for every method (fold {profile.folds[0]}, 1-shot, seed {profile.seeds[0]})",
                 fontsize=9)
    fig.tight_layout()
    return save_figure(fig, "qualitative_predictions.png", close=True, folder=figures_of(profile))


# ---------------------------------------------------------------------- what needs the trained models
def measurements_path(profile) -> Path:
    return evaluations_dir(profile) / "main_measurements.csv"


def measure_main_rows(profile, source, table) -> Path:
    """What the report shows that needs the trained models, measured once after training: learnable
    parameters and ms/episode of every main-table row whose evaluations are stored (``reproduce``'s
    jobs trained and evaluated them; rows of failed runs are skipped), and the qualitative figure.
    Returns the CSV that :func:`write_report` reads."""
    stored = table_rows(table, profile, stored_only=True)
    table = replace(table, variants=[v for v in table.variants if v.name in set(stored["method"])])
    pool = EpisodePool.for_fold(source, profile.folds[0], "val")
    out = []
    for variant in table.variants:
        if variant.trained_as:  # a reference row evaluates its reference's weights
            continue
        model = _trained(variant, profile, source)
        out.append(dict(method=variant.name, learnable_parameters=learnable_parameters(variant, profile),
                        ms_per_episode=ms_per_episode(model, pool, _test_size(profile))))
    path = measurements_path(profile)
    pd.DataFrame(out, columns=["method", "learnable_parameters", "ms_per_episode"]).to_csv(path, index=False)
    qualitative(table, profile, source)
    return path


# ---------------------------------------------------------------------- all of it
def describe_recipe(recipe: dict) -> str:
    """``steps=150, batch_size=4; pfenet: lr=0.002`` for a profile's recipe changes."""
    common = ", ".join(f"{k}={v}" for k, v in recipe.items() if k != "by_method")
    methods = [f"{model}: " + ", ".join(f"{k}={v}" for k, v in changes.items())
               for model, changes in recipe.get("by_method", {}).items()]
    return "; ".join([common] * bool(common) + methods)


def below_half_of_reference(scores: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Rows of ``per_training_seed`` scores below half of the ``reference`` method's mIoU on the
    same fold, shot and training seed: a training run that did not learn (the collapse check)."""
    keys = ["fold", "shot", "train_seed"]
    base = scores[scores.method == reference][keys + ["miou"]].rename(columns={"miou": "reference_miou"})
    paired = scores.merge(base, on=keys)
    return paired[paired.miou < 0.5 * paired.reference_miou].reset_index(drop=True)


def collapse_check(scores: pd.DataFrame, reference: str) -> str:
    """A markdown paragraph: every (row, shot, training seed) at or above half of ``reference``, or the exceptions."""
    low = below_half_of_reference(scores, reference)
    rule = f"no row, shot or training seed below half of {reference}'s mIoU on the same seed and shot"
    if low.empty:
        return f"Collapse check: {rule}: **holds** ({len(scores)} row-seed-shot scores)."
    lines = [f"Collapse check: {rule}: **{len(low)} exception(s)**:", ""]
    lines += [f"- {r.method}, {r.shot}-shot, training seed {r.train_seed}: {r.miou:.1f} (reference "
              f"{r.reference_miou:.1f})" for r in low.itertuples()]
    return "\n".join(lines)


def write_report(profile, tables: list) -> Path:
    """Write ``tables.md``, one CSV of raw rows per table of ``tables`` (``tables.tables()``), and
    the figures drawn from them; returns ``tables.md``. Reads stored evaluations, training logs and
    :func:`measure_main_rows`' CSV only: it never trains or loads a model."""
    root = results_root(profile)
    root.mkdir(parents=True, exist_ok=True)
    if profile.benchmark == "synthetic":
        recipe = f"standard recipe with {describe_recipe(profile.recipe)}" if profile.recipe else "standard recipe"
        setting, paper = f"Synthetic benchmark, {recipe}", f"{PAPER_NOTE} (a different dataset)"
    else:
        changes = f" with {describe_recipe(profile.recipe)}" if profile.recipe else ""
        setting, paper = f"{profile.benchmark}, the papers' recipes{changes}", PAPER_NOTE
    if profile.name == "fast":  # the tests' plumbing check: its numbers must never be read as results
        setting = ("**Smoke test, the numbers mean nothing**: the fast mode's recipe (6 steps x 2 episodes) on "
                   "the tiny benchmark, 0.0 rows included; it checks that every stage runs. Synthetic benchmark")
    parts = [f"# Results of `python -m fsslib reproduce --profile {profile.name}`", "",
             f"{setting}; fold(s) {list(profile.folds)}, training seeds {list(profile.seeds)}; "
             f"{profile.episodes} test episodes per shot (identical for every method). mIoU: class-wise accumulated "
             f"IoU; mean ± 95% interval over training seeds; differences paired per seed. {paper}."]
    scores, rows_by_table = [], {}
    for table in tables:
        rows = table_rows(table, profile, stored_only=True)
        rows_by_table[table.key] = rows
        rows.to_csv(root / f"{table.key}.csv", index=False)
        scores.append(per_training_seed(rows))
        # Rows of failed runs are left out (the failures are listed at the end of reproduce).
        done = set(rows["method"])
        table = replace(table, variants=[v for v in table.variants if v.name in done])
        if table.key == "main":
            measured = measurements_path(profile)
            body = main_table(rows, table, profile, pd.read_csv(measured) if measured.exists() else None)
        else:
            body = ablation_markdown(rows, table)
        parts += ["", f"## {table.title}", "", body]
        gains = shot_gain_markdown(rows, table)
        if gains:
            parts += ["", "More shots, paired (the same queries; the 1-shot support is the first of the five):", "",
                      gains]
        bar_chart(rows, table, profile)
        if table.key == "main":
            learning_curves(table, profile)
    from .tables.main import PROTONET

    scores = pd.concat(scores, ignore_index=True).drop_duplicates(["method", "fold", "shot", "train_seed"])
    parts += ["", "## Collapse check", "", collapse_check(scores, PROTONET.name)]
    card = scorecard(rows_by_table, profile.benchmark)
    card.round(3).to_csv(root / "claims.csv", index=False)
    parts += ["", "## Claims scorecard", "",
              "Each claim of the method papers, its effect in the paper and ours (row minus "
              "reference, paired per training seed on identical episodes, 95% interval). Written from the tables "
              "above whatever it says; the benchmark's knobs were fixed before any table was run.", "",
              format_scorecard(card)]
    main = next((t for t in tables if t.key == "main"), None)
    if profile.benchmark == "synthetic" and main is not None:
        csv, figure = write_factors(profile, main, stored_only=True)
        parts += ["", "## Factors", "", f"Every main-table method's mIoU split by each recorded factor: {csv.name}, "
                  f"{figure.name} (`python -m fsslib factors`)."]
    path = root / "tables.md"
    path.write_text("\n".join(parts) + "\n")
    print("\n".join(parts))
    print(f"\nwrote {path}")
    return path
