"""The claims scorecard: one row per claim of the method papers (and of the survey about the
families), with our paired effect on the profile's benchmark (synthetic, or PASCAL-5i / COCO-20i).

Each :class:`Claim` names a row and its reference in one of the ``reproduce`` tables (or one row
at two shot counts), and the effect the paper reports on PASCAL-5i where its published tables
give one (``None`` where the claim is made in words or the number is not in
``fsslib/reference``). Our effect is the row minus its reference, paired per training seed on
identical test episodes, with its 95% interval; it is *resolved* when the interval excludes zero.
"Sign agrees" compares our sign with the paper's (a claim without a number claims a gain). Two
claims set the families against each other: a meta-learned start beats plain fine-tuning (Finn
et al.), and metric methods beat optimisation methods at an equal training budget (the survey).

The scorecard is written from the tables whatever it says. The benchmark's knobs were fixed
before any table was run (``docs/benchmark-v3-plan.md``) and are not changed after seeing it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..engine.statistics import paired_difference, with_interval
from ..reference import published
from .ablation import per_training_seed

CLAIM_COLUMNS = ["claim", "paper", "table", "row", "reference", "shot", "reference_shot", "paper_effect",
                 "effect", "effect_ci95", "seeds", "resolved", "sign_agrees"]


@dataclass(frozen=True)
class Claim:
    claim: str
    #: Who claims it (authors, short title).
    paper: str
    #: Key of the table (``reproduce.tables()``) holding both rows.
    table: str
    row: str
    reference: str
    shot: int = 1
    #: The reference's shot count (None: ``shot``): "more shots help" compares a row with itself.
    reference_shot: int | None = None
    #: Row minus reference in the paper (PASCAL-5i mIoU unless the claim says otherwise).
    paper_effect: float | None = None


#: The survey that sorts few-shot segmentation into families ("深入探索小样本语义分割：挑战、方法与前沿",
#: 2025): optimisation-based methods such as MAML adapt slowly and unstably where metric methods
#: match prototypes in one pass.
SURVEY = "the survey of FSS families"


def claims(benchmark: str = "synthetic") -> list[Claim]:
    """Every claim about the tables of ``benchmark``, in the order of the tables."""
    from ..models.finetune import RECORD as FINETUNE
    from ..models.fomaml import RECORD as FOMAML
    from ..models.registry import method_record
    from . import tables
    from .tables.main import PROTONET, main_variants
    from .tables.mspf import MSPF_FULL, MSPF_TABLE3, MSPF_TABLE4, MSPF_TABLE5, PFENET, PFENET_NO_PRIOR, paper_miou
    from .tables.ssp import BASELINE_ROW, SSP_ROW

    mspf_table = f"{tables.mspf.MSPF.name}_{{}}".format
    main_rows = main_variants(benchmark)
    par = published("PANet")["ablation_PAR_mean"]
    out = [Claim("PAR helps", "Wang et al., PANet", tables.panet.KEY, "PANet, PAR on", "PANet, PAR off", shot,
                 paper_effect=par["with_PAR"][f"{shot}shot"] - par["without_PAR"][f"{shot}shot"]) for shot in (1, 5)]

    def ssp_paper(key: str, shot: int) -> float:
        return published("SSP")["pascal5i"][f"{key}_{shot}shot"]["mean"]

    ssp, ssp_table = "Fan et al., SSP", tables.ssp.KEY
    out += [Claim("SSFP helps", ssp, ssp_table, "+ SSFP (test only)", BASELINE_ROW),
            Claim("ASBP beats SSBP", ssp, ssp_table, "+ ASBP (test only)", "+ SSBP (test only)"),
            Claim("SSL helps", ssp, ssp_table, "+ SSL", "self-support in training")]
    out += [Claim("full SSP beats its baseline", ssp, ssp_table, SSP_ROW, BASELINE_ROW, shot,
                  paper_effect=ssp_paper("SSP_refine_R50", shot) - ssp_paper("baseline_noRefine_R50", shot))
            for shot in (1, 5)]
    versus_pfenet = mspf_table(PFENET.model)
    out.append(Claim("PFENet's prior helps", "Tian et al., PFENet", versus_pfenet, PFENET.name, PFENET_NO_PRIOR.name))
    mspf = "MSPF"
    for key, rows in (("table3", MSPF_TABLE3), ("table4", MSPF_TABLE4), ("table5", MSPF_TABLE5)):
        base = rows[0]
        out += [Claim(f"MSPF {key.replace('table', 'Table ')}: {row.name} (vs {base.name})", mspf, mspf_table(key),
                      row.name, base.name, paper_effect=paper_miou(row, key) - paper_miou(base, key))
                for row in rows[1:]]
    out.append(Claim("MSPF beats PFENet", mspf, versus_pfenet, MSPF_FULL.name, PFENET.name,
                     paper_effect=paper_miou(MSPF_FULL, PFENET.model) - paper_miou(PFENET, PFENET.model)))
    def from_a_segmentation_paper(record) -> bool:
        # The baselines (fine-tuning, first-order MAML, DINOv2 features with prototypes) come from
        # papers that claim nothing about few-shot segmentation's shots or about prototype matching.
        return record.episodic_training and record.family != "optimisation"

    for v in main_rows:
        record = method_record(v.model)
        # PFENet's and MSPF's 5-shot results are not in the published data; ProtoNet is ours.
        gain = record.paper_shot_gain() if record.paper_shot_gain else None
        where = "" if record.paper_benchmark == "PASCAL-5i" else f", {record.paper_benchmark}"
        source = f"its paper{where}" if from_a_segmentation_paper(record) else "expected of any method"
        out.append(Claim(f"more shots help: {v.name}", source, "main", v.name, v.name, 5, 1, paper_effect=gain))
    # The optimisation family claims no gain over prototype matching: the survey's claim runs the other way.
    out += [Claim(f"{v.name} beats prototype matching", "its paper", "main", v.name, PROTONET.name, shot)
            for v in main_rows if v.name != PROTONET.name and from_a_segmentation_paper(method_record(v.model))
            for shot in (1, 5)]
    main_row = {v.model: v.name for v in main_rows}
    meta_learned, fine_tuned = main_row[FOMAML.name], main_row[FINETUNE.name]
    out += [Claim("meta-learned initialisation beats plain fine-tuning", "Finn et al., MAML", "main", meta_learned,
                  fine_tuned, shot) for shot in (1, 5)]
    out += [Claim("metric methods beat optimisation methods at equal budget", SURVEY, "main", PROTONET.name,
                  meta_learned, shot) for shot in (1, 5)]
    return out


def score(claim: Claim, scores: pd.DataFrame) -> dict:
    """One scorecard row from per-training-seed mIoU (``ablation.per_training_seed`` of the claim's table)."""
    def seeds(row: str, shot: int) -> pd.Series:
        chosen = scores[(scores.method == row) & (scores.shot == shot)]
        return chosen.groupby("train_seed")["miou"].mean()  # mean over folds

    reference_shot = claim.reference_shot or claim.shot
    paired = paired_difference(seeds(claim.row, claim.shot), seeds(claim.reference, reference_shot))
    expected = 1.0 if claim.paper_effect is None else np.sign(claim.paper_effect)
    return dict(claim=claim.claim, paper=claim.paper, table=claim.table, row=claim.row, reference=claim.reference,
                shot=claim.shot, reference_shot=reference_shot, paper_effect=claim.paper_effect, effect=paired.mean,
                effect_ci95=paired.half, seeds=paired.n, resolved=paired.resolved,
                sign_agrees=bool(np.sign(paired.mean) == expected) if paired.n else False)


def scorecard(rows_by_table: dict[str, pd.DataFrame], benchmark: str = "synthetic") -> pd.DataFrame:
    """Score every claim about ``benchmark`` whose table is in ``rows_by_table`` (``{table key: IoU rows}``)."""
    scores = {key: per_training_seed(rows) for key, rows in rows_by_table.items()}
    return pd.DataFrame([score(c, scores[c.table]) for c in claims(benchmark) if c.table in scores],
                        columns=CLAIM_COLUMNS)


def format_scorecard(card: pd.DataFrame) -> str:
    """Markdown: claim, shots, the paper's effect, ours with its interval, resolved, sign."""
    lines = ["| claim | shot | paper (PASCAL-5i) | ours (synthetic, paired) | resolved | sign agrees |",
             "|---|---|---|---|---|---|"]
    for r in card.itertuples():
        shot = f"{r.shot} vs {r.reference_shot}" if r.shot != r.reference_shot else str(r.shot)
        paper = "a gain, no number" if pd.isna(r.paper_effect) else f"{r.paper_effect:+.1f}"
        ours = with_interval(r.effect, r.effect_ci95, 2, sign=True) if r.seeds else "no rows"
        lines.append(f"| {r.claim} ({r.paper}) | {shot} | {paper} | {ours} | {'yes' if r.resolved else 'no'} | "
                     f"{'yes' if r.sign_agrees else 'NO'} |")
    return "\n".join(lines)
