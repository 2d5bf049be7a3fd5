"""Exercises of notebooks 02-06: write one equation of a method, then compare it with fsslib's.

Each :class:`Exercise` holds the function the student re-writes (``reference``, the one the
methods run) and a few input cases, edge cases among them (one object cell, a non-square map,
several shots, a prediction with no foreground). ``check`` runs the student's function on every
case and prints the first thing that is wrong (an exception, a shape, a dtype, the largest
difference and where it is); a notebook's solution cell calls it with ``must_pass=True``, which
raises instead of printing, so the tests that run the notebooks also check the solutions.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..models.ops import cosine_logits, masked_average_pooling
from ..models.panet import prototype_alignment
from ..models.pfenet import pyramid_bins
from ..models.priors import max_cosine_prior, mean_cosine_prior, min_max_normalize
from ..models.ssp import confident_pixels, selected_mean


class ExerciseFailed(AssertionError):
    """A solution that ``check(..., must_pass=True)`` found wrong."""


@dataclass(frozen=True)
class Exercise:
    name: str
    #: What the student's function takes and returns (printed by :meth:`describe`).
    signature: str
    reference: Callable
    cases: Callable[[], list[tuple]]
    rtol: float = 1e-4
    atol: float = 1e-5

    def describe(self) -> None:
        print(f"{self.name}: {self.signature}")

    def check(self, student: Callable, must_pass: bool = False) -> bool:
        """Compare ``student`` with the reference on every case; print the verdict (raise with ``must_pass``)."""
        cases = self.cases()
        problem = self._first_problem(student, cases)
        if problem is None:
            print(f"{self.name}: correct on all {len(cases)} cases")
            return True
        if must_pass:
            raise ExerciseFailed(f"{self.name}: {problem}")
        print(f"{self.name}: {problem}")
        return False

    def _first_problem(self, student: Callable, cases: list[tuple]) -> str | None:
        for i, case in enumerate(cases):
            shapes = ", ".join(_shape(a) for a in case)
            try:
                got = student(*case)
            except NotImplementedError:
                return "not written yet (the function raises NotImplementedError); fill it in and run this cell again"
            except Exception as error:  # the student's code: any error is the answer to show
                return f"case {i} ({shapes}): your function raised {type(error).__name__}: {error}"
            problem = _difference(got, self.reference(*case), self.rtol, self.atol)
            if problem:
                return f"case {i} ({shapes}): {problem}"
        return None


def _shape(value) -> str:
    return f"[{', '.join(map(str, value.shape))}]" if isinstance(value, Tensor) else repr(value)


def _difference(got, want, rtol: float, atol: float) -> str | None:
    if not isinstance(want, Tensor):
        if isinstance(want, list) and isinstance(got, (list, tuple)):
            got = [tuple(v) if isinstance(v, (list, tuple)) else v for v in got]
        return None if got == want else f"expected {want!r}, got {got!r}"
    if not isinstance(got, Tensor):
        return f"expected a tensor {_shape(want)}, got {type(got).__name__}"
    if got.shape != want.shape:
        return f"expected shape {_shape(want)}, got {_shape(got)}"
    if want.dtype == torch.bool:
        if got.dtype != torch.bool:
            return f"expected a bool tensor (a selection), got {got.dtype}"
        wrong = (got != want).nonzero()
        return None if len(wrong) == 0 else (f"{len(wrong)} entries differ, the first at index "
                                             f"{tuple(wrong[0].tolist())} (expected {bool(want[tuple(wrong[0])])})")
    got = got.detach().to(want.dtype)
    if torch.isnan(got).any() and not torch.isnan(want).any():
        return "your result has NaN entries (a division by zero? an eps missing?)"
    error = (got - want).abs()
    if torch.allclose(got, want, rtol=rtol, atol=atol):
        return None
    where = tuple(int(i) for i in torch.unravel_index(error.argmax(), error.shape))
    return (f"values differ: largest difference {error.max():.3g} at index {where} "
            f"(expected {want[where]:.5g}, got {got[where]:.5g})")


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _binary_mask(shape, generator, density: float = 0.4) -> Tensor:
    mask = (torch.rand(shape, generator=generator) < density).float()
    mask[..., 0, 0] = 1.0  # never empty
    return mask


def _pooling_cases() -> list[tuple]:
    g = _generator(0)
    one_cell = torch.zeros(1, 16, 16)
    one_cell[0, 5, 7] = 1
    return [(torch.randn(2, 8, 4, 4, generator=g), _binary_mask((2, 16, 16), g)),
            (torch.randn(1, 5, 6, 3, generator=g), _binary_mask((1, 24, 12), g)),
            (torch.randn(1, 3, 4, 4, generator=g), one_cell)]


def _cosine_cases() -> list[tuple]:
    g = _generator(1)
    return [(torch.randn(2, 8, 5, 5, generator=g), torch.randn(2, 2, 8, generator=g), 20.0),
            (torch.randn(1, 4, 3, 7, generator=g), torch.randn(1, 3, 4, generator=g), 10.0)]


def _prior_cases() -> list[tuple]:
    g = _generator(2)
    cases = []
    for shots, (h, w) in ((1, (6, 6)), (2, (5, 7))):
        support = torch.randn(1, shots, 16, h, w, generator=g)
        support = support * _binary_mask((1, shots, 1, h, w), g)  # PFENet masks the support first
        cases.append((torch.randn(1, 16, h, w, generator=g), support))
    return cases


def _normalise_cases() -> list[tuple]:
    g = _generator(3)
    return [(torch.randn(2, 1, 5, 5, generator=g),), (torch.rand(1, 3, 4, 6, generator=g),)]


def _reverse_cases() -> list[tuple]:
    g = _generator(4)
    no_object = torch.zeros(1, 2, 4, 4)
    no_object[:, 0] = 1.0  # the query prediction has no foreground: its prototype is zero
    return [(torch.randn(2, 8, 4, 4, generator=g), torch.randn(2, 2, 4, 4, generator=g),
             torch.randn(2, 1, 8, 4, 4, generator=g)),
            (torch.randn(1, 6, 5, 3, generator=g), torch.randn(1, 2, 5, 3, generator=g),
             torch.randn(1, 3, 6, 5, 3, generator=g)),
            (torch.randn(1, 4, 4, 4, generator=g), no_object, torch.randn(1, 1, 4, 4, 4, generator=g))]


def _reverse_reference(query_feats: Tensor, query_logits: Tensor, support_feats: Tensor) -> Tensor:
    """PAR for one way: the supports' ``[B, K, 2, h, w]`` logits at feature resolution."""
    size = support_feats.shape[-2:]
    return prototype_alignment(query_feats, query_logits, support_feats, 1, size, 20.0, 1e-5)["support_logits"]


