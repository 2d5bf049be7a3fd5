"""The notebooks' exercises: a correct answer passes, a wrong one is told what is wrong."""
import pytest
import torch

from fsslib.analysis.exercises import EXERCISES, ExerciseFailed


@pytest.mark.parametrize("name", list(EXERCISES))
def test_the_reference_passes_its_own_check(name, capsys):
    exercise = EXERCISES[name]
    assert exercise.check(exercise.reference)
    assert "correct on all" in capsys.readouterr().out


@pytest.mark.parametrize("name", list(EXERCISES))
def test_an_unwritten_answer_is_told_so(name, capsys):
    def unwritten(*args):
        raise NotImplementedError

    assert not EXERCISES[name].check(unwritten)
    assert "not written yet" in capsys.readouterr().out


@pytest.mark.parametrize("name", [n for n, e in EXERCISES.items() if n not in ("confident pixels", "pyramid bins")])
def test_a_slightly_wrong_answer_is_located(name, capsys):
    exercise = EXERCISES[name]

    def off_by_a_little(*args):
        result = exercise.reference(*args)
        result = result.clone()
        result.view(-1)[-1] += 0.01
        return result

    assert not exercise.check(off_by_a_little)
    assert "largest difference 0.01" in capsys.readouterr().out
    with pytest.raises(ExerciseFailed, match="values differ"):
        exercise.check(off_by_a_little, must_pass=True)


def test_wrong_shapes_dtypes_and_errors_are_named(capsys):
    pooling = EXERCISES["masked average pooling"]
    assert not pooling.check(lambda features, mask: features.mean(dim=(2, 3), keepdim=True))
    assert "expected shape [2, 8], got [2, 8, 1, 1]" in capsys.readouterr().out
    selection = EXERCISES["confident pixels"]
    assert not selection.check(lambda p: p > 0.7)  # forgets the top-12 fallback
    assert "entries differ" in capsys.readouterr().out
    assert not selection.check(lambda p: (p > 0.7).float())
    assert "expected a bool tensor" in capsys.readouterr().out
    assert not pooling.check(lambda features, mask: features @ mask)
    assert "your function raised RuntimeError" in capsys.readouterr().out
    bins = EXERCISES["pyramid bins"]
    assert bins.check(lambda size: [[-(-size[0] // 2 ** i), -(-size[1] // 2 ** i)] for i in range(4)])  # lists are fine
    assert not bins.check(lambda size: [(size[0] // 2 ** i, size[1] // 2 ** i) for i in range(4)])  # floor, not ceil
    assert "expected [(60, 60), (30, 30), (15, 15), (8, 8)], got [(60, 60), (30, 30), (15, 15), (7, 7)]" in capsys.readouterr().out


def test_a_missing_eps_shows_as_nan():
    pooling = EXERCISES["PAR reverse step"]
    problem = pooling._first_problem(lambda q, logits, s: torch.full((q.shape[0], s.shape[1], 2, *q.shape[-2:]), float("nan")),
                                     pooling.cases())
    assert "NaN" in problem
