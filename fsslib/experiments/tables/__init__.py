"""The tables: the ablation tables of the method papers and the main comparison, as lists of
variants (data, not code edits).

One module per method. Each list starts with its reference row; inference-time rows (weak
supports, N-way, components switched at test) name the trained variant whose weights they
evaluate. :func:`tables` is the one registry of the tables ``reproduce`` writes (each with its
title and reference rows); ``TABLES`` maps the names of ``python -m fsslib ablation NAME`` to
``(variants, {row: reference row})`` (MSPF's four tables as one).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

from ..ablation import Variant
from . import fomaml, main, mspf, panet, ssp
from .fomaml import FOMAML_REFERENCES, FOMAML_VARIANTS
from .main import MAIN_REFERENCES, MAIN_VARIANTS
from .mspf import MSPF_REFERENCES, MSPF_TABLES, MSPF_VARIANTS
from .panet import PANET_REFERENCES, PANET_VARIANTS
from .ssp import SSP_REFERENCES, SSP_VARIANTS

#: ``python -m fsslib ablation NAME``: the method tables by name (MSPF's four as one).
TABLES = {"main": (MAIN_VARIANTS, MAIN_REFERENCES), panet.KEY: (PANET_VARIANTS, PANET_REFERENCES),
          ssp.KEY: (SSP_VARIANTS, SSP_REFERENCES), mspf.MSPF.name: (MSPF_VARIANTS, MSPF_REFERENCES),
          fomaml.KEY: (FOMAML_VARIANTS, FOMAML_REFERENCES)}


@dataclass(frozen=True)
class Table:
    key: str
    title: str
    variants: list[Variant]
    references: dict[str, str]
    #: ``(row, shot) -> text``: the paper's number for the row ("" where the paper has none).
    paper_column: Callable[[Variant, int], str] = lambda variant, shot: ""

    def paper_value(self, variant: Variant, shot: int) -> str:
        """The paper's number for a row; our reference rows (oracle, logit-averaged) have none."""
        if variant.protocol_args.get("supports") == "oracle" or "shot_fusion" in variant.protocol_args:
            return ""
        return self.paper_column(variant, shot)


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


def tables(benchmark: str = "synthetic") -> list[Table]:
    """Every table of ``results/tables.md`` on ``benchmark``, in order (the main comparison first),
    each with its :func:`reference_rows`."""
    main_rows = main.main_variants(benchmark)
    listed = [("main", "Main comparison", main_rows, main.main_references(main_rows), main.paper_value),
              (panet.KEY, panet.TITLE, PANET_VARIANTS, PANET_REFERENCES, panet.paper_value),
              (ssp.KEY, ssp.TITLE, SSP_VARIANTS, SSP_REFERENCES, ssp.paper_value),
              *[(f"{mspf.MSPF.name}_{key}", mspf.TITLES[key], variants, refs, partial(mspf.paper_value, key))
                for key, (variants, refs) in MSPF_TABLES.items()]]
    if benchmark == "synthetic":  # its rows have no paper numbers, and on real data cost 30k-step runs each
        listed.append((fomaml.KEY, fomaml.TITLE, FOMAML_VARIANTS, FOMAML_REFERENCES, lambda variant, shot: ""))
    return [Table(key, title, *with_reference_rows(variants, refs), paper)
            for key, title, variants, refs, paper in listed]
