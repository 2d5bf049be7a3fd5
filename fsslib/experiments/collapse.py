"""``python -m fsslib collapse``: which remedy keeps the prior-mask heads out of the all-background solution.

In the default profile's short recipe (150 steps of 4 episodes) the PFENet and MSPF heads, trained
from scratch on frozen features, end some training seeds predicting background everywhere: the
foreground is a few percent of the pixels, so the query loss falls while no pixel crosses 1/2.
This study trains each candidate remedy on the same heads, the same training streams (seeds) and
the same test episodes, and prints per candidate the *collapse rate* (training seeds below
:data:`COLLAPSED` mIoU), the mean with its 95% interval, and the seeds that score below half of
ProtoNet's mIoU on the same seed (the default profile's acceptance rule).

The candidates are fixed here before any result is seen; each is a config switch of the method
(``model_args``) or of the training run (``train_args``), applied to every head alike.
"""
from __future__ import annotations

import multiprocessing
import os
from dataclasses import replace

import pandas as pd

from ..engine.protocol import EvalProtocol
from ..engine.statistics import interval95, with_interval
from ..engine.trainer import runs_dir
from ..models.registry import config_fields
from .ablation import Variant, per_training_seed, run_ablation
from .tables.main import PROTONET
from .tables.mspf import MSPF_FULL, MSPF_TABLE3, PFENET

#: mIoU below which a training seed counts as collapsed (all-background scores 0).
COLLAPSED = 5.0
#: The heads that collapsed in the default profile: PFENet, the full MSPF, and MSPF's
#: "multi-scale prior + ASPP" row (dropout 0.5 on every ASPP branch; 0 mIoU on all three seeds).
HEADS = (PFENET, MSPF_FULL, MSPF_TABLE3[2])
#: ``{name: (model_args, train_args)}``, each on top of the authors' head (:data:`AUTHORS_HEAD`,
#: whatever the synthetic recipe turns on). Warm-up: the first 10% of the 150 steps. The shortcut
#: starts at a = 3, so that a prior of 1 gives the foreground logit a lead of 1.5 (82%).
AUTHORS_HEAD = {"prior_shortcut": None, "foreground_weight": 1.0}
CANDIDATES = {
    "authors' head": ({}, {}),
    "warm-up": ({}, {"warmup_steps": 15}),
    "dropout 0.1": ({"projection_dropout": 0.1}, {}),
    "foreground weight 3": ({"foreground_weight": 3.0}, {}),
    "prior shortcut": ({"prior_shortcut": 3.0}, {}),
    "prior shortcut + warm-up": ({"prior_shortcut": 3.0}, {"warmup_steps": 15}),
}


def candidate_variants(candidates: dict | None = None) -> list[Variant]:
    """ProtoNet (the reference of the acceptance rule), then every head under every candidate."""
    variants = [PROTONET]
    for head in HEADS:
        for name, (model_args, train_args) in (candidates or CANDIDATES).items():
            args = {**AUTHORS_HEAD, **model_args}
            if "aspp_dropout" in config_fields(head.model) and "projection_dropout" in args:
                args["aspp_dropout"] = args["projection_dropout"]  # the ASPP's dropout is the same 0.5
            variants.append(replace(head, name=f"{head.name} | {name}",
                                    model_args={**head.model_args, **args}, train_args=dict(train_args)))
    return variants


def _run_one(args) -> pd.DataFrame:
    variant, seed, recipe, protocol = args
    import torch

    torch.set_num_threads(1)
    return run_ablation([variant], seeds=(seed,), protocol=protocol, results=runs_dir() / "evaluations" / "collapse",
                        progress=False, recipe_args=recipe)


def run_study(seeds=(0, 1, 2, 3, 4), jobs: int = 2, episodes: int = 300, candidates: dict | None = None,
              recipe: dict | None = None) -> pd.DataFrame:
    """Train and evaluate every (variant, seed) in ``jobs`` processes; returns mIoU per training seed.

    ``recipe``: the profile's changes to the standard recipe (default: the default profile's,
    without its per-method learning rates for these heads being changed).
    """
    from tqdm.auto import tqdm

    from ..data import prepare_synthetic
    from ..engine.pretrain import pretrained_backbone
    from .profiles import DEFAULT_RECIPE

    prepare_synthetic()
    pretrained_backbone(0, 0)  # once, before the workers need it

    recipe = DEFAULT_RECIPE if recipe is None else recipe
    protocol = EvalProtocol(episodes=episodes, seeds=(0,), shots=(1,))
    work = [(v, s, recipe, protocol) for v in candidate_variants(candidates) for s in seeds]
    if jobs <= 1:
        frames = [_run_one(w) for w in tqdm(work, desc="collapse study")]
    else:
        os.environ["OMP_NUM_THREADS"] = "1"
        with multiprocessing.get_context("spawn").Pool(jobs, maxtasksperchild=1) as pool:
            frames = list(tqdm(pool.imap(_run_one, work), total=len(work), desc=f"collapse study ({jobs} workers)"))
    return per_training_seed(pd.concat(frames, ignore_index=True))


def collapse_table(scores: pd.DataFrame) -> pd.DataFrame:
    """Per variant: seeds, collapsed seeds, seeds below half of ProtoNet's mIoU, mean ± interval, per-seed mIoU."""
    reference = scores[scores.method == PROTONET.name].set_index("train_seed")["miou"]
    out = []
    for method, group in scores.groupby("method", sort=False):
        mean, half = interval95(group["miou"])
        below_half = sum(m < 0.5 * reference.get(s, float("nan")) for s, m in zip(group.train_seed, group.miou))
        head, _, candidate = method.partition(" | ")
        out.append(dict(head=head, candidate=candidate or "-", seeds=len(group),
                        collapsed=int((group["miou"] < COLLAPSED).sum()), below_half_protonet=int(below_half),
                        miou=with_interval(mean, half),
                        per_seed=" / ".join(f"{m:.1f}" for m in group.sort_values("train_seed")["miou"])))
    return pd.DataFrame(out)


def format_collapse_table(table: pd.DataFrame) -> str:
    lines = ["| head | candidate | seeds | collapsed (< 5 mIoU) | below half of ProtoNet | mIoU | per seed |",
             "|---|---|---|---|---|---|---|"]
    for r in table.itertuples():
        lines.append(f"| {r.head} | {r.candidate} | {r.seeds} | {r.collapsed}/{r.seeds} | "
                     f"{r.below_half_protonet}/{r.seeds} | {r.miou} | {r.per_seed} |")
    return "\n".join(lines)
