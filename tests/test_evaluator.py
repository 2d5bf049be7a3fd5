"""Evaluator against an independent reimplementation of the official accumulation."""

from collections import defaultdict

import numpy as np
import pytest
import torch

from fsslib.engine import Evaluator, episode_iou


def _reference(preds, targets, classes, class_ids, num_ways=1, ignore=255):
    """Episode-by-episode numpy version of the PFENet / HSNet bookkeeping.

    Per episode: mark ignored pixels in the prediction, histogram the label values of the
    prediction, the target and their agreement (``union = |P| + |G| - |P ∩ G|``); per class sum
    intersections and unions; FB-IoU from background and (class-agnostic) foreground sums.
    """
    intersection, union = defaultdict(int), defaultdict(int)
    fb_intersection, fb_union = np.zeros(2), np.zeros(2)
    bins = np.arange(num_ways + 2) - 0.5  # one bin per label 0..N; 255 falls outside
    for pred, target, episode_classes in zip(preds, targets, classes, strict=True):
        pred = pred.copy()
        pred[target == ignore] = ignore
        agree = pred[pred == target]
        area_i = np.histogram(agree, bins)[0]
        area_p, area_t = np.histogram(pred, bins)[0], np.histogram(target, bins)[0]
        area_u = area_p + area_t - area_i
        for way, class_id in enumerate(np.atleast_1d(episode_classes), start=1):
            intersection[int(class_id)] += area_i[way]
            union[int(class_id)] += area_u[way]
        fg_p = (pred != 0) & (pred != ignore)
        fg_t = (target != 0) & (target != ignore)
        fb_intersection += [area_i[0], (fg_p & fg_t).sum()]
        fb_union += [area_u[0], (fg_p | fg_t).sum()]
    iou = [intersection[c] / max(union[c], 1) for c in class_ids]
    return 100 * np.mean(iou), 100 * np.mean(fb_intersection / fb_union), iou


