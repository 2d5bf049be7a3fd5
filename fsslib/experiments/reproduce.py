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
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from ..analysis.plotting import episode_grid, save_figure
from ..data import (DEFAULT_SIZES, EpisodeDataset, EpisodePool, build_source, eval_transform, prepare_synthetic,
                    sample_episodes, synthetic_class_name)
from ..data.summary import fold_summary, split_sizes
from ..engine.protocol import EvalProtocol
from ..engine.trainer import runs_dir
from ..runtime import fast_mode
from .ablation import Variant, _slug, run_ablation


@dataclass(frozen=True)
class Profile:
    name: str
    folds: tuple[int, ...]
    seeds: tuple[int, ...]
    #: TrainConfig overrides of the standard recipe ({} = the standard recipe).
    recipe: dict = field(default_factory=dict)
    episodes: int = 1000
    shots: tuple[int, ...] = (1, 5)
    jobs: int = 2
    #: "synthetic", or a real benchmark ("pascal5i", "coco20i") under ``$FSSLIB_DATA``: the papers'
    #: recipes from ImageNet weights (see ``configs.real_data_recipe``), meant for a GPU.
    benchmark: str = "synthetic"
    #: Test image size; None = the benchmark's usual size (synthetic 128, PASCAL/COCO 473).
    image_size: int | None = None


#: ``default`` fits 57 training runs and 132 evaluations in 45 minutes of a 2-core CPU (30 minutes
#: measured on a fresh clone, benchmark v3): 150 steps of 4 episodes instead of 1000 of 8 (7.5% of
#: the standard recipe's training episodes), and 300 test episodes per shot instead of 1000. On the
#: previous benchmark, in so few steps the PFENet and MSPF heads, trained from scratch at the
#: standard 5e-4, predicted background everywhere for every seed (0 mIoU, measured); at 2e-3 some
#: seeds still did, until the synthetic recipe's prior shortcut (``configs.METHOD_HEAD``, chosen by
#: ``python -m fsslib collapse``). MSDNet takes 1e-3 (44 mIoU vs 38 at 5e-4, previous benchmark).
#: ``fast`` runs the FSSLIB_FAST recipe (6 steps of 2 episodes) on the tiny benchmark.
DEFAULT_RECIPE = {"steps": 150, "batch_size": 4,
                  "by_method": {"pfenet": {"lr": 2e-3}, "mspf": {"lr": 2e-3}, "msdnet": {"lr": 1e-3}}}
PROFILES = {
    "fast": Profile("fast", folds=(0,), seeds=(0,), episodes=8, shots=(1, 5), jobs=1),
    "default": Profile("default", folds=(0,), seeds=(0, 1, 2), recipe=DEFAULT_RECIPE, episodes=300),
    "full": Profile("full", folds=(0, 1, 2, 3), seeds=(0, 1, 2)),
    # A CUDA machine: the default profile's tables with the standard recipe (1000 steps of 8
    # episodes) and 1000 test episodes per shot; four worker processes share the GPU.
    "gpu": Profile("gpu", folds=(0,), seeds=(0, 1, 2), jobs=4),
    # Real data (a GPU, the datasets and the ImageNet weights supplied by the user): the same
    # tables with each paper's recipe, one training seed, 1000 test episodes per shot and fold.
    "pascal5i": Profile("pascal5i", folds=(0, 1, 2, 3), seeds=(0,), jobs=1, benchmark="pascal5i"),
    "coco20i": Profile("coco20i", folds=(0, 1, 2, 3), seeds=(0,), jobs=1, benchmark="coco20i"),
}


def results_root(profile: Profile) -> Path:
    """``results/`` for the default profile (what the README shows), ``results/<profile>/`` otherwise."""
    root = runs_dir().parent / "results"
    return root if profile.name == "default" else root / profile.name


def evaluations_dir(profile: Profile) -> Path:
    """Where the evaluation of each run is stored for reuse: working state beside the runs (never
    committed), so that a fresh clone trains and evaluates everything; ``results/`` holds the outputs."""
    return runs_dir() / "evaluations" / profile.name


def notebook_profile() -> Profile:
    """The profile a notebook follows: ``fast`` in fast mode (the tests), else ``default``. A
    notebook trains the profile's runs (the same folders as ``make reproduce``, so either reuses
    the other's) and shows the profile's stored tables."""
    return PROFILES["fast" if fast_mode() else "default"]


def stored_rows(key: str, profile: Profile) -> pd.DataFrame | None:
    """``results/<key>.csv`` as ``reproduce --profile <profile>`` wrote it (committed for the
    default profile), or None. A read-only reference: it is shown, never used in place of a run."""
    path = results_root(profile) / f"{key}.csv"
    return pd.read_csv(path) if path.exists() else None


def stored_or_computed(keys: list[str], profile: Profile, recompute: bool = False) -> pd.DataFrame:
    """IoU rows of the tables ``keys``: the stored ones unless ``recompute`` (or none are stored),
    else trained and evaluated here, with the profile's recipe and protocol (and reused afterwards).
    Says which it did and what recomputing costs."""
    chosen = [t for t in tables() if t.key in keys]
    runs = {(_slug(v, profile.recipe), seed, fold) for t in chosen for v in t.variants if not v.trained_as
            for seed in profile.seeds for fold in profile.folds}
    stored = None if recompute else [stored_rows(key, profile) for key in keys]
    if stored is not None and all(rows is not None for rows in stored):
        print(f"Stored results of `make reproduce` (profile {profile.name}): "
              f"{', '.join(f'results/{k}.csv' for k in keys)}, read-only. recompute=True (RECOMPUTE = True in a "
              f"notebook) trains and evaluates the {len(runs)} runs here instead (about a minute each on a 2-core "
              "CPU; runs that `make reproduce` or an earlier recompute left in runs/ are reused).")
        frames = stored
    else:
        from .report import table_rows

        print(f"Training and evaluating {len(runs)} runs (profile {profile.name}; finished ones are reused)")
        frames = [table_rows(t, profile, progress=True) for t in chosen]
    # A row shared by several tables (MSPF's full model) is in each of their CSVs.
    rows = pd.concat(frames, ignore_index=True)
    return rows.drop_duplicates(["method", "fold", "shot", "train_seed", "seed", "class"], ignore_index=True)


