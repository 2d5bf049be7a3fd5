"""Plotting helpers shared by notebooks and ``reproduce``; figures go to one stable folder."""
from __future__ import annotations

import os
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
    rgb = denormalise(image)
    mask = mask.cpu().numpy()
    for value, colour in enumerate(colours, start=1):
        tint = np.asarray(matplotlib.colors.to_rgb(colour))
        region = mask == value
        inner = region.copy()
        inner[1:-1, 1:-1] = region[1:-1, 1:-1] & region[:-2, 1:-1] & region[2:, 1:-1] & region[1:-1, :-2] & region[1:-1, 2:]
        rgb = np.where(region[..., None], 0.5 * rgb + 0.5 * tint, rgb)
        rgb = np.where((region & ~inner)[..., None], tint, rgb)
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
