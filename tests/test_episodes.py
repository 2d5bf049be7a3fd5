import numpy as np
import pytest
import torch

from fsslib.data import (
    EpisodeDataset,
    EpisodePool,
    collate_episodes,
    eval_transform,
    load_episodes,
    sample_episodes,
    save_episodes,
    train_transform,
    weak_annotation,
)
from fsslib.data.episodes import episode_mask
from fsslib.data.sources import EXCLUDED, IGNORE, LABEL_IGNORE


@pytest.fixture
def val_pool(synthetic_source):
    return EpisodePool.for_fold(synthetic_source, 0, "val")


@pytest.mark.parametrize("shot,way", [(1, 1), (5, 1), (2, 3)])
def test_episodes_are_valid(val_pool, shot, way):
    for e in sample_episodes(val_pool, 50, shot=shot, way=way, seed=3):
        assert e.query not in e.supports
        assert len(e.supports) == shot * way and len(set(e.classes)) == way
        for n, c in enumerate(e.classes):
            group = e.supports[n * shot:(n + 1) * shot]
            assert len(set(group)) == shot and all(s in val_pool.supports[c] for s in group)
        assert any(e.query in val_pool.queries[c] for c in e.classes)


def test_episode_lists_are_deterministic_and_round_trip(val_pool, tmp_path):
    a, b = sample_episodes(val_pool, 40, shot=1, seed=5), sample_episodes(val_pool, 40, shot=1, seed=5)
    assert a == b and a != sample_episodes(val_pool, 40, shot=1, seed=6)
    save_episodes(tmp_path / "a.json", a)
    save_episodes(tmp_path / "b.json", b)
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert load_episodes(tmp_path / "a.json") == a


def test_items_follow_the_data_contract(val_pool):
    dataset = EpisodeDataset(val_pool, eval_transform(96), shot=2, episodes=sample_episodes(val_pool, 3, 2))
    batch = collate_episodes([dataset[0], dataset[1]])
    assert batch["support_imgs"].shape == (2, 2, 3, 96, 96) and batch["support_imgs"].dtype == torch.float32
    assert batch["support_masks"].shape == (2, 2, 96, 96) and batch["support_masks"].dtype == torch.long
    assert batch["query_img"].shape == (2, 3, 96, 96) and batch["query_mask"].shape == (2, 96, 96)
    assert batch["class_id"].shape == (2,) and batch["query_mask_orig"][0].shape == (128, 128)
    assert set(batch["query_mask"].unique().tolist()) <= {0, 1, 255}
    assert len(batch["support_names"]) == 2 and isinstance(batch["query_name"][0], str)


def test_training_items_are_reproducible_per_index(synthetic_source):
    pool = EpisodePool.for_fold(synthetic_source, 0, "train")
    dataset = EpisodeDataset(pool, train_transform(128), shot=1, length=20, seed=1)
    first, again = dataset[4], dataset[4]
    assert torch.equal(first["query_img"], again["query_img"]) and torch.equal(first["query_mask"], again["query_mask"])
    assert not torch.equal(dataset[5]["query_img"], first["query_img"])


def test_n_way_masks_exclude_the_other_classes_from_support_background():
    label = torch.tensor([[0, 3, 3], [5, 5, LABEL_IGNORE], [7, 0, 3]])
    assert episode_mask(label, [3, 5]).tolist() == [[0, 1, 1], [2, 2, 255], [0, 0, 1]]
    # the other way's pixels are EXCLUDED (254), told apart from the label's void (255)
    assert episode_mask(label, [3], exclude=[5]).tolist() == [[0, 1, 1], [254, 254, 255], [0, 0, 1]]
    assert (EXCLUDED, IGNORE) == (254, 255)


def test_n_way_items(val_pool):
    episodes = sample_episodes(val_pool, 200, 1, way=2, seed=0)
    transform = eval_transform(128)
    dataset = EpisodeDataset(val_pool, transform, shot=1, way=2, episodes=episodes)
    excluded_pixels = 0
    for i in range(len(dataset)):
        item = dataset[i]
        assert item["class_id"].shape == (2,) and set(item["query_mask"].unique().tolist()) <= {0, 1, 2, 255}
        assert set(item["support_masks"].unique().tolist()) <= {0, 1, EXCLUDED, IGNORE}
        for n, (stem, mask) in enumerate(zip(episodes[i].supports, item["support_masks"])):
            _, label = transform(*val_pool.source.load(stem))
            other = episodes[i].classes[1 - n]
            # exactly the other way's pixels are EXCLUDED, exactly the void pixels are IGNORE
            assert torch.equal(mask == EXCLUDED, label == other)
            assert torch.equal(mask == IGNORE, label == LABEL_IGNORE)
            excluded_pixels += int((mask == EXCLUDED).sum())
    assert excluded_pixels > 0  # some support shows the other way's class, so the check is not vacuous


def test_box_annotation_covers_one_instance():
    mask = torch.zeros(20, 20, dtype=torch.long)
    mask[2:6, 3:5] = 1
    mask[10:15, 10:18] = 1
    mask[0, :] = IGNORE
    mask[19, :] = EXCLUDED  # another way's object
    rng = np.random.default_rng(0)
    boxes = {tuple(weak_annotation(mask, "box", rng).eq(1).nonzero().min(0).values.tolist()) for _ in range(20)}
    assert boxes == {(2, 3), (10, 10)}  # one box or the other, each the tight box of an instance
    box = weak_annotation(mask, "box", np.random.default_rng(1))
    assert ((box == 1).sum() in (8, 40)) and (box[0] == 255).sum() >= 10
    # outside the box void stays void and excluded stays excluded (an instance does not touch rows 0, 19)
    assert (box[0] == IGNORE).all() and (box[19] == EXCLUDED).all()


def test_scribbles_are_sparse_and_agree_with_the_dense_mask():
    mask = torch.zeros(64, 64, dtype=torch.long)
    mask[16:48, 20:50] = 1
    mask[:, :2] = IGNORE
    scribble = weak_annotation(mask, "scribble", np.random.default_rng(0))
    # unlabelled pixels are EXCLUDED, not void: no background rule may take them as background
    labelled = scribble != EXCLUDED
    assert not (scribble == IGNORE).any()
    assert 0 < labelled.float().mean() < 0.25
    assert torch.equal(scribble[labelled], mask[labelled])  # no stroke crosses the boundary
    assert (scribble == 1).any() and (scribble == 0).any()


def test_weak_supports_in_episodes(val_pool):
    episodes = sample_episodes(val_pool, 2, 1)
    dense = EpisodeDataset(val_pool, eval_transform(128), episodes=episodes)[0]["support_masks"]
    scribble = EpisodeDataset(val_pool, eval_transform(128), episodes=episodes, support_annotation="scribble")[0]
    assert (scribble["support_masks"] == EXCLUDED).float().mean() > 0.75 and not (dense == EXCLUDED).any()
    assert not (scribble["support_masks"] == IGNORE).any()
    with pytest.raises(ValueError, match="support_annotation"):
        EpisodeDataset(val_pool, eval_transform(128), episodes=episodes, support_annotation="polygon")


def test_shot_larger_than_the_class_allows_is_a_clear_error(val_pool):
    from fsslib.data import DatasetError

    with pytest.raises(DatasetError, match="support images"):
        sample_episodes(val_pool, 5, shot=500)