def _selection_cases() -> list[tuple]:
    g = _generator(5)
    sure = torch.rand(2, 30, generator=g)
    unsure = torch.rand(1, 20, generator=g) * 0.5  # nothing above 0.7: the top-12 fallback
    return [(sure,), (unsure,)]


def _ssfp_cases() -> list[tuple]:
    g = _generator(6)
    return [(torch.randn(2, 8, 5, 5, generator=g), torch.rand(2, 5, 5, generator=g)),
            (torch.randn(1, 4, 3, 6, generator=g), torch.rand(1, 3, 6, generator=g) * 0.5)]


def _ssfp_reference(features: Tensor, foreground_probability: Tensor) -> Tensor:
    selection = confident_pixels(foreground_probability.flatten(1), 0.7, 12)
    return selected_mean(features.flatten(2), selection)


def _bins_cases() -> list[tuple]:
    return [((60, 60),), ((16, 16),), ((13, 9),), ((1, 1),)]


def _mean_prior_cases() -> list[tuple]:
    g = _generator(7)
    cases = []
    for shots, (h, w) in ((1, (6, 6)), (2, (4, 5))):
        weights = torch.rand(1, shots, h, w, generator=g) * _binary_mask((1, shots, h, w), g)
        support = torch.randn(1, shots, 12, h, w, generator=g) * weights[:, :, None]
        cases.append((torch.randn(1, 12, h, w, generator=g), support, weights))
    return cases


EXERCISES: dict[str, Exercise] = {e.name: e for e in (
    Exercise("masked average pooling",
             "(features [B, C, h, w], mask [B, H, W] of 0/1) -> prototype [B, C]; resize the mask to h x w "
             "(bilinear, align_corners=True), eps = 1e-5 added to the mask's area",
             lambda features, mask: masked_average_pooling(features, mask, "resize_mask", 1e-5), _pooling_cases),
    Exercise("cosine matching",
             "(features [B, C, h, w], prototypes [B, P, C], scale) -> logits [B, P, h, w] = scale * cos(F(x, y), p_j)",
             cosine_logits, _cosine_cases),
    Exercise("min-max normalisation",
             "(similarity [B, K, h, w]) -> (c - min c) / (max c - min c + 1e-7), each h x w map on its own",
             min_max_normalize, _normalise_cases),
    Exercise("PFENet prior",
             "(query [B, C, h, w], masked support [B, K, C, h', w']) -> prior [B, K, h, w]: for each query cell "
             "the largest cosine to any support cell (eps 1e-7 added to the product of norms), then min-max normalised",
             max_cosine_prior, _prior_cases),
    Exercise("PAR reverse step",
             "(query features [B, C, h, w], query logits [B, 2, h, w], support features [B, K, C, h, w]) -> "
             "support logits [B, K, 2, h, w]: prototypes of the query's predicted background and object "
             "(argmax; eps 1e-5 added to each area), then 20 * cosine with every support cell",
             _reverse_reference, _reverse_cases),
    Exercise("confident pixels",
             "(probability [B, P]) -> bool [B, P]: probability > 0.7, or, where no pixel of a row passes, its 12 "
             "most probable pixels",
             lambda probability: confident_pixels(probability, 0.7, 12), _selection_cases),
    Exercise("self-support foreground prototype",
             "(query features [B, C, h, w], foreground probability [B, h, w]) -> SSFP [B, C]: the mean feature "
             "of the confident pixels (as in 'confident pixels')",
             _ssfp_reference, _ssfp_cases),
    Exercise("pyramid bins",
             "((h, w)) -> [(h_i, w_i) for the 4 scales]: ceil(h / 2**i), ceil(w / 2**i) for i = 0..3",
             pyramid_bins, _bins_cases),
    Exercise("MSPF mean prior",
             "(query [B, C, h, w], masked support [B, K, C, h', w'], weights [B, K, h', w']) -> prior [B, K, h, w]: "
             "the weight-averaged cosine (eps 1e-7 in the cosine and the weight sum), then min-max normalised",
             mean_cosine_prior, _mean_prior_cases),
)}
