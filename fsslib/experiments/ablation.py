"""Ablations as data: variants of a recipe, trained over seeds, evaluated on identical episodes.

A :class:`Variant` is a method with config overrides. Training-time switches need their own
training runs; inference-time switches (self-support at test, weak supports, N-way) reuse the
weights of another variant (``trained_as``) and only change the evaluation.

Pairing is what makes small effects visible: training seed ``k`` draws the identical training
episode stream for every variant (``EpisodeDataset`` items are a function of ``(seed, index)``)
and starts from the same pre-trained backbone, and every model answers the identical test
episodes. The difference of a variant to its reference is therefore computed per training seed,
and its 95% interval is over those paired differences. A row whose interval contains zero is
*not resolved*: the experiment cannot tell the two apart.

Finished runs and evaluations are stored and reused, so an interrupted ablation continues where
it stopped; a failed variant is reported and the others still complete.
"""
from __future__ import annotations

import hashlib
import json
import re
import traceback
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from ..data import build_source
from ..engine.episodic import train_fewshot
from ..engine.protocol import EPISODE_COLUMNS, EvalProtocol, evaluate
from ..engine.statistics import class_wise_miou, interval95, paired_difference, with_interval
from ..engine.trainer import TrainConfig, runs_dir
from ..models.registry import config_fields, method_record
from ..runtime import mode_suffix
from .configs import real_data_recipe, synthetic_recipe


@dataclass(frozen=True)
class Variant:
    """One row of an ablation table."""

    name: str
    model: str
    #: Config fields of the method used for training (and evaluation unless ``eval_args`` says otherwise).
    model_args: dict = field(default_factory=dict)
    #: TrainConfig overrides (e.g. ``{"shot": 5}``, ``{"steps": 2000}``).
    train_args: dict = field(default_factory=dict)
    #: Config fields flipped on the trained model before evaluation (inference-time switches).
    eval_args: dict = field(default_factory=dict)
    #: Protocol overrides for this row only (e.g. ``{"support_annotation": "box"}``, ``{"way": 2}``).
    protocol_args: dict = field(default_factory=dict)
    #: Name of the variant whose trained weights this one evaluates (no training of its own).
    trained_as: str | None = None


def method_recipe(recipe_args: dict | None, model: str) -> dict:
    """The TrainConfig changes ``recipe_args`` make for ``model``: its common entries, then those
    under ``"by_method"`` for this model (e.g. a higher learning rate for the heads that a short
    recipe would otherwise leave untrained)."""
    recipe = dict(recipe_args or {})
    by_method = recipe.pop("by_method", {})
    return {**recipe, **by_method.get(model, {})}


#: Longest readable part of a run or evaluation name (the digest after it keeps names unique).
LABEL_CHARS = 80


def _shown(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (tuple, list)):
        return ".".join(map(_shown, value))
    return re.sub(r"[^A-Za-z0-9._-]", "", str(value))


def describe(changes: dict) -> str:
    """``{"par_weight": 0.0, "refine": False}`` -> ``par_weight=0.0+refine=off`` (path-safe, at most
    :data:`LABEL_CHARS` characters)."""
    return "+".join(f"{key}={_shown(value)}" for key, value in sorted(changes.items()))[:LABEL_CHARS]


def training_label(variant: Variant) -> str:
    """What sets the variant's run apart from its method's synthetic recipe: the model arguments that
    differ from the method's defaults and table head sizes, and the training overrides ("" if none)."""
    defaults = {**config_fields(variant.model), **method_record(variant.model).synthetic_head}
    changed = {k: v for k, v in variant.model_args.items() if k not in defaults or defaults[k] != v}
    return describe({**changed, **variant.train_args})


def _digest(fields_: dict) -> str:
    return hashlib.sha1(json.dumps(fields_, sort_keys=True, default=str).encode()).hexdigest()[:8]


