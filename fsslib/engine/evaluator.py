r"""Few-shot segmentation metrics: class-wise mIoU and FB-IoU, accumulated over episodes.

For a class :math:`c` with episodes :math:`e \in E_c`, intersections and unions are summed over
the episodes before dividing (the protocol of the OSLSM/PANet/PFENet/HSNet evaluation code):

.. math::
    \mathrm{IoU}_c = \frac{\sum_{e \in E_c} |P_e \cap G_e|}{\sum_{e \in E_c} |P_e \cup G_e|},
    \qquad \mathrm{mIoU} = \frac{100}{|C|} \sum_{c \in C} \mathrm{IoU}_c

with :math:`P_e` the predicted and :math:`G_e` the true foreground pixels, pixels labelled 255
excluded from both. A large object thus weighs more than a small one of the same class; the mean
of per-episode IoUs (:func:`episode_iou`) weighs every episode equally and is a different number.
FB-IoU averages the foreground and background IoU, each summed over all episodes of all classes:

.. math::
    \mathrm{FB\text{-}IoU} = \frac{100}{2} \sum_{k \in \{bg, fg\}}
        \frac{\sum_e |P^k_e \cap G^k_e|}{\sum_e |P^k_e \cup G^k_e|}
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

__all__ = ["Evaluator", "episode_counts", "episode_iou"]


class Evaluator:
    """Accumulates intersections and unions per class and computes mIoU / FB-IoU.

    Args:
        class_ids: the classes of the fold (dataset class ids); mIoU averages over all of them.
        ignore_index: label of pixels that count in neither intersection nor union.
        skip_absent: N-way only. When True, a way whose class has no pixel in the query label
            adds nothing for that episode, as PANet's multi-way metric does; when False (the
            default) its false positives still enlarge the union. 1-way queries contain their
            class by construction, so there the setting only matters for labels resized away.

    A class never updated, or with zero union, has IoU 0 and still counts in the mean (as in the
    official HSNet and PFENet code): a fold evaluated on too few episodes to cover every class
    reports a lower mIoU; :meth:`episode_counts` shows which classes were seen.

    Example::

        evaluator = Evaluator(fold_classes("pascal", 0))
        for batch in loader:
            logits = model(batch)["logits"]
            evaluator.update(logits.argmax(1), batch["query_mask"], batch["class_id"])
        print(evaluator.miou(), evaluator.fbiou())
    """

    def __init__(
        self, class_ids: Iterable[int], ignore_index: int = 255, skip_absent: bool = False
    ) -> None:
        self.class_ids = tuple(int(c) for c in class_ids)
        if not self.class_ids:
            raise ValueError("class_ids is empty; pass the classes of the evaluated fold")
        if len(set(self.class_ids)) != len(self.class_ids):
            raise ValueError(f"class_ids has duplicates: {list(self.class_ids)}")
        self.ignore_index = ignore_index
        self.skip_absent = skip_absent
        self._row = {c: i for i, c in enumerate(self.class_ids)}
        self.reset()

    def reset(self) -> None:
        """Forget every accumulated episode."""
        n = len(self.class_ids)
        # int64 pixel counts on the CPU: exact, and independent of the model's device.
        self._intersection = torch.zeros(n, dtype=torch.int64)
        self._union = torch.zeros(n, dtype=torch.int64)
        self._episodes = torch.zeros(n, dtype=torch.int64)
        self._fb_intersection = torch.zeros(2, dtype=torch.int64)  # [background, foreground]
        self._fb_union = torch.zeros(2, dtype=torch.int64)
        self.num_episodes = 0

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor, class_id: Tensor | Sequence) -> None:
        """Add a batch of episodes.

        Args:
            pred: predicted labels ``[B, H, W]``, integer: 0 / 1, or 0..N for N-way
                (``logits.argmax(1)``).
            target: true labels ``[B, H, W]``, integer: 0 / 1 / 255, or 0..N / 255.
            class_id: ``[B]`` class of each episode, or ``[B, N]`` the class of each way
                (label ``n`` in ``pred`` and ``target`` is class ``class_id[:, n - 1]``).
        """
        pred, target, class_id = _check_inputs(pred, target, class_id, self.ignore_index)
        num_ways = class_id.shape[1]
        valid = target != self.ignore_index

        intersection, union = [], []
        for label in range(1, num_ways + 1):
            i, u = _intersection_union(pred == label, target == label, valid)
            intersection.append(i)
            union.append(u)
        intersection, union = torch.stack(intersection, 1), torch.stack(union, 1)  # [B, N]
        counted = torch.ones_like(intersection)  # [B, N]: 1 where the (episode, way) counts
        if self.skip_absent:
            labels = torch.arange(1, num_ways + 1, device=target.device)
            counted = (target.flatten(1).unsqueeze(1) == labels[None, :, None]).any(2).long()
        rows = torch.tensor([self._class_row(c) for c in class_id.flatten().tolist()])
        self._intersection.index_add_(0, rows, (intersection * counted).flatten().cpu())
        self._union.index_add_(0, rows, (union * counted).flatten().cpu())
        self._episodes.index_add_(0, rows, counted.flatten().cpu())

        # Class-agnostic foreground (any way): the standard FB-IoU when N = 1.
        background = _intersection_union(pred == 0, target == 0, valid)
        foreground = _intersection_union(pred != 0, target != 0, valid)
        self._fb_intersection += torch.stack([background[0].sum(), foreground[0].sum()]).cpu()
        self._fb_union += torch.stack([background[1].sum(), foreground[1].sum()]).cpu()
        self.num_episodes += pred.shape[0]

    # ------------------------------------------------------------------ results
    def per_class(self) -> dict[int, float]:
        """``{class_id: IoU in percent}`` for every class of the fold."""
        iou = _ratio(self._intersection, self._union)
        return {c: 100.0 * float(v) for c, v in zip(self.class_ids, iou, strict=True)}

    def miou(self) -> float:
        """Mean over the fold's classes of the class-wise IoU, in percent."""
        self._check_not_empty()
        return 100.0 * float(_ratio(self._intersection, self._union).mean())

    def fbiou(self) -> float:
        """Mean of the background and foreground IoU, in percent.

        For N-way episodes the foreground is class-agnostic (any label 1..N in both prediction
        and target), which reduces to the usual definition for N = 1.
        """
        self._check_not_empty()
        return 100.0 * float(_ratio(self._fb_intersection, self._fb_union).mean())

    def episode_counts(self) -> dict[int, int]:
        """``{class_id: number of episodes accumulated}``."""
        return {c: int(n) for c, n in zip(self.class_ids, self._episodes, strict=True)}

    def rows(self) -> list[dict[str, int]]:
        """One ``{"class", "intersection", "union"}`` dict per class, for a DataFrame.

        Sums of these columns over seeds or runs can be turned back into IoUs exactly.
        """
        return [
            {"class": c, "intersection": int(i), "union": int(u)}
            for c, i, u in zip(self.class_ids, self._intersection, self._union, strict=True)
        ]

    def fb_rows(self) -> list[dict[str, int]]:
        """FB-IoU's counts as rows: class 0 = background, class -1 = foreground (any way).

        With :meth:`rows` they make a table from which both mIoU and FB-IoU can be recomputed
        exactly; in N-way episodes "foreground" is class-agnostic, so it is not the sum of the
        class rows (a pixel of way 1 predicted as way 2 is foreground for FB-IoU).
        """
        return [{"class": c, "intersection": int(i), "union": int(u)}
                for c, i, u in ((0, *self._fb_values(0)), (-1, *self._fb_values(1)))]

    def _fb_values(self, k: int) -> tuple[int, int]:
        return int(self._fb_intersection[k]), int(self._fb_union[k])

    def _class_row(self, class_id: int) -> int:
        try:
            return self._row[class_id]
        except KeyError:
            raise ValueError(
                f"class_id {class_id} is not one of the evaluator's classes {list(self.class_ids)}"
            ) from None

    def _check_not_empty(self) -> None:
        if self.num_episodes == 0:
            raise RuntimeError("no episodes accumulated; call update() first")


