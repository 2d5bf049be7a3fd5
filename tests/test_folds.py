import pytest

from fsslib.data import base_classes, fold_classes
from fsslib.data.folds import SYNTHETIC_APPEARANCES, SYNTHETIC_SHAPES


@pytest.mark.parametrize("benchmark,convention,n", [("pascal5i", None, 20), ("coco20i", "interleaved", 80),
                                                     ("coco20i", "contiguous", 80), ("synthetic", None, 20)])
def test_folds_partition_the_classes(benchmark, convention, n):
    folds = [fold_classes(benchmark, f, convention) for f in range(4)]
    assert sorted(c for fold in folds for c in fold) == list(range(1, n + 1))
    for f, fold in enumerate(folds):
        assert len(fold) == n // 4
        assert set(base_classes(benchmark, f, convention)).isdisjoint(fold)


def test_known_fold_members():
    assert fold_classes("pascal5i", 2) == [11, 12, 13, 14, 15]
    assert fold_classes("coco20i", 1)[:3] == [2, 6, 10]  # interleaved is the default
    assert fold_classes("coco20i", 1, "contiguous")[:3] == [21, 22, 23]


def test_synthetic_folds_are_a_latin_square():
    n_app = len(SYNTHETIC_APPEARANCES)
    for f in range(4):
        novel = fold_classes("synthetic", f)
        pairs = [divmod(c - 1, n_app) for c in novel]
        assert sorted(s for s, _ in pairs) == list(range(len(SYNTHETIC_SHAPES)))  # one class per shape
        assert all((a - s) % 4 == f for s, a in pairs)
        base = [divmod(c - 1, n_app) for c in base_classes("synthetic", f)]
        for s, a in pairs:  # the novel combination's shape and appearance both occur among base classes
            assert any(bs == s for bs, _ in base) and any(ba == a for _, ba in base)


@pytest.mark.parametrize("args,match", [(("voc", 0), "benchmark"), (("pascal5i", 4), "fold"),
                                        (("coco20i", 0, "rows"), "convention"), (("pascal5i", 0, "contiguous"), "coco20i only")])
def test_bad_fold_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        fold_classes(*args)
