"""Named experiments: a method and its training recipe, as TrainConfig factories.

Ablations are config variants (``key=value`` overrides), never code edits. On the synthetic
benchmark every method starts from the fold's pre-trained small backbone (see
``engine.pretrain``) with its early stages and BatchNorm frozen and the last stage trainable.
On PASCAL-5i and COCO-20i (:func:`real_data_recipe`) every method follows its paper's or its
authors' recipe (``real_data_recipe`` of its record) from ImageNet weights.
"""
from __future__ import annotations

import math

from ..engine.pretrain import pretrained_backbone
from ..engine.trainer import TrainConfig
from ..models.registry import METHODS, method_record, records
from ..runtime import fast_mode

#: Early stages frozen, BatchNorm frozen, last stage trainable (shared by every synthetic recipe;
#: a method's record says where it departs from this, and why).
SYNTHETIC_BACKBONE = {"backbone": "smallcnn", "frozen_stages": ("layer1", "layer2", "layer3"), "freeze_bn": True}


def synthetic_model_args(model: str) -> dict:
    """The synthetic recipe's model arguments of ``model`` (backbone settings and head switches), without weights."""
    return {**SYNTHETIC_BACKBONE, **method_record(model).synthetic_model_args}


def synthetic_recipe(model: str, fold: int = 0, seed: int = 0, pretrain_seed: int = 0, **model_args) -> TrainConfig:
    """AdamW 5e-4 with a cosine schedule, 1000 steps x 8 one-shot episodes, from the pre-trained backbone
    (0 steps for a method without episodic training)."""
    weights = pretrained_backbone(fold, pretrain_seed)
    steps, batch = (6, 2) if fast_mode() else (1000, 8)
    if not method_record(model).episodic_training:
        steps = 0
    # A record may set its own weights (none: DINOv2's row, which the synthetic tables leave out).
    model_args = {"weights": str(weights), **synthetic_model_args(model), **model_args}
    return TrainConfig(model=model, model_args=model_args,
                       benchmark="synthetic", fold=fold, seed=seed, steps=steps, batch_size=batch, lr=5e-4,
                       schedule="cosine", checkpoint_every=max(steps // 5, 1), log_every=max(steps // 50, 1),
                       **method_record(model).synthetic_training)


def experiment(name: str, **kwargs) -> TrainConfig:
    """The synthetic recipe of method ``name`` (``python -m fsslib train NAME``)."""
    if name not in METHODS:
        raise ValueError(f"unknown experiment '{name}'; valid names: {list(METHODS)} (or a path to a config.json)")
    return synthetic_recipe(name, **kwargs)


# ---------------------------------------------------------------------- real data
#: Benchmark -> the key of the methods' ``REAL_DATA_RECIPE`` dicts.
REAL_BENCHMARKS = {"pascal5i": "pascal", "coco20i": "coco"}
#: Head settings the synthetic tables choose for 128-pixel images (narrow heads, area-resized
#: supports, small ASPP rates); on real data every method keeps its own values for these.
SYNTHETIC_SCALE_ARGS = ("width", "aspp_rates", "support_resize")


def real_data_recipes(model: str) -> dict:
    """``{"pascal": recipe, "coco": recipe}`` of ``model``, from its record."""
    recipe = method_record(model).real_data_recipe
    if recipe is None:
        with_one = [r.name for r in records() if r.real_data_recipe is not None]
        raise ValueError(f"no real-data recipe for '{model}'; methods with one: {with_one}")
    return recipe


def training_queries(source, fold: int, convention: str | None = None) -> int:
    """(image, class) pairs of ``fold``'s training pool: what one epoch of the authors' loaders visits."""
    from ..data import EpisodePool

    pool = EpisodePool.for_fold(source, fold, "train", convention)
    return sum(len(queries) for queries in pool.queries.values())


def real_data_recipe(model: str, benchmark: str, fold: int = 0, seed: int = 0, source=None,
                     **model_args) -> TrainConfig:
    """The paper's recipe of ``model`` on ``benchmark`` (``pascal5i`` or ``coco20i``).

    ``model_args`` are the variant's switches; the synthetic head sizes among them
    (:data:`SYNTHETIC_SCALE_ARGS`) are dropped. Recipes given in epochs become steps with the
    fold's number of training (image, class) pairs, which needs the dataset (``source``, else
    opened from ``$FSSLIB_DATA``). In fast mode: 6 steps of 2 episodes at 96x96, to test the plumbing.
    """
    from ..data import build_source

    if benchmark not in REAL_BENCHMARKS:
        raise ValueError(f"benchmark must be one of {list(REAL_BENCHMARKS)}, got {benchmark!r}")
    recipe = dict(real_data_recipes(model)[REAL_BENCHMARKS[benchmark]])
    switches = {k: v for k, v in model_args.items() if k not in SYNTHETIC_SCALE_ARGS}
    recipe["model_args"] = {**recipe["model_args"], **switches}
    epochs = recipe.pop("epochs", None)
    if fast_mode():
        recipe.update(steps=6, batch_size=2, image_size=96)
    elif epochs is not None:
        pairs = training_queries(source or build_source(benchmark), fold)
        recipe["steps"] = math.ceil(epochs * pairs / recipe["batch_size"])
    if not method_record(model).episodic_training:
        recipe["steps"] = 0
    steps = recipe["steps"]
    return TrainConfig(model=model, benchmark=benchmark, fold=fold, seed=seed,
                       checkpoint_every=max(steps // 20, 1), log_every=max(steps // 200, 1), **recipe)
