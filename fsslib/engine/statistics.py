"""The statistics of every table, in one place: class-wise accumulated mIoU, 95% intervals over
seeds, and paired differences.

- mIoU sums intersections and unions per class over the episodes it covers, then averages the
  classes' IoUs (a class whose union is empty scores 0), as the official evaluation code does.
- An interval is the 95% t-interval of a mean over seeds (training seeds for a table row,
  evaluation seeds elsewhere); with one seed there is none (NaN).
- A paired difference subtracts two rows seed by seed (same training episodes, same test
  episodes) and takes the interval of those differences; it is *resolved* when the interval
  excludes zero, and never with a single seed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats


def interval95(values) -> tuple[float, float]:
    """Mean and the half-width of its 95% t-interval (NaN for a single value: no interval exists)."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return float(values.mean()), float("nan")
    return float(values.mean()), float(stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)))


def with_interval(mean: float, half: float, digits: int = 1, sign: bool = False) -> str:
    """``"71.7 ± 0.9"``, or ``"71.7 (1 seed)"`` when there is no interval; ``sign`` writes ``+0.4``."""
    value = f"{mean:+.{digits}f}" if sign else f"{mean:.{digits}f}"
    return f"{value} (1 seed)" if np.isnan(half) else f"{value} ± {half:.{digits}f}"


def class_wise_miou(rows: pd.DataFrame, keys: list[str]) -> pd.Series:
    """mIoU in percent per group of ``keys`` (no keys: one value for all ``rows``): intersections
    and unions of each class (rows with ``class > 0``) summed over the group's rows, then the mean
    of the classes' IoUs."""
    classes = rows[rows["class"] > 0]
    sums = classes.groupby([*keys, "class"], sort=False)[["intersection", "union"]].sum()
    iou = (sums["intersection"] / sums["union"].where(sums["union"] > 0)).fillna(0)
    if not keys:
        return pd.Series([100 * iou.mean()], name="miou")
    return (100 * iou.groupby(keys, sort=False).mean()).rename("miou")


@dataclass(frozen=True)
class PairedDifference:
    mean: float
    half: float  # half-width of the 95% interval; NaN without one
    n: int  # pairs (seeds)

    @property
    def resolved(self) -> bool:
        """The interval excludes zero (False without an interval)."""
        return bool(abs(self.mean) > self.half)


def paired_difference(values: pd.Series, reference: pd.Series) -> PairedDifference:
    """``values - reference`` matched on their index (the seed), with its 95% interval."""
    paired = (values - reference).dropna()
    if paired.empty:
        return PairedDifference(float("nan"), float("nan"), 0)
    return PairedDifference(*interval95(paired), len(paired))


# ---------------------------------------------------------------------- evaluation rows
def per_seed(rows: pd.DataFrame) -> pd.DataFrame:
    """mIoU and FB-IoU of every (method, fold, shot, seed), in percent."""
    def fb_iou(group: pd.DataFrame) -> float:
        fb = [group.loc[group["class"] == c, ["intersection", "union"]].sum() for c in (0, -1)]
        return 100 * (0.5 * sum(f["intersection"] / max(f["union"], 1) for f in fb))

    keys = ["method", "fold", "shot", "seed"]
    fbiou = rows.groupby(keys, sort=False)[["class", "intersection", "union"]].apply(fb_iou).rename("fbiou")
    return pd.concat([class_wise_miou(rows, keys), fbiou], axis=1).reset_index()


def summarize(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean and 95% interval over seeds of mIoU and FB-IoU per (method, fold, shot)."""
    scores = per_seed(rows)
    out = []
    for (method, fold, shot), g in scores.groupby(["method", "fold", "shot"], sort=False):
        miou, miou_ci = interval95(g["miou"])
        fbiou, fbiou_ci = interval95(g["fbiou"])
        out.append(dict(method=method, fold=fold, shot=shot, seeds=len(g), miou=miou, miou_ci95=miou_ci,
                        fbiou=fbiou, fbiou_ci95=fbiou_ci))
    return pd.DataFrame(out)


def format_summary(summary: pd.DataFrame) -> str:
    table = summary.assign(
        mIoU=[with_interval(m, c) for m, c in zip(summary.miou, summary.miou_ci95)],
        **{"FB-IoU": [with_interval(m, c) for m, c in zip(summary.fbiou, summary.fbiou_ci95)]})
    return table[["method", "fold", "shot", "seeds", "mIoU", "FB-IoU"]].to_string(index=False)
