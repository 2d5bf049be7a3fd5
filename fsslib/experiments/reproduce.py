"""``python -m fsslib reproduce [--profile fast|default|full]``: the main job on the synthetic benchmark.

1. Generate the benchmark (once) and draw example episodes.
2. Pre-train the small backbone of every fold of the profile (once per fold).
3. Train every method and every ablation variant for the profile's training seeds: one *job* per
   distinct training run (a run shared by several tables, e.g. MSPF's full model in the main
   comparison and in its Tables 3-5, is one job), each job followed by the evaluations of every
   table row that uses its weights (evaluations are stored once per run and protocol, so a row
   shared by several tables is evaluated once). Jobs run in ``--jobs`` worker processes, one intra-op thread
   each (on a 2-core machine, two single-threaded processes are ~2x faster than one with two
   threads). Finished runs and evaluations are files, so a rerun skips them and an interrupted
   reproduce continues where it stopped; a failed job is reported at the end and the others
   still complete.
4. Collect the tables (one protocol, identical test episodes for every method: 1000 episodes,
   1-shot and 5-shot) into ``results/tables.md`` and the raw IoU rows into ``results/<table>.csv``,
   and draw the figures (bar charts with intervals, learning curves, qualitative predictions).

Profiles (:data:`PROFILES`): ``fast`` for the tests (tiny benchmark, a few steps, one seed),
``default`` (fold 0, seeds 0-2, a shortened recipe so that the whole job stays under 45 minutes
on a 2-core CPU), ``full`` (folds 0-3, seeds 0-2, the standard 1000-step recipe of
:func:`fsslib.experiments.configs.synthetic_recipe`, the recipe of ``python -m fsslib ablation``).
``pascal5i`` and ``coco20i`` run the same tables on the real datasets (under ``$FSSLIB_DATA``)
with each paper's recipe from ImageNet weights (:func:`fsslib.experiments.configs.real_data_recipe`):
a GPU job; steps 1-2 are then opening the dataset instead of generating and pre-training.
"""
from __future__ import annotations

import multiprocessing
import os
import time
from dataclasses import dataclass, field

import pandas as pd

from ..analysis.plotting import episode_grid, save_figure
from ..data import (
    DEFAULT_SIZES,
    EpisodeDataset,
    EpisodePool,
    build_source,
    eval_transform,
    prepare_synthetic,
    sample_episodes,
    synthetic_class_name,
)
from ..data.summary import fold_summary, split_sizes
from ..models.registry import method_record
from .ablation import Variant, _slug, run_ablation

# Re-exported: notebooks and scripts find a profile's settings and tables through reproduce.
from .profiles import (  # noqa: F401
    DEFAULT_RECIPE,
    PROFILES,
    Profile,
    default_profile_name,
    evaluations_dir,
    figures_of,
    notebook_profile,
    protocol_of,
    results_root,
    stored_rows,
)
from .report import measure_main_rows, table_rows, write_report
from .tables import Table, reference_rows, tables, with_reference_rows  # noqa: F401


def stored_or_computed(keys: list[str], profile: Profile, recompute: bool = False) -> pd.DataFrame:
    """IoU rows of the tables ``keys``: the stored ones unless ``recompute`` (or none are stored),
    else trained and evaluated here, with the profile's recipe and protocol (and reused afterwards).
    Says which it did and what recomputing costs."""
    chosen = [t for t in tables(profile.benchmark) if t.key in keys]
    runs = {(_slug(v, profile.recipe), seed, fold) for t in chosen for v in t.variants if not v.trained_as
            for seed in profile.seeds for fold in profile.folds}
    stored = None if recompute else [stored_rows(key, profile) for key in keys]
    if stored is not None and all(rows is not None for rows in stored):
        missing = {v.name for t in chosen for v in t.variants} - {m for rows in stored for m in rows["method"]}
        if missing:  # written by a reproduce from before these rows existed
            print(f"The stored results lack the rows {sorted(missing)}: computing the tables here instead.")
            stored = None
    if stored is not None and all(rows is not None for rows in stored):
        print(f"Stored results of `make reproduce` (profile {profile.name}): "
              f"{', '.join(f'results/{k}.csv' for k in keys)}, read-only. recompute=True (RECOMPUTE = True in a "
              f"notebook) trains and evaluates the {len(runs)} runs here instead (about a minute each on a 2-core "
              "CPU; runs that `make reproduce` or an earlier recompute left in runs/ are reused).")
        frames = stored
    else:
        print(f"Training and evaluating {len(runs)} runs (profile {profile.name}; finished ones are reused)")
        frames = [table_rows(t, profile, progress=True) for t in chosen]
    # A row shared by several tables (MSPF's full model) is in each of their CSVs.
    rows = pd.concat(frames, ignore_index=True)
    return rows.drop_duplicates(["method", "fold", "shot", "train_seed", "seed", "class"], ignore_index=True)


