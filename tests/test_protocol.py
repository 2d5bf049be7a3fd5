import numpy as np
import pandas as pd
import pytest
import torch

from fsslib.data import EpisodeDataset, EpisodePool, collate_episodes, eval_transform
from fsslib.engine import Evaluator
from fsslib.engine.protocol import EvalProtocol, evaluate
from fsslib.engine.statistics import interval95, per_seed, summarize
from fsslib.experiments.baselines import AllForeground
from fsslib.models import build_model


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("protonet", feature_stage="layer3").eval()


def test_cached_evaluation_equals_episode_by_episode_forward(synthetic_source, model):
    protocol = EvalProtocol(episodes=12, seeds=(3,), shots=(2,), batch_size=5)
    rows = evaluate(model, synthetic_source, 0, protocol, method="m")

    pool = EpisodePool.for_fold(synthetic_source, 0, "val")
    episodes = protocol.episode_lists(pool, 2)[3]
    dataset = EpisodeDataset(pool, eval_transform(128), shot=2, episodes=episodes)
    evaluator = Evaluator(pool.classes)
    with torch.no_grad():
        for i in range(len(dataset)):
            batch = collate_episodes([dataset[i]])
            pred = model.predict(model(batch))
            evaluator.update(pred, torch.stack(batch["query_mask_orig"]), batch["class_id"])
    expected = pd.DataFrame(evaluator.rows())
    got = rows[rows["class"] > 0][["class", "intersection", "union"]].reset_index(drop=True)
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)
    assert per_seed(rows)["miou"].iloc[0] == pytest.approx(evaluator.miou())
    assert per_seed(rows)["fbiou"].iloc[0] == pytest.approx(evaluator.fbiou())


def test_evaluations_of_the_same_weights_share_the_feature_cache(synthetic_source, model, monkeypatch):
    import fsslib.engine.protocol as protocol_module

    built = []
    real = protocol_module.FeatureCache
    monkeypatch.setattr(protocol_module, "FeatureCache", lambda *a, **k: built.append(1) or real(*a, **k))
    protocol = EvalProtocol(episodes=6, seeds=(1,), shots=(1,))
    caches = {}
    first = evaluate(model, synthetic_source, 0, protocol, method="m", caches=caches)
    again = evaluate(model, synthetic_source, 0, protocol, method="m", caches=caches)
    assert len(built) == 1 and len(caches) == 1
    pd.testing.assert_frame_equal(first, again)

    other = build_model("protonet", feature_stage="layer3").eval()  # other weights: other features
    with torch.no_grad():
        next(other.backbone.parameters()).add_(1.0)
    evaluate(other, synthetic_source, 0, protocol, method="m", caches=caches)
    assert len(built) == 2 and len(caches) == 2


def test_all_foreground_scores_the_foreground_fraction(synthetic_source):
    rows = evaluate(AllForeground(), synthetic_source, 0, EvalProtocol(episodes=20, seeds=(0,)), method="all-fg")
    classes = rows[rows["class"] > 0]
    # Predicting everything: intersection = foreground pixels, union = all valid pixels of those episodes.
    assert (classes["intersection"] <= classes["union"]).all()
    assert rows[rows["class"] == 0]["intersection"].item() == 0  # background never predicted


def test_summary_interval():
    mean, half = interval95([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.302653 * 1.0 / np.sqrt(3), rel=1e-5)
    rows = pd.DataFrame([dict(method="m", fold=0, shot=1, seed=s, **{"class": c, "intersection": i, "union": 10})
                         for s, (i1, i2) in enumerate([(5, 5), (10, 0)]) for c, i in ((1, i1), (2, i2))] +
                        [dict(method="m", fold=0, shot=1, seed=s, **{"class": 0, "intersection": 0, "union": 1})
                         for s in range(2)])
    summary = summarize(rows)
    assert summary["miou"].item() == pytest.approx(50.0) and summary["seeds"].item() == 2


def test_protocol_rejects_unknown_label_mode():
    with pytest.raises(ValueError, match="labels"):
        EvalProtocol(labels="native")


def test_fb_iou_rows_agree_with_the_evaluator_in_n_way():
    """Two ways predicted swapped: class IoUs are 0, but every foreground pixel is foreground."""
    evaluator = Evaluator([3, 7])
    target = torch.tensor([[[1, 1, 2, 2, 0, 0]]])
    pred = torch.tensor([[[2, 2, 1, 1, 0, 0]]])
    evaluator.update(pred, target, torch.tensor([[3, 7]]))
    rows = pd.DataFrame([dict(method="m", fold=0, shot=1, seed=0, **r) for r in evaluator.rows() + evaluator.fb_rows()])
    scores = per_seed(rows)
    assert evaluator.fbiou() == pytest.approx(100.0) and scores["fbiou"].item() == pytest.approx(100.0)
    assert evaluator.miou() == pytest.approx(0.0) and scores["miou"].item() == pytest.approx(0.0)


def test_paired_difference_matches_seeds_and_needs_two_to_resolve():
    import pandas as pd

    from fsslib.engine.statistics import paired_difference

    a = pd.Series({0: 50.0, 1: 52.0, 2: 51.0, 3: 60.0})
    b = pd.Series({2: 49.0, 1: 50.0, 0: 48.0})  # seed 3 has no pair
    paired = paired_difference(a, b)
    assert (paired.mean, paired.n) == (2.0, 3) and paired.half == 0.0 and paired.resolved
    single = paired_difference(a[:1], b)
    assert single.n == 1 and np.isnan(single.half) and not single.resolved
    assert paired_difference(a[3:], b).n == 0