@torch.no_grad()
def episode_iou(pred: Tensor, target: Tensor, ignore_index: int = 255) -> Tensor:
    """Foreground IoU of each episode on its own, in percent.

    ``IoU_e = |P_e ∩ G_e| / |P_e ∪ G_e|`` (0 when the union is empty), 255 pixels excluded.
    Their mean is the per-episode average that the official protocol does *not* use; see the
    module docstring.

    Args:
        pred: ``[B, H, W]`` integer labels 0 / 1.
        target: ``[B, H, W]`` integer labels 0 / 1 / 255.

    Returns:
        float ``[B]`` on ``pred``'s device.
    """
    intersection, union = episode_counts(pred, target, ignore_index)
    return 100.0 * _ratio(intersection, union)


def episode_counts(pred: Tensor, target: Tensor, ignore_index: int = 255) -> tuple[Tensor, Tensor]:
    """Foreground ``(|P_e ∩ G_e|, |P_e ∪ G_e|)`` of each episode, 255 pixels excluded: int64 ``[B]``
    each. Summed over a class's episodes they give that class's IoU of the official protocol, so
    any subset of episodes (a factor's bin) has its own mIoU."""
    pred, target, _ = _check_inputs(pred, target, None, ignore_index)
    return _intersection_union(pred == 1, target == 1, target != ignore_index)