@dataclass
class Job:
    """One training run and the evaluations of every table row that uses its weights."""

    slug: str
    fold: int
    seed: int
    model: str
    #: ``{table key: [row names]}``
    rows: dict[str, list[str]] = field(default_factory=dict)


def plan_jobs(profile: Profile) -> list[Job]:
    by_key: dict[tuple, Job] = {}
    for table in tables(profile.benchmark):
        names = {v.name: v for v in table.variants}
        for variant in table.variants:
            trained = names[variant.trained_as] if variant.trained_as else variant
            for fold in profile.folds:
                for seed in profile.seeds:
                    key = (_slug(trained, profile.recipe), fold, seed)
                    job = by_key.setdefault(key, Job(key[0], fold, seed, trained.model))
                    job.rows.setdefault(table.key, []).append(variant.name)
    # Slowest first, so that two workers finish together (MSDNet and SSP train the longest).
    return sorted(by_key.values(), key=lambda j: (-method_record(j.model).job_cost, j.seed, j.fold))


def run_job(job: Job, profile: Profile) -> list[str]:
    """Train and evaluate one job (in a worker process); returns the failures as messages."""
    import torch

    torch.set_num_threads(1)
    if profile.name == "fast":
        os.environ["FSSLIB_FAST"] = "1"
    by_key = {t.key: t for t in tables(profile.benchmark)}
    failures = []
    for table_key, names in job.rows.items():
        table = by_key[table_key]
        rows_of = {v.name: v for v in table.variants}
        try:
            rows = run_ablation([rows_of[n] for n in names] + _trained_rows(table, names), fold=job.fold,
                                seeds=(job.seed,), protocol=protocol_of(profile),
                                results=evaluations_dir(profile), progress=False,
                                recipe_args=profile.recipe, benchmark=profile.benchmark)
            failures += [f"{table.title} / {name} (fold {job.fold}, seed {seed}): {message}"
                         for name, seed, message, _ in rows.attrs.get("failures", [])]
        except Exception as error:  # noqa: BLE001 - reported at the end, the other jobs go on
            failures.append(f"{table.title} / {names} (fold {job.fold}, seed {job.seed}): "
                            f"{type(error).__name__}: {error}")
    return failures


def _trained_rows(table: Table, names: list[str]) -> list[Variant]:
    """Rows that ``names`` evaluate with the weights of (``trained_as``) but are not listed themselves."""
    by_name = {v.name: v for v in table.variants}
    extra = {by_name[n].trained_as for n in names if by_name[n].trained_as} - set(names)
    return [by_name[n] for n in sorted(extra)]


def _run_job_star(args):
    return run_job(*args)


def run_jobs(jobs: list[Job], profile: Profile, workers: int) -> list[str]:
    from tqdm.auto import tqdm

    failures: list[str] = []
    if workers <= 1:
        for job in tqdm(jobs, desc="training runs"):
            failures += run_job(job, profile)
        return failures
    # Workers are fresh interpreters (spawn) with one intra-op thread each.
    os.environ["OMP_NUM_THREADS"] = "1"
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, maxtasksperchild=1) as pool:
        for result in tqdm(pool.imap_unordered(_run_job_star, [(job, profile) for job in jobs]), total=len(jobs),
                           desc=f"training runs ({workers} workers)"):
            failures += result
    return failures


