"""MSPF's ablations (its paper's Tables 3, 4 and 5) on the synthetic benchmark (notebook 06).

Every row is the paper's row: its config overrides come from
:data:`fsslib.models.mspf.PAPER_ABLATIONS`, applied on top of :data:`SYNTHETIC_HEAD`. The full
model appears in all three tables as *one* :class:`Variant` (:data:`MSPF_FULL`), so it is trained
once per seed and its paired differences in the three tables use the same runs. The paper's
tables are PASCAL-5i fold 0, 1-shot; so are ours (fold 0 of the synthetic benchmark), with the
mean and 95% interval over training seeds.

Distinct training runs per seed: 4 (Table 3) + 4 (Table 4, the full model shared) + 1 (Table 5)
+ 2 (PFENet with and without its prior) = 11.
"""
from __future__ import annotations

from ...models.mspf import PAPER_ABLATIONS
from ...models.mspf import RECORD as MSPF
from ...models.pfenet import RECORD as PFENET_METHOD
from ...reference import published
from ..ablation import Variant

#: Head settings of every row on 128-pixel images (the reasons are in the MSPF record).
SYNTHETIC_HEAD = MSPF.synthetic_head


def _mspf(name: str, row: str) -> Variant:
    return Variant(name, MSPF.name, {**SYNTHETIC_HEAD, **PAPER_ABLATIONS[row]})


#: The full model: every row named ``table*_full`` in PAPER_ABLATIONS.
MSPF_FULL = _mspf("MSPF (full model)", "table3_full")

# Table 3: multi-scale prior / multi-scale fusion (without the fusion: ASPP, no auxiliary loss).
MSPF_TABLE3 = [
    _mspf("baseline: single-scale prior + ASPP", "table3_baseline"),
    _mspf("single-scale prior + multi-scale fusion", "table3_fusion_only"),
    _mspf("multi-scale prior + ASPP", "table3_prior_only"),
    MSPF_FULL,
]
MSPF_TABLE3_REFERENCES = {v.name: MSPF_TABLE3[0].name for v in MSPF_TABLE3[1:]}

# Table 4: inter-scale connection (prior) / horizontal + vertical interaction (fusion) / scale weights.
MSPF_TABLE4 = [
    _mspf("no connection, no interaction, no weights", "table4_none"),
    _mspf("+ inter-scale connection", "table4_connection"),
    _mspf("+ horizontal/vertical interaction", "table4_interaction"),
    _mspf("+ connection + interaction", "table4_connection_interaction"),
    MSPF_FULL,
]
MSPF_TABLE4_REFERENCES = {v.name: MSPF_TABLE4[0].name for v in MSPF_TABLE4[1:]}

# Table 5: the auxiliary (per-scale) loss.
MSPF_TABLE5 = [
    _mspf("segmentation loss only", "table5_segmentation_loss_only"),
    MSPF_FULL,
]
MSPF_TABLE5_REFERENCES = {MSPF_FULL.name: MSPF_TABLE5[0].name}

#: PFENet, the architecture MSPF builds on, with the same head width: MSPF - PFENet; and PFENet
#: without its prior (Tian et al.'s ablation), whose difference to PFENet is what the prior adds.
PFENET = Variant("PFENet", PFENET_METHOD.name, dict(PFENET_METHOD.synthetic_head))
PFENET_NO_PRIOR = Variant("PFENet, prior off", PFENET_METHOD.name, {**PFENET_METHOD.synthetic_head, "use_prior": False})
MSPF_VS_PFENET = [PFENET, PFENET_NO_PRIOR, MSPF_FULL]
MSPF_VS_PFENET_REFERENCES = {MSPF_FULL.name: PFENET.name, PFENET_NO_PRIOR.name: PFENET.name}

#: ``{table: (variants, references)}`` in the paper's order; ``TITLES`` their titles.
TITLES = {"table3": "MSPF Table 3: multi-scale prior and multi-scale fusion",
          "table4": "MSPF Table 4: interaction between scales",
          "table5": "MSPF Table 5: auxiliary loss",
          PFENET_METHOD.name: "MSPF vs PFENet"}
MSPF_TABLES = {
    "table3": (MSPF_TABLE3, MSPF_TABLE3_REFERENCES),
    "table4": (MSPF_TABLE4, MSPF_TABLE4_REFERENCES),
    "table5": (MSPF_TABLE5, MSPF_TABLE5_REFERENCES),
    PFENET_METHOD.name: (MSPF_VS_PFENET, MSPF_VS_PFENET_REFERENCES),
}
#: Every variant once (for ``run_ablation``): 11 distinct training runs per seed.
MSPF_VARIANTS = list({v.name: v for variants, _ in MSPF_TABLES.values() for v in variants}.values())
#: One reference per row for the combined table of ``python -m fsslib ablation mspf``: a row's
#: reference in the first table it appears in (the full model: Table 3's baseline).
MSPF_REFERENCES = {row: ref for _, refs in reversed(MSPF_TABLES.values()) for row, ref in refs.items()}

# ---------------------------------------------------------------------- the paper's numbers
#: Flag names of ``published("MSPF")["table*"]`` entries -> MSPFConfig fields (all default True).
PAPER_FLAGS = {
    "multiscale_prior": "multi_scale_prior",
    "multiscale_fusion": "multi_scale_fusion",
    "inter_scale_connection": "prior_connection",
    "horizontal_vertical_interaction": "scale_interaction",
    "scale_weights": "scale_weights",
    "auxiliary_loss": "aux_loss",
}
PAPER_TABLE_KEYS = {"table3": "table3_modules_fold0", "table4": "table4_interaction_fold0",
                    "table5": "table5_losses_fold0"}


def paper_miou(variant: Variant, table: str) -> float:
    """The paper's mIoU (PASCAL-5i fold 0, 1-shot, ResNet-50) of the row of ``table`` that has
    ``variant``'s switches; the rows are matched by their flags, not their order.

    ``table`` PFENet's name: PFENet's (from its own paper) or MSPF's fold-0 result.

    Raises:
        KeyError: no published row of ``table`` has the variant's switches.
    """
    if table == PFENET_METHOD.name:
        if variant.model_args.get("use_prior") is False:
            raise KeyError("the published results hold no PFENet row without its prior")
        name = "PFENet" if variant.model == PFENET_METHOD.name else "MSPF"
        return published(name)["pascal5i_1shot"]["folds"][0]
    config = variant.model_args
    for entry in published("MSPF")[PAPER_TABLE_KEYS[table]]:
        flags = {PAPER_FLAGS[k]: v for k, v in entry.items() if k in PAPER_FLAGS}
        if all(config.get(field, True) == value for field, value in flags.items()):
            return entry["miou"]
    raise KeyError(f"no row of the paper's {table} has the switches of {variant.name!r}")


def paper_column(table: str) -> dict[str, float | None]:
    """``{row: the paper's mIoU}`` of one of ``MSPF_TABLES`` (None for a row the paper does not have)."""
    out = {}
    for variant in MSPF_TABLES[table][0]:
        try:
            out[variant.name] = paper_miou(variant, table)
        except KeyError:
            out[variant.name] = None
    return out


def paper_value(table: str, variant: Variant, shot: int) -> str:
    """The paper's number for a row of ``table`` (fold 0, 1-shot), or ""."""
    if shot != 1:
        return ""
    try:
        return f"{paper_miou(variant, table):.1f} (fold 0)"
    except KeyError:
        return ""