def _random_episodes(num, size, num_ways, class_ids, seed):
    rng = np.random.default_rng(seed)
    preds = rng.integers(0, num_ways + 1, (num, size, size))
    targets = rng.integers(0, num_ways + 1, (num, size, size))
    targets[rng.random((num, size, size)) < 0.15] = 255
    targets[0, : size // 2] = 255  # a large ignored region
    if num_ways == 1:
        classes = rng.choice(class_ids, num)
    else:
        classes = np.stack([rng.choice(class_ids, num_ways, replace=False) for _ in range(num)])
    return preds, targets, classes


@pytest.mark.parametrize("num_ways", [1, 2])
def test_matches_reference_accumulation(num_ways):
    class_ids = [6, 7, 8, 9, 10]
    preds, targets, classes = _random_episodes(23, 9, num_ways, class_ids, seed=num_ways)
    evaluator = Evaluator(class_ids)
    for start, stop in [(0, 1), (1, 8), (8, 23)]:  # uneven batches, repeated classes inside
        evaluator.update(
            torch.from_numpy(preds[start:stop]),
            torch.from_numpy(targets[start:stop]),
            torch.from_numpy(classes[start:stop]),
        )
    miou, fbiou, iou = _reference(preds, targets, classes, class_ids, num_ways)
    assert evaluator.miou() == pytest.approx(miou)
    assert evaluator.fbiou() == pytest.approx(fbiou)
    assert list(evaluator.per_class().values()) == pytest.approx([100 * v for v in iou])
    assert evaluator.num_episodes == 23


def test_accumulation_differs_from_per_episode_averaging_by_hand():
    # Same class twice. Episode 1: 1-pixel object, hit (IoU 1). Episode 2: 9-pixel object,
    # missed (IoU 0). Mean of episodes: 50%. Accumulated: (1 + 0) / (1 + 9) = 10%.
    target = torch.zeros(2, 4, 4, dtype=torch.long)
    target[0, 0, 0] = 1
    target[1, :3, :3] = 1
    pred = torch.zeros_like(target)
    pred[0, 0, 0] = 1
    evaluator = Evaluator([3])
    evaluator.update(pred, target, torch.tensor([3, 3]))
    assert evaluator.miou() == pytest.approx(10.0)
    assert episode_iou(pred, target).tolist() == pytest.approx([100.0, 0.0])
    # FB-IoU: background I = 15 + 7 = 22, U = 15 + 16 = 31; foreground 1 / 10.
    assert evaluator.fbiou() == pytest.approx(100 * (22 / 31 + 1 / 10) / 2)
    assert evaluator.rows() == [{"class": 3, "intersection": 1, "union": 10}]


def test_ignored_pixels_count_in_neither():
    pred = torch.tensor([[[1, 1, 0, 0]]])
    target = torch.tensor([[[1, 255, 255, 0]]])
    evaluator = Evaluator([1])
    evaluator.update(pred, target, [1])
    assert evaluator.rows() == [{"class": 1, "intersection": 1, "union": 1}]
    assert evaluator.fbiou() == 100.0


def test_unseen_class_counts_as_zero_and_reset_clears():
    evaluator = Evaluator([1, 2])
    pred = target = torch.ones(1, 2, 2, dtype=torch.long)
    evaluator.update(pred, target, torch.tensor([1]))
    assert evaluator.per_class() == {1: 100.0, 2: 0.0}
    assert evaluator.miou() == 50.0
    assert evaluator.episode_counts() == {1: 1, 2: 0}
    evaluator.reset()
    with pytest.raises(RuntimeError, match="update"):
        evaluator.miou()


def test_skip_absent_ignores_ways_missing_from_the_query():
    # 2-way episode whose query holds only way 1; way 2 (class 5) is falsely predicted.
    target = torch.tensor([[[1, 1, 0, 0]]])
    pred = torch.tensor([[[1, 1, 2, 0]]])
    counted, skipped = Evaluator([4, 5]), Evaluator([4, 5], skip_absent=True)
    for evaluator in (counted, skipped):
        evaluator.update(pred, target, torch.tensor([[4, 5]]))
    assert counted.rows()[1] == {"class": 5, "intersection": 0, "union": 1}
    assert skipped.rows()[1] == {"class": 5, "intersection": 0, "union": 0}
    assert skipped.episode_counts() == {4: 1, 5: 0}


@pytest.mark.parametrize(
    ("pred", "target", "class_id", "message"),
    [
        (torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long), [1], "integer labels"),
        (
            torch.zeros(1, 2, 2, 2, dtype=torch.long),
            torch.zeros(1, 2, 2, 2, dtype=torch.long),
            [1],
            r"pred must have shape \[B, H, W\]",
        ),
        (
            torch.zeros(1, 2, 2, dtype=torch.long),
            torch.zeros(1, 3, 3, dtype=torch.long),
            [1],
            "target must have pred's shape",
        ),
        (
            torch.zeros(2, 2, 2, dtype=torch.long),
            torch.zeros(2, 2, 2, dtype=torch.long),
            [1],
            "class_id must be",
        ),
        (
            torch.zeros(1, 2, 2, dtype=torch.long),
            torch.full((1, 2, 2), 7),
            [1],
            "class_id, not in the label map",
        ),
        (torch.full((1, 2, 2), 2), torch.zeros(1, 2, 2, dtype=torch.long), [1], "labels 0..1"),
        (
            torch.zeros(1, 2, 2, dtype=torch.long),
            torch.zeros(1, 2, 2, dtype=torch.long),
            [9],
            "not one of the evaluator's classes",
        ),
    ],
)
def test_rejects_bad_inputs_with_clear_messages(pred, target, class_id, message):
    with pytest.raises(ValueError, match=message):
        Evaluator([1]).update(pred, target, class_id)


def test_rejects_bad_class_ids():
    with pytest.raises(ValueError, match="empty"):
        Evaluator([])
    with pytest.raises(ValueError, match="duplicates"):
        Evaluator([1, 1])
