"""The ablation tables of the method issues, as lists of variants (data, not code edits).

Each list starts with its reference row. Inference-time rows (weak supports, N-way, components
switched at test) name the trained variant whose weights they evaluate.
"""
from __future__ import annotations

from .ablation import Variant

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

#: name -> (variants, references): ``python -m fsslib ablation NAME``.
TABLES = {"panet": (PANET_VARIANTS, PANET_REFERENCES)}