# ---------------------------------------------------------------------- the tables
@dataclass(frozen=True)
class Table:
    key: str
    title: str
    variants: list[Variant]
    references: dict[str, str]


def reference_rows(reference: Variant) -> list[Variant]:
    """The two reference rows every table carries, evaluated with its reference row's weights:

    - the **oracle**: the query's own ground-truth mask as the support (1-shot), the ceiling of
      matching a prototype to these features at this resolution, whatever the supports show;
    - **logit-averaged shots**: the mean of the K one-shot predictions in place of the method's own
      fusion of K supports (a prototype average for the prototype methods), at 5 shots (at 1 shot
      it is the reference row itself).
    """
    weights = reference.trained_as or reference.name
    return [replace(reference, name=f"{reference.name}: oracle support", trained_as=weights,
                    protocol_args={**reference.protocol_args, "supports": "oracle", "shots": (1,)}),
            replace(reference, name=f"{reference.name}: logit-averaged shots", trained_as=weights,
                    protocol_args={**reference.protocol_args, "shot_fusion": "logit_mean", "shots": (5,)})]


def with_reference_rows(variants: list[Variant], references: dict[str, str]) -> tuple[list[Variant], dict[str, str]]:
    """``variants`` and ``references`` with :func:`reference_rows` of the first (reference) row appended."""
    extra = reference_rows(variants[0])
    return [*variants, *extra], {**references, **{v.name: variants[0].name for v in extra}}


def tables() -> list[Table]:
    """Every table of ``results/tables.md``, in order (the main comparison first), each with its
    :func:`reference_rows`."""
    from .tables.main import MAIN_REFERENCES, MAIN_VARIANTS
    from .tables.mspf import MSPF_TABLES
    from .tables.panet import PANET_REFERENCES, PANET_VARIANTS
    from .tables.ssp import SSP_REFERENCES, SSP_VARIANTS

    mspf_titles = {"table3": "MSPF Table 3: multi-scale prior and multi-scale fusion",
                   "table4": "MSPF Table 4: interaction between scales",
                   "table5": "MSPF Table 5: auxiliary loss",
                   "pfenet": "MSPF vs PFENet"}
    listed = [("main", "Main comparison", MAIN_VARIANTS, MAIN_REFERENCES),
              ("panet", "PANet: prototype alignment (PAR) and weak annotations", PANET_VARIANTS, PANET_REFERENCES),
              ("ssp", "SSP: self-support components", SSP_VARIANTS, SSP_REFERENCES),
              *[(f"mspf_{key}", mspf_titles[key], variants, refs) for key, (variants, refs) in MSPF_TABLES.items()]]
    return [Table(key, title, *with_reference_rows(variants, refs)) for key, title, variants, refs in listed]


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
    for table in tables():
        names = {v.name: v for v in table.variants}
        for variant in table.variants:
            trained = names[variant.trained_as] if variant.trained_as else variant
            for fold in profile.folds:
                for seed in profile.seeds:
                    key = (_slug(trained, profile.recipe), fold, seed)
                    job = by_key.setdefault(key, Job(key[0], fold, seed, trained.model))
                    job.rows.setdefault(table.key, []).append(variant.name)
    # Slowest first, so that two workers finish together (MSDNet and SSP train the longest).
    cost = {"msdnet": 4, "ssp": 3, "panet": 2, "protonet": 2, "pfenet": 1, "mspf": 1}
    return sorted(by_key.values(), key=lambda j: (-cost.get(j.model, 1), j.seed, j.fold))


def protocol_of(profile: Profile) -> EvalProtocol:
    """One evaluation seed; its episode lists are shot-paired (``data.sample_episodes``)."""
    return EvalProtocol(episodes=profile.episodes, seeds=(0,), shots=profile.shots, image_size=profile.image_size)


def run_job(job: Job, profile: Profile) -> list[str]:
    """Train and evaluate one job (in a worker process); returns the failures as messages."""
    import torch

    torch.set_num_threads(1)
    if profile.name == "fast":
        os.environ["FSSLIB_FAST"] = "1"
    by_key = {t.key: t for t in tables()}
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


def default_profile_name() -> str:
    """``gpu`` where torch sees a CUDA device, else ``default`` (the 2-core CPU profile)."""
    import torch

    return "gpu" if torch.cuda.is_available() else "default"


def reproduce(profile_name: str | None = None, jobs: int | None = None) -> list[str]:
    """Run the whole pipeline of ``profile_name`` (None: :func:`default_profile_name`); returns
    the failures (also printed)."""
    from ..engine.pretrain import pretrained_backbone
    from .report import figures_of, write_report

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

    write_report(profile, source)
    elapsed = time.perf_counter() - start
    print(f"reproduce --profile {profile.name}: {elapsed / 60:.1f} min wall time")
    if failures:
        print(f"\n{len(failures)} failure(s):")
        for message in failures:
            print(f"FAILED {message}")
    return failures
