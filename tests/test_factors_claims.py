"""Per-episode rows, the factor breakdown and the claims scorecard, on the tiny benchmark."""
import numpy as np
import pandas as pd
import pytest
import torch

from fsslib.data.factors import FACTOR_BINS, FACTORS
from fsslib.engine.protocol import EvalProtocol, evaluate
from fsslib.experiments.claims import CLAIM_COLUMNS, claims, format_scorecard, scorecard
from fsslib.experiments.factors import bin_miou, factor_breakdown, factor_spread, with_factors
from fsslib.experiments.reproduce import reference_rows, tables
from fsslib.models import build_model


@pytest.fixture(scope="module")
def episode_rows(synthetic_source):
    torch.manual_seed(0)
    model = build_model("protonet", backbone="smallcnn")
    episodes: list[dict] = []
    rows = evaluate(model, synthetic_source, 0, EvalProtocol(episodes=24, seeds=(0, 1), shots=(1, 5)),
                    method="ProtoNet", episode_rows=episodes)
    return rows, pd.DataFrame(episodes)


def test_episode_rows_sum_to_the_class_rows(episode_rows):
    rows, episodes = episode_rows
    assert len(episodes) == 2 * 2 * 24
    by_class = episodes.groupby(["shot", "seed", "class"])[["intersection", "union"]].sum()
    classes = rows[rows["class"] > 0].set_index(["shot", "seed", "class"])[["intersection", "union"]]
    seen = classes.loc[by_class.index]
    assert (seen.values == by_class.values).all()
    # the 5-shot list extends the 1-shot list: same queries, same first support
    one, five = (episodes[episodes.shot == k].sort_values(["seed", "episode"]) for k in (1, 5))
    assert one["query"].tolist() == five["query"].tolist()
    assert (one["supports"].values == five["supports"].str.split().str[0].values).all()


def test_every_episode_falls_in_one_bin_of_every_factor(episode_rows, synthetic_source):
    _, episodes = episode_rows
    labelled = with_factors(episodes.assign(train_seed=episodes["seed"]), synthetic_source.factors("val"))
    for factor in FACTORS:
        assert labelled[factor].isin(FACTOR_BINS[factor][1]).all(), factor
    breakdown = factor_breakdown(labelled)
    for (factor, shot), group in breakdown[breakdown.method == "ProtoNet"].groupby(["factor", "shot"]):
        assert group["episodes"].sum() == pytest.approx(24)  # per seed, the bins partition the episodes
    # one bin's mIoU, by hand: class-wise sums over the bin's episodes, mean over its classes
    chosen = labelled[(labelled.shot == 1) & (labelled.seed == 0) & (labelled["hard negative"] == "none")]
    by_hand = np.mean([g.intersection.sum() / max(g.union.sum(), 1) for _, g in chosen.groupby("class")]) * 100
    assert bin_miou(chosen) == pytest.approx(by_hand)
    row = breakdown[(breakdown.factor == "hard negative") & (breakdown.bin == "none") & (breakdown.shot == 1)]
    per_seed = [bin_miou(labelled[(labelled.shot == 1) & (labelled.seed == s) & (labelled["hard negative"] == "none")])
                for s in (0, 1)]
    assert row.miou.item() == pytest.approx(np.mean(per_seed))
    spread = factor_spread(breakdown, "ProtoNet")
    assert set(spread.factor) <= set(FACTORS) and (spread.gap >= 0).all()


def _rows(method: str, seeds_miou: dict[int, float], shot: int = 1) -> list[dict]:
    return [dict(method=method, fold=0, shot=shot, train_seed=seed, seed=0, **{"class": 1},
                 intersection=int(10 * miou), union=1000) for seed, miou in seeds_miou.items()]


def test_scorecard_pairs_rows_per_training_seed_and_compares_signs():
    panet = pd.DataFrame(_rows("PANet, PAR on", {0: 50, 1: 61, 2: 42}) + _rows("PANet, PAR off", {0: 48, 1: 60, 2: 40})
                         + _rows("PANet, PAR on", {0: 50, 1: 50, 2: 50}, shot=5)
                         + _rows("PANet, PAR off", {0: 52, 1: 52, 2: 53}, shot=5))
    card = scorecard({"panet": panet})
    assert list(card.columns) == CLAIM_COLUMNS and len(card) == 2  # only the claims of the tables given
    one, five = card.iloc[0], card.iloc[1]
    assert one.effect == pytest.approx(5 / 3) and one.resolved and one.sign_agrees  # +2, +1, +2 (PANet: +0.9)
    assert five.effect == pytest.approx(-7 / 3) and five.resolved and not five.sign_agrees  # -2, -2, -3
    assert "| PAR helps (Wang et al., PANet) | 1 | +0.9 |" in format_scorecard(card)


def test_every_claim_names_rows_of_its_table_and_every_table_has_reference_rows():
    by_key = {t.key: {v.name for v in t.variants} for t in tables()}
    for claim in claims():
        assert {claim.row, claim.reference} <= by_key[claim.table], claim
    for table in tables():
        oracle, logit = reference_rows(table.variants[0])
        assert {oracle.name, logit.name} <= by_key[table.key]
        assert oracle.protocol_args["supports"] == "oracle" and logit.protocol_args["shot_fusion"] == "logit_mean"
        assert table.references[oracle.name] == table.variants[0].name


@pytest.mark.parametrize("benchmark", ["synthetic", "pascal5i"])
def test_no_claim_compares_a_row_with_itself_at_the_same_shot(benchmark):
    assert all(c.row != c.reference or (c.reference_shot or c.shot) != c.shot for c in claims(benchmark))