def _intersection_union(pred: Tensor, target: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Per-episode ``|P ∩ G|``, ``|P ∪ G|`` over valid pixels: bool ``[B, H, W]`` -> ``[B]``."""
    pred = pred & valid
    target = target & valid
    return (pred & target).flatten(1).sum(1), (pred | target).flatten(1).sum(1)


def _ratio(intersection: Tensor, union: Tensor) -> Tensor:
    """``I / U`` with 0 where ``U == 0`` (then ``I == 0`` too)."""
    return intersection.double() / union.clamp(min=1).double()


def _check_inputs(
    pred: Tensor, target: Tensor, class_id: Tensor | Sequence | None, ignore_index: int
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Validate shapes, dtypes and label values; return ``class_id`` as ``[B, N]`` (CPU)."""
    for name, labels in (("pred", pred), ("target", target)):
        if not isinstance(labels, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor of labels [B, H, W]")
        if labels.is_floating_point():
            raise ValueError(
                f"{name} must hold integer labels, got {labels.dtype}; for predictions pass "
                "logits.argmax(1), not the logits"
            )
        if labels.dim() != 3:
            raise ValueError(f"{name} must have shape [B, H, W], got {tuple(labels.shape)}")
    if target.shape != pred.shape:
        raise ValueError(
            f"target must have pred's shape {tuple(pred.shape)}, got {tuple(target.shape)}; "
            "resize the logits to the label size before argmax"
        )
    target = target.to(pred.device)

    num_ways = 1
    if class_id is not None:
        class_id = torch.as_tensor(class_id).cpu()
        batch = pred.shape[0]
        if (
            class_id.is_floating_point()
            or class_id.dim() not in (1, 2)
            or class_id.shape[0] != batch
        ):
            raise ValueError(
                f"class_id must be an integer tensor [B] or [B, N] with B = {batch}, got "
                f"{class_id.dtype} of shape {tuple(class_id.shape)}"
            )
        class_id = class_id.reshape(batch, -1)
        num_ways = class_id.shape[1]

    if bool(((pred < 0) | (pred > num_ways)).any()):
        raise ValueError(f"pred must hold labels 0..{num_ways} for a {num_ways}-way episode")
    bad_target = (target < 0) | (target > num_ways)
    if bool((bad_target & (target != ignore_index)).any()):
        raise ValueError(
            f"target must hold labels 0..{num_ways} or {ignore_index} (ignore); "
            "dataset class ids belong in class_id, not in the label map"
        )
    return pred, target, class_id
