"""Plotting helpers shared by notebooks and ``reproduce``; figures go to one stable folder."""
from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Callable, Sequence

# No backend is chosen here: a library module that switched it at import would silently turn off
# a notebook's inline figures; the command line (``fsslib.__main__``) chooses a headless one.
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch

from ..data.sources import EXCLUDED, IGNORE
from ..data.transforms import denormalise
from ..runtime import fast_mode

IGNORE_RGB = np.array([1.0, 1.0, 1.0])


def figures_dir() -> Path:
    """Where the notebooks save their figures: ``$FSSLIB_FIGURES`` if set (the tests), else
    ``runs/figures/``, working state beside the runs that git ignores, so that running a notebook
    never changes a committed file; fast mode in its ``fast/`` subfolder. The committed ``figures/``
    are what ``make reproduce`` draws (``experiments.report``) and the notebook figures the
    README shows, copied from a fresh-clone run."""
    from ..engine.trainer import runs_dir

    path = Path(os.environ.get("FSSLIB_FIGURES") or runs_dir() / "figures")
    if fast_mode():
        path = path / "fast"
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_figure(fig: plt.Figure, name: str, close: bool = False, folder: Path | None = None) -> Path:
    """Write ``fig`` to ``<folder>/<name>`` (default :func:`figures_dir`); ``close`` it when no
    notebook will display it (scripts that draw many figures would otherwise keep them all in memory)."""
    path = (folder or figures_dir()) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    if close:
        plt.close(fig)
    return path


def overlay(image: torch.Tensor, mask: torch.Tensor, colours: Sequence = ("red", "deepskyblue", "lime")) -> np.ndarray:
    """A normalised image ``[3, H, W]``: mask values 1..N tinted and outlined, 255 (void) and 254
    (excluded: another way's class, or unlabelled in a weak support) white."""
    return tint(denormalise(image), mask.cpu().numpy(), colours)


def tint(rgb: np.ndarray, mask: np.ndarray, colours: Sequence = ("red", "deepskyblue", "lime")) -> np.ndarray:
    """:func:`overlay` of a displayable ``float [H, W, 3]`` image in 0..1 and a mask ``[H, W]``."""
    for value, colour in enumerate(colours, start=1):
        shade = np.asarray(matplotlib.colors.to_rgb(colour))
        region = mask == value
        inner = region.copy()
        inner[1:-1, 1:-1] = (region[1:-1, 1:-1] & region[:-2, 1:-1] & region[2:, 1:-1]
                             & region[1:-1, :-2] & region[1:-1, 2:])
        rgb = np.where(region[..., None], 0.5 * rgb + 0.5 * shade, rgb)
        rgb = np.where((region & ~inner)[..., None], shade, rgb)
    return np.where(np.isin(mask, (IGNORE, EXCLUDED))[..., None], IGNORE_RGB, rgb)


def episode_grid(items: Sequence[dict], class_name: Callable[[int], str] = str, title: str | None = None) -> plt.Figure:
    """One row per episode: the query with its ground truth, then its supports (masks tinted)."""
    n_support = max(item["support_imgs"].shape[0] for item in items)
    fig, axes = plt.subplots(len(items), n_support + 1, figsize=(2.0 * (n_support + 1), 2.1 * len(items)),
                             squeeze=False)
    for row, item in zip(axes, items):
        classes = item["support_classes"].tolist()
        shot = item["support_imgs"].shape[0] // len(classes)
        row[0].imshow(overlay(item["query_img"], item["query_mask"]))
        row[0].set_title("query: " + ", ".join(class_name(c) for c in classes), fontsize=7)
        for k, ax in enumerate(row[1:]):
            ax.axis("off")
            if k < item["support_imgs"].shape[0]:
                colour = ("red", "deepskyblue", "lime")[k // shot]
                ax.imshow(overlay(item["support_imgs"][k], item["support_masks"][k], colours=(colour,)))
                ax.set_title(f"support {k % shot + 1}: {class_name(classes[k // shot])}", fontsize=7)
        row[0].axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def factor_panels(breakdown, bins: dict[str, Sequence[str]], shot: int = 1) -> plt.Figure:
    """One panel per factor: mIoU per bin for every method (a line each) with 95% intervals over
    training seeds. ``breakdown``: rows ``(method, shot, factor, bin, miou, miou_ci95)``;
    ``bins``: each factor's bins in order."""
    factors = [f for f in bins if (breakdown.factor == f).any()]
    cols = min(4, len(factors))
    rows = (len(factors) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    chosen = breakdown[breakdown["shot"] == shot]
    for ax, factor in zip(axes.flat, factors):
        order = [b for b in bins[factor] if ((chosen.factor == factor) & (chosen.bin == b)).any()]
        for method, group in chosen[chosen.factor == factor].groupby("method", sort=False):
            group = group.set_index("bin").reindex(order)
            ax.errorbar(range(len(order)), group["miou"], yerr=group["miou_ci95"].fillna(0), marker="o",
                        capsize=3, label=method)
        ax.set_xticks(range(len(order)), [textwrap_label(b) for b in order], fontsize=7)
        ax.set_title(factor, fontsize=9)
        ax.set_ylabel("mIoU")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(factors):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower right", fontsize=8)
    fig.suptitle(f"{shot}-shot mIoU by factor (95% intervals over training seeds)")
    fig.tight_layout()
    return fig


def textwrap_label(label: str, width: int = 12) -> str:
    return "\n".join(textwrap.wrap(label, width))
