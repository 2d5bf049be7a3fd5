"""The method record: every fact about a method that is not its equations, in one place.

Each method module ``fsslib/models/<name>.py`` ends with ``RECORD = MethodRecord(...)``.
:mod:`fsslib.models.registry` lists the method modules, one line each; the registry, the
recipes (:mod:`fsslib.experiments.configs`), the bench, the ablation explorer, the main table and
the report are built from the records, so adding a method is its file, its tests and (optionally)
a notebook.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .base import FewShotSegmenter

#: The survey's families of few-shot segmentation methods that fsslib implements.
FAMILIES = ("metric", "prior-guided", "optimisation")


@dataclass(frozen=True)
class BenchSettings:
    """How ``python -m fsslib bench`` measures the method at its paper's scale."""

    #: The paper's backbone and input size.
    backbone: str
    image_size: int
    #: The authors' implementation, timed on this project's reference CPU: per-episode time over a
    #: torchvision ResNet-50 forward at 473x473, (1-shot, 5-shot); None when not measured.
    authors_ratios: tuple[float, float] | None = None


@dataclass(frozen=True)
class MethodRecord:
    #: Registry key (``build_model(name)``, ``python -m fsslib train name``, run folders).
    name: str
    #: How tables and figures call it.
    display_name: str
    model_class: type[FewShotSegmenter]
    #: Authors, title, venue, year.
    paper: str
    #: The survey's family: "metric" (prototype matching), "prior-guided" (prior masks and
    #: decoders) or "optimisation" (adapts weights to each episode by gradient steps).
    family: str = "metric"
    #: False: the method is never trained on episodes (its runs have 0 steps: the pre-trained
    #: backbone and what the method builds at test time).
    episodic_training: bool = True
    #: Synthetic benchmark: config fields that depart from the shared backbone settings
    #: (``experiments.configs.SYNTHETIC_BACKBONE``) and head switches, with the reason in the module.
    synthetic_model_args: dict = field(default_factory=dict)
    #: Synthetic benchmark: TrainConfig fields that depart from the shared recipe.
    synthetic_training: dict = field(default_factory=dict)
    #: Head sizes of the method's table rows on 128-pixel images (real data keeps the method's own).
    synthetic_head: dict = field(default_factory=dict)
    #: TrainConfig changes of the shortened (default-profile) recipe for this method.
    short_recipe: dict = field(default_factory=dict)
    #: The authors' recipe on real data: ``{"pascal": {...}, "coco": {...}}`` of TrainConfig fields.
    real_data_recipe: dict | None = None
    bench: BenchSettings | None = None
    #: Its row in the main comparison (None: not in it) and the row's config fields on top of the
    #: synthetic recipe (the same as its paper table's row, so that the two share their runs).
    main_row: str | None = None
    main_row_args: dict = field(default_factory=dict)
    #: The benchmarks whose main table has the row (None: every one). A row whose weights exist
    #: only for real images (DINOv2's) is left out of the synthetic tables.
    main_row_benchmarks: tuple[str, ...] | None = None
    #: The main comparison's paper column, ``shot -> text`` ("" where the paper has no number).
    paper_result: Callable[[int], str] | None = None
    #: The paper's 5-shot minus 1-shot mIoU (the claim "more shots help"), None where not published,
    #: and the benchmark the paper's numbers are on.
    paper_shot_gain: Callable[[], float] | None = None
    paper_benchmark: str = "PASCAL-5i"
    #: Ablation explorer: ``{label: (config fields switched together)}``.
    explorer_switches: dict = field(default_factory=dict)
    #: Relative cost of one synthetic training run, so that ``reproduce`` starts the longest first.
    job_cost: int = 1

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"family of '{self.name}' must be one of {FAMILIES}, got {self.family!r}")

    @property
    def config_class(self):
        return self.model_class.config_class
