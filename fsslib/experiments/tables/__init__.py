"""The ablation tables of the method issues, as lists of variants (data, not code edits).

One module per method. Each list starts with its reference row; inference-time rows (weak
supports, N-way, components switched at test) name the trained variant whose weights they
evaluate. ``TABLES`` maps the names of ``python -m fsslib ablation NAME`` to
``(variants, {row: reference row})``.
"""
from __future__ import annotations

from .main import MAIN_REFERENCES, MAIN_VARIANTS
from .panet import PANET_REFERENCES, PANET_VARIANTS
from .mspf import MSPF_REFERENCES, MSPF_VARIANTS
from .ssp import SSP_REFERENCES, SSP_VARIANTS

TABLES = {"main": (MAIN_VARIANTS, MAIN_REFERENCES), "panet": (PANET_VARIANTS, PANET_REFERENCES), "ssp": (SSP_VARIANTS, SSP_REFERENCES),
          "mspf": (MSPF_VARIANTS, MSPF_REFERENCES)}
