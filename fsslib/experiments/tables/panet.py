"""PANet's ablations on the synthetic benchmark: PAR on/off, weak supports, 2-way (notebook 04)."""
from __future__ import annotations

from ...models.panet import RECORD as PANET
from ...reference import published
from ..ablation import Variant

KEY = PANET.name
TITLE = "PANet: prototype alignment (PAR) and weak annotations"
PANET_VARIANTS = [
    Variant("PANet, PAR off", PANET.name, {"par_weight": 0.0}),
    Variant("PANet, PAR on", PANET.name, {"par_weight": 1.0}),
    Variant("PAR on, scribble supports", PANET.name, {"par_weight": 1.0},
            protocol_args={"support_annotation": "scribble"}, trained_as="PANet, PAR on"),
    Variant("PAR on, box supports", PANET.name, {"par_weight": 1.0}, protocol_args={"support_annotation": "box"},
            trained_as="PANet, PAR on"),
    Variant("PAR on, 2-way", PANET.name, {"par_weight": 1.0}, protocol_args={"way": 2}, trained_as="PANet, PAR on"),
]
#: Each row's reference for the paired difference.
PANET_REFERENCES = {"PANet, PAR on": "PANet, PAR off", "PAR on, scribble supports": "PANet, PAR on",
                    "PAR on, box supports": "PANet, PAR on", "PAR on, 2-way": "PANet, PAR on"}


def paper_value(variant: Variant, shot: int) -> str:
    """The paper's number for the row (PASCAL-5i, VGG-16), or ""."""
    paper = published("PANet")
    column = f"{shot}shot"
    values = {"PANet, PAR off": paper["ablation_PAR_mean"]["without_PAR"][column],
              "PANet, PAR on": paper["ablation_PAR_mean"]["with_PAR"][column],
              "PAR on, scribble supports": paper["weak_annotations_mean"]["scribble"][column],
              "PAR on, box supports": paper["weak_annotations_mean"]["bbox"][column],
              "PAR on, 2-way": paper["pascal5i_2way"][column]["mean"]}
    return f"{values[variant.name]:.1f} (VGG-16)" if variant.name in values else ""
