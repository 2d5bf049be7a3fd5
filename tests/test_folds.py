import pytest

from fsslib.data import base_classes, fold_classes
from fsslib.data.synthetic import THIN_CLASSES, class_modes, class_parts


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


def test_synthetic_folds_are_contiguous_and_every_class_differs_in_structure():
    assert fold_classes("synthetic", 3) == [16, 17, 18, 19, 20]
    structures = {(parts[0].primitive, tuple(sorted(p.primitive for p in parts[1:])))
                  for parts in map(class_parts, range(1, 21))}
    assert len(structures) == 20  # no two classes share their parts: a class is its structure
    for f in range(4):  # every fold tests at least one class with a thin part
        assert set(fold_classes("synthetic", f)) & set(THIN_CLASSES)
    for c in range(1, 21):
        assert any(p.primitive == "thin" for p in class_parts(c)) == (c in THIN_CLASSES)
        # an arrangement fits the unit circle, which the drawn extent scales
        assert max(abs(complex(*p.offset)) + p.size for p in class_parts(c)) == pytest.approx(1.0)


def test_colour_does_not_identify_a_synthetic_class():
    """Appearance modes come from one shared palette: most palette entries serve several classes."""
    owners: dict[int, set[int]] = {}
    for c in range(1, 21):
        assert len(set(class_modes(c))) == 3
        for entry in class_modes(c):
            owners.setdefault(entry, set()).add(c)
    shared = sum(len(classes) > 1 for classes in owners.values())
    assert shared >= len(owners) // 2


@pytest.mark.parametrize("args,match", [(("voc", 0), "benchmark"), (("pascal5i", 4), "fold"),
                                        (("coco20i", 0, "rows"), "convention"), (("pascal5i", 0, "contiguous"), "coco20i only")])
def test_bad_fold_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        fold_classes(*args)
