"""Shot-paired protocol, the oracle support and logit-averaged K-shot (reference rows of issue 19)."""
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from fsslib.data import EpisodePool, first_shots, oracle_episode, sample_episodes
from fsslib.data.factors import FACTORS
from fsslib.engine.protocol import EvalProtocol, evaluate
from fsslib.engine.statistics import per_seed
from fsslib.experiments.ablation import shot_gain_table
from fsslib.models import build_model


@pytest.fixture
def pool(synthetic_source):
    return EpisodePool.for_fold(synthetic_source, 0, "val")


def test_lists_of_one_seed_share_queries_and_extend_the_one_shot_support(pool):
    lists = {shot: sample_episodes(pool, 40, shot, seed=3) for shot in (1, 2, 5)}
    assert [e.query for e in lists[1]] == [e.query for e in lists[5]]
    for one, two, five in zip(lists[1], lists[2], lists[5]):
        assert one.supports == five.supports[:1] and two.supports == five.supports[:2]
        assert len(set(five.supports)) == 5 and one.query not in five.supports
        assert first_shots(five, 1) == one
    for shot in (1, 5):  # and the protocol's lists are those lists
        assert EvalProtocol(episodes=40, seeds=(3,)).episode_lists(pool, shot)[3] == lists[shot]
    two_way = {shot: sample_episodes(pool, 10, shot, way=2, seed=1) for shot in (1, 3)}
    for one, three in zip(two_way[1], two_way[3]):
        assert one == first_shots(three, 1)


def test_first_shots_keeps_each_ways_first_supports(pool):
    episode = sample_episodes(pool, 1, shot=3, way=2, seed=0)[0]
    kept = first_shots(episode, 2)
    assert kept.supports == episode.supports[0:2] + episode.supports[3:5] and kept.classes == episode.classes
    with pytest.raises(ValueError, match="shot must be in 1..3"):
        first_shots(episode, 4)


def test_protocol_validates_the_new_fields():
    with pytest.raises(ValueError, match="supports must be"):
        EvalProtocol(supports="query")
    with pytest.raises(ValueError, match="needs way=1"):
        EvalProtocol(supports="oracle", way=2)
    with pytest.raises(ValueError, match="shot_fusion must be"):
        EvalProtocol(shot_fusion="max")


def test_oracle_support_is_the_query_and_beats_sampled_supports(synthetic_source, pool):
    episode = sample_episodes(pool, 1, seed=0)[0]
    assert oracle_episode(episode).supports == (episode.query,)
    torch.manual_seed(0)
    model = build_model("protonet", backbone="smallcnn")
    protocol = EvalProtocol(episodes=24, seeds=(0,), shots=(1,))
    sampled = per_seed(evaluate(model, synthetic_source, 0, protocol)).miou.item()
    oracle = per_seed(evaluate(model, synthetic_source, 0, replace(protocol, supports="oracle"))).miou.item()
    assert oracle > sampled


def test_logit_mean_is_the_mean_of_the_one_shot_logits(synthetic_source, pool, monkeypatch):
    """With K one-shot heads averaged, a K-shot row equals averaging the logits of K 1-shot
    evaluations by hand; for ProtoNet it differs from averaging the prototypes."""
    from fsslib.engine import protocol as protocol_module

    torch.manual_seed(0)
    model = build_model("protonet", backbone="smallcnn").eval()
    seen = []
    original = protocol_module.hard_labels
    monkeypatch.setattr(protocol_module, "hard_labels", lambda logits: seen.append(logits.clone()) or original(logits))
    protocol = EvalProtocol(episodes=6, seeds=(0,), shots=(3,), batch_size=6, labels="resized")
    evaluate(model, synthetic_source, 0, replace(protocol, shot_fusion="logit_mean"))
    averaged = seen.pop()
    episodes = protocol.episode_lists(pool, 3)[0]
    own_lists = EvalProtocol.episode_lists
    by_hand = 0
    for k in range(3):
        one_shot = [type(e)(e.query, (e.supports[k],), e.classes) for e in episodes]
        monkeypatch.setattr(EvalProtocol, "episode_lists", lambda self, pool, shot, eps=one_shot: {0: eps})
        evaluate(model, synthetic_source, 0, replace(protocol, shots=(1,)))
        by_hand = by_hand + seen.pop() / 3
    torch.testing.assert_close(averaged, by_hand)
    monkeypatch.setattr(EvalProtocol, "episode_lists", own_lists)
    evaluate(model, synthetic_source, 0, protocol)  # the model's own rule: averaged prototypes
    assert not torch.allclose(seen.pop(), averaged)


def test_shot_gain_is_paired_per_training_seed():
    rows = []
    for seed, (one, five) in enumerate([(50, 56), (60, 63), (40, 47)]):
        for shot, iou in ((1, one), (5, five)):
            rows.append(dict(method="m", fold=0, shot=shot, train_seed=seed, seed=0, **{"class": 1},
                             intersection=iou, union=100))
    table = shot_gain_table(pd.DataFrame(rows))
    assert table.comparison.item() == "5-shot minus 1-shot" and table.seeds.item() == 3
    assert table["diff"].item() == pytest.approx(np.mean([6, 3, 7]))
    assert bool(table.resolved.item())


def test_raw_colour_prototype_segments_by_colour_alone():
    from fsslib.experiments.benchmark_report import RawColourPrototype

    image = torch.zeros(1, 3, 64, 64)
    image[:, 2] = 2.0                              # a blue background
    image[:, :, :32] = torch.tensor([2.0, 0.0, 0.0])[:, None, None]  # and a red top half, the object
    model = RawColourPrototype()
    feats = model.extract(image)
    mask = torch.zeros(1, 1, 64, 64, dtype=torch.long)
    mask[..., :32, :] = 1
    logits = model.head(feats, {k: v[:, None] for k, v in feats.items()}, mask, 1, (64, 64))["logits"]
    agree = (logits.argmax(1)[0] == mask[0, 0]).float().mean()
    assert agree > 0.95  # all but the bilinear seam between the two 8 x 8 cell rows


def test_benchmark_report_prints_every_property(synthetic_source, tmp_path, monkeypatch, capsys):
    from fsslib.__main__ import main

    monkeypatch.setenv("FSSLIB_DATA", str(synthetic_source.root.parent))
    monkeypatch.setenv("FSSLIB_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("FSSLIB_FAST", "1")
    assert main(["benchmark-report", "--episodes", "6", "--seeds", "0,1"]) == 0
    out = capsys.readouterr().out
    for name in ("colour does not identify the class", "headroom", "more shots help the baseline",
                 "every factor matters"):
        assert f"| {name} |" in out
    assert "oracle" in out and "raw-RGB prototype" in out
    for factor in FACTORS:  # property 4 names every factor's best and worst bin
        assert factor in out.split("| every factor matters |")[1]