def _slug(variant: Variant, recipe_args: dict | None = None, readable: bool = True) -> str:
    """Run name: the method, what sets the variant apart (:func:`training_label`), and a digest of
    every training-relevant field (unique). ``recipe_args`` (a profile's changes to the recipe, e.g.
    fewer steps) enter the digest only when they change this method's recipe, so the runs of the
    standard recipe keep their names. ``readable=False``: the names of earlier versions (digest only)."""
    fields_ = {"model": variant.model, "model_args": variant.model_args, "train_args": variant.train_args}
    recipe = method_recipe(recipe_args, variant.model)
    if recipe:
        fields_["recipe"] = recipe
    label = training_label(variant) if readable else ""
    return "-".join(part for part in (variant.model, label, _digest(fields_)) if part)


def _adopt(path: Path, earlier: Path) -> Path:
    """``path``, after renaming ``earlier`` (the same run or evaluation under an earlier version's
    name) to it, so that finished work is reused rather than redone."""
    if not path.exists() and earlier.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        earlier.rename(path)
    return path


def variant_run_dir(variant: Variant, fold: int, seed: int, pretrain_seed: int = 0,
                    recipe_args: dict | None = None, benchmark: str = "synthetic") -> Path:
    """Where the training run of ``variant`` for one seed lives:
    ``runs/ablation/<method>-<label>-<digest>-fold<f>-seed<s>-pre<p>`` (see :func:`_slug`)."""
    def name(readable: bool) -> str:
        if benchmark != "synthetic":  # ImageNet weights, no pre-training seed
            return f"{benchmark}/{_slug(variant, recipe_args, readable)}-fold{fold}-seed{seed}"
        return f"{_slug(variant, recipe_args, readable)}-fold{fold}-seed{seed}-pre{pretrain_seed}{mode_suffix()}"

    return _adopt(runs_dir() / "ablation" / name(True), runs_dir() / "ablation" / name(False))


def results_dir(name: str) -> Path:
    """``results/<name>`` beside the runs folder (``$FSSLIB_RUNS/../results`` in tests)."""
    return runs_dir().parent / "results" / name


def train_config(variant: Variant, fold: int, seed: int, pretrain_seed: int = 0, recipe_args: dict | None = None,
                 benchmark: str = "synthetic", source=None) -> TrainConfig:
    """The TrainConfig of ``variant``: the benchmark's recipe, then ``recipe_args`` (a profile's
    changes, see :func:`method_recipe`; their ``model_args`` are merged into the model's), then
    the variant's ``train_args``. A method without episodic training keeps 0 steps."""
    if benchmark == "synthetic":
        config = synthetic_recipe(variant.model, fold=fold, seed=seed, pretrain_seed=pretrain_seed,
                                  **variant.model_args)
    else:
        config = real_data_recipe(variant.model, benchmark, fold=fold, seed=seed, source=source, **variant.model_args)
    recipe = method_recipe(recipe_args, variant.model)
    model_args = {**config.model_args, **recipe.pop("model_args", {})}
    if not method_record(variant.model).episodic_training:  # a profile's step count does not apply
        recipe["steps"] = 0
    return replace(config, **recipe, **variant.train_args, model_args=model_args)


def train_variant(variant: Variant, fold: int, seed: int, pretrain_seed: int = 0, progress: bool = False,
                  recipe_args: dict | None = None, benchmark: str = "synthetic", source=None):
    """Train (or load) ``variant`` for one training seed; returns the model."""
    config = train_config(variant, fold, seed, pretrain_seed, recipe_args, benchmark, source)
    return train_fewshot(config, variant_run_dir(variant, fold, seed, pretrain_seed, recipe_args, benchmark),
                         progress=progress, source=source)


