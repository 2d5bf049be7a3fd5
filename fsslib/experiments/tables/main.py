"""The main comparison: every method under one recipe and one protocol (README, notebook 06).

One row per method record (``main_row``, ``main_row_args``), in the registry's order. A row's
arguments are those of its paper table's row, so their training runs are shared: the PANet row is
the PAR-on run of the PANet table, SSP the full model of the SSP table, PFENet and MSPF those of
the MSPF tables (``tests/test_tables.py`` checks it). Every row's reference is the plain prototype
model (ProtoNet: masked average pooling + cosine), so each paired difference is what a method adds
to prototype matching on the same training episodes and test episodes.
"""
from __future__ import annotations

from ...models.registry import REFERENCE_METHOD, method_record, records
from ..ablation import Variant


def main_variants(benchmark: str = "synthetic") -> list[Variant]:
    """The main table's rows on ``benchmark`` (records whose ``main_row_benchmarks`` include it)."""
    return [Variant(r.main_row, r.name, dict(r.main_row_args)) for r in records()
            if r.main_row and (r.main_row_benchmarks is None or benchmark in r.main_row_benchmarks)]


MAIN_VARIANTS = main_variants()
PROTONET = next(v for v in MAIN_VARIANTS if v.model == REFERENCE_METHOD)


def main_references(rows: list[Variant]) -> dict[str, str]:
    """Every row's reference: the plain prototype model."""
    return {v.name: PROTONET.name for v in rows if v.name != PROTONET.name}


MAIN_REFERENCES = main_references(MAIN_VARIANTS)


def paper_value(variant: Variant, shot: int) -> str:
    """The paper's own result of the row's method (PASCAL-5i unless it says otherwise)."""
    result = method_record(variant.model).paper_result
    return result(shot) if result else ""
