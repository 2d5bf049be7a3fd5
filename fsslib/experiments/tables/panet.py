"""PANet's ablations on the synthetic benchmark: PAR on/off, weak supports, 2-way (notebook 04)."""
from __future__ import annotations

from ..ablation import Variant

PANET_VARIANTS = [
    Variant("PANet, PAR off", "panet", {"par_weight": 0.0}),
    Variant("PANet, PAR on", "panet", {"par_weight": 1.0}),
    Variant("PAR on, scribble supports", "panet", {"par_weight": 1.0}, protocol_args={"support_annotation": "scribble"},
            trained_as="PANet, PAR on"),
    Variant("PAR on, box supports", "panet", {"par_weight": 1.0}, protocol_args={"support_annotation": "box"},
            trained_as="PANet, PAR on"),
    Variant("PAR on, 2-way", "panet", {"par_weight": 1.0}, protocol_args={"way": 2}, trained_as="PANet, PAR on"),
]
#: Each row's reference for the paired difference.
PANET_REFERENCES = {"PANet, PAR on": "PANet, PAR off", "PAR on, scribble supports": "PANet, PAR on",
                    "PAR on, box supports": "PANet, PAR on", "PAR on, 2-way": "PANet, PAR on"}