def run_ablation(variants: list[Variant], fold: int = 0, seeds=(0, 1, 2), protocol: EvalProtocol = EvalProtocol(),
                 results: str | Path | None = None, pretrain_seed: int = 0, progress: bool = True,
                 recipe_args: dict | None = None, benchmark: str = "synthetic", episodes: bool = False,
                 stored_only: bool = False) -> pd.DataFrame:
    """Train every variant for every seed, evaluate it, and return the IoU rows of all of them.

    Rows carry ``train_seed`` beside the protocol's evaluation ``seed``. With ``results`` (a
    folder) every (variant, seed) evaluation is saved as CSV and reused on the next call.
    ``recipe_args`` change the training recipe of every variant (a reproduce profile's steps).
    ``benchmark``: "synthetic" (its recipe, from the pre-trained small backbone) or a real one
    (the papers' recipes, see :func:`~fsslib.experiments.configs.real_data_recipe`).
    ``episodes``: return the per-episode rows instead (``protocol.EPISODE_COLUMNS`` and
    ``train_seed``; 1-way rows only), stored beside each evaluation as ``*.episodes.csv``.
    ``stored_only``: read the stored evaluations of ``results`` and nothing else (no model is
    trained or loaded); a missing one is a failure. Failures are listed in ``rows.attrs["failures"]``.
    """
    from tqdm.auto import tqdm

    by_name = {v.name: v for v in variants}
    missing = [v.trained_as for v in variants if v.trained_as and v.trained_as not in by_name]
    if missing:
        raise ValueError(f"trained_as names unknown variants: {missing}")
    results = Path(results) if results else None
    if results:
        results.mkdir(parents=True, exist_ok=True)
    source = build_source(benchmark)
    frames: dict[int, pd.DataFrame] = {}
    failures = []
    jobs = [(v, s) for s in seeds for v in variants]
    weights_of = {v.name: v.trained_as or v.name for v in variants}
    # Rows evaluating the same weights run one after another and share the test features; the
    # tables keep the order of ``variants`` (frames are put back in job order at the end).
    rank = {weights: i for i, weights in enumerate(dict.fromkeys(weights_of.values()))}
    order = sorted(range(len(jobs)), key=lambda i: (jobs[i][1], rank[weights_of[jobs[i][0].name]]))
    caches, cached_weights = {}, None
    for index in tqdm(order, desc="ablation", disable=not progress):
        variant, seed = jobs[index]
        cached = (evaluation_path(results, variant, protocol, fold, seed, pretrain_seed, recipe_args)
                  if results else None)
        wanted = episode_path(cached) if (cached and episodes) else cached
        if wanted and wanted.exists():
            frames[index] = pd.read_csv(wanted).assign(method=variant.name)
            continue
        if stored_only:
            failures.append((variant.name, seed, f"no stored evaluation {wanted}", ""))
            continue
        if cached_weights != (weights_of[variant.name], seed):
            caches, cached_weights = {}, (weights_of[variant.name], seed)
        try:
            trained = by_name[variant.trained_as] if variant.trained_as else variant
            model = train_variant(trained, fold, seed, pretrain_seed, recipe_args=recipe_args, benchmark=benchmark,
                                  source=source)
            for key, value in variant.eval_args.items():
                if not hasattr(model.config, key):
                    raise ValueError(f"eval_args key '{key}' is not a config field of {variant.model}")
                setattr(model.config, key, value)
            row_protocol = replace(protocol, **variant.protocol_args)
            episode_rows = [] if row_protocol.way == 1 else None
            rows = evaluate(model, source, fold, row_protocol, method=variant.name, caches=caches,
                            episode_rows=episode_rows)
            rows.insert(3, "train_seed", seed)
            rows["pretrain_seed"] = pretrain_seed
            per_episode = pd.DataFrame(episode_rows or [], columns=EPISODE_COLUMNS)
            per_episode.insert(3, "train_seed", seed)
        except Exception as error:  # one broken variant must not lose the others' work
            failures.append((variant.name, seed, f"{type(error).__name__}: {error}", traceback.format_exc()))
            continue
        if cached:
            if episode_rows is not None:  # first: the class rows' file marks the evaluation complete
                per_episode.to_csv(episode_path(cached), index=False)
            rows.to_csv(cached, index=False)
        frames[index] = per_episode if episodes else rows
    for name, seed, message, _ in failures:
        print(f"FAILED {name} (seed {seed}): {message}")
    if not frames:
        raise RuntimeError("every variant failed: " + "; ".join(f"{name} (seed {seed}): {message}"
                                                                for name, seed, message, _ in failures))
    out = pd.concat([frames[i] for i in sorted(frames)], ignore_index=True)
    out.attrs["failures"] = failures
    return out