# ---------------------------------------------------------------------- entry point
def draw_example_episodes(source, fold: int = 0, n: int = 4, seed: int = 0):
    """A few 1-shot and one 2-way 2-shot test episodes of ``fold``: the grid notebook 01 also draws."""
    pool = EpisodePool.for_fold(source, fold, "val")
    transform = eval_transform(DEFAULT_SIZES["synthetic"])
    one_shot = EpisodeDataset(pool, transform, shot=1, episodes=sample_episodes(pool, n - 1, shot=1, seed=seed))
    two_way = EpisodeDataset(pool, transform, shot=2, way=2,
                             episodes=sample_episodes(pool, 1, shot=2, way=2, seed=seed))
    items = [one_shot[i] for i in range(len(one_shot))] + [two_way[0]]
    return episode_grid(items, synthetic_class_name, title=f"synthetic benchmark, fold {fold} test episodes")


def reproduce(profile_name: str | None = None, jobs: int | None = None) -> list[str]:
    """Run the whole pipeline of ``profile_name`` (None: :func:`default_profile_name`); returns
    the failures (also printed)."""
    from ..engine.pretrain import pretrained_backbone

    chosen = profile_name is None
    profile_name = default_profile_name() if chosen else profile_name
    if profile_name not in PROFILES:
        raise ValueError(f"--profile must be one of {sorted(PROFILES)}, got {profile_name!r}")
    profile = PROFILES[profile_name]
    how = ("chosen because torch sees a CUDA device" if profile_name == "gpu" else "no CUDA device") if chosen \
        else "as asked"
    print(f"profile {profile.name} ({how}): fold(s) {list(profile.folds)}, training seeds {list(profile.seeds)}, "
          f"{profile.episodes} test episodes per shot, {jobs or profile.jobs} worker process(es)", flush=True)
    if profile.name == "fast":
        os.environ["FSSLIB_FAST"] = "1"
    start = time.perf_counter()
    if profile.benchmark == "synthetic":
        source = prepare_synthetic()
        print(f"synthetic benchmark at {source.root} ({time.perf_counter() - start:.0f} s)")
        print(f"classes: {source.num_classes} part arrangements, appearance modes from one shared palette")
        print("images per split:", ", ".join(f"{k} {v}" for k, v in split_sizes(source).items()))
        print(fold_summary(source).to_string())
        drawn = save_figure(draw_example_episodes(source), "episodes.png", close=True, folder=figures_of(profile))
        print(f"wrote {drawn}")
        for fold in profile.folds:
            pretrained_backbone(fold, 0)
        print(f"pre-trained backbones ready ({time.perf_counter() - start:.0f} s)")
    else:
        source = build_source(profile.benchmark)  # a missing or incomplete dataset is named here
        print(f"{profile.benchmark} at {source.root}; the papers' recipes from ImageNet weights")
        print(fold_summary(source).to_string())

    planned = plan_jobs(profile)
    print(f"{len(planned)} training runs ({len(profile.folds)} fold(s) x {len(profile.seeds)} seed(s)), "
          f"recipe changes: {profile.recipe or 'none'}")
    failures = run_jobs(planned, profile, jobs if jobs is not None else profile.jobs)
    print(f"training and evaluation done ({time.perf_counter() - start:.0f} s)")

    listed = tables(profile.benchmark)
    main = next((t for t in listed if t.key == "main"), None)
    if main is not None:
        measure_main_rows(profile, source, main)
    write_report(profile, listed)
    elapsed = time.perf_counter() - start
    print(f"reproduce --profile {profile.name}: {elapsed / 60:.1f} min wall time")
    if failures:
        print(f"\n{len(failures)} failure(s):")
        for message in failures:
            print(f"FAILED {message}")
    return failures