def evaluation_path(results: str | Path, variant: Variant, protocol: EvalProtocol, fold: int, seed: int,
                    pretrain_seed: int = 0, recipe_args: dict | None = None) -> Path:
    """The CSV in which ``run_ablation`` stores (and finds) one evaluation of one training seed:
    the run's name, what the evaluation changes (test-time switches, protocol overrides) and a
    digest of the whole protocol."""
    def name(readable: bool) -> str:
        evaluation = describe({**variant.eval_args, **variant.protocol_args}) if readable else ""
        parts = [_slug(variant, recipe_args, readable), evaluation, _eval_key(variant, protocol)]
        return "-".join(p for p in parts if p) + f"-fold{fold}-seed{seed}-pre{pretrain_seed}{mode_suffix()}.csv"

    path, earlier = Path(results) / name(True), Path(results) / name(False)
    if not path.exists() and earlier.exists():
        _adopt(episode_path(path), episode_path(earlier))
    return _adopt(path, earlier)


def episode_path(evaluation: Path) -> Path:
    """The per-episode rows stored beside an evaluation's class rows."""
    return evaluation.with_name(evaluation.stem + ".episodes.csv")


def _eval_key(variant: Variant, protocol: EvalProtocol) -> str:
    key = json.dumps({"eval": variant.eval_args, "protocol": asdict(replace(protocol, **variant.protocol_args)),
                      "trained_as": variant.trained_as}, sort_keys=True, default=str)
    return hashlib.sha1(key.encode()).hexdigest()[:8]


def per_training_seed(rows: pd.DataFrame) -> pd.DataFrame:
    """mIoU per (method, fold, shot, train_seed): class-wise IoU accumulated over evaluation seeds."""
    return class_wise_miou(rows, ["method", "fold", "shot", "train_seed"]).reset_index()


def ablation_table(rows: pd.DataFrame, reference: str | dict[str, str]) -> pd.DataFrame:
    """Mean mIoU with its 95% interval over training seeds, and the paired difference to a reference.

    ``reference`` is a variant name, or ``{variant: its reference}`` for tables with several.
    """
    scores = per_training_seed(rows)
    out = []
    for (method, fold, shot), group in scores.groupby(["method", "fold", "shot"], sort=False):
        mean, half = interval95(group["miou"])
        ref = reference.get(method) if isinstance(reference, dict) else reference
        row = dict(method=method, fold=fold, shot=shot, seeds=len(group), miou=mean, miou_ci95=half)
        if ref and ref != method:
            base = scores[(scores.method == ref) & (scores.fold == fold) & (scores.shot == shot)]
            paired = paired_difference(group.set_index("train_seed")["miou"], base.set_index("train_seed")["miou"])
            row.update(reference=ref, diff=paired.mean, diff_ci95=paired.half, resolved=paired.resolved)
        out.append(row)
    return pd.DataFrame(out)


def shot_gain_table(rows: pd.DataFrame, low: int = 1, high: int = 5) -> pd.DataFrame:
    """``high``-shot minus ``low``-shot mIoU of every method, paired per training seed, with its
    95% interval. The protocol's episode lists are shot-paired (``data.sample_episodes``: the same
    queries, the ``low``-shot supports the first of the ``high``-shot ones)."""
    scores = per_training_seed(rows)
    out = []
    for (method, fold), group in scores.groupby(["method", "fold"], sort=False):
        by_shot = group.pivot(index="train_seed", columns="shot", values="miou")
        if low not in by_shot or high not in by_shot:
            continue
        paired = paired_difference(by_shot[high], by_shot[low])
        out.append(dict(method=method, fold=fold, comparison=f"{high}-shot minus {low}-shot", seeds=paired.n,
                        diff=paired.mean, diff_ci95=paired.half, resolved=paired.resolved))
    return pd.DataFrame(out)


def format_ablation(table: pd.DataFrame) -> str:
    """Markdown table: mIoU ± interval, difference to the reference ± interval, resolved or not."""
    lines = ["| variant | shot | seeds | mIoU | vs reference | |", "|---|---|---|---|---|---|"]
    for r in table.itertuples():
        has_ref = not pd.isna(getattr(r, "diff", np.nan))
        diff = f"{with_interval(r.diff, r.diff_ci95, 2, sign=True)} ({r.reference})" if has_ref else ""
        flag = "" if not has_ref or r.resolved else "not resolved"
        lines.append(f"| {r.method} | {r.shot} | {r.seeds} | {with_interval(r.miou, r.miou_ci95)} | {diff} | {flag} |")
    return "\n".join(lines)
