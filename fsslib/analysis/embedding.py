"""Two-dimensional maps of prototype spaces (t-SNE) and how well classes separate (silhouette).

The methods compare prototypes and pixels by cosine similarity, so by default the geometry
analysed here is the cosine one: vectors are scaled to unit length first (for unit vectors the
squared Euclidean distance is ``2 - 2 cos``, so Euclidean neighbourhoods are cosine ones).

**t-SNE** (van der Maaten and Hinton, 2008) places points in the plane so that neighbours in the
original space stay neighbours; distances *between* clusters and cluster sizes in the map carry
little meaning. Following common practice the vectors are first reduced by PCA (to at most 50
dimensions), which removes noise and makes the neighbour search cheap; scikit-learn's
:class:`~sklearn.manifold.TSNE` then runs from a PCA initialisation (or a seeded random one), so
a map is reproducible. ``perplexity`` is roughly the number of neighbours each point attends to; it
must be smaller than the number of points.

**Silhouette** (Rousseeuw, 1987) of a point ``i`` of class ``A``, with ``a(i)`` its mean distance
to the other points of ``A`` and ``b(i)`` the smallest mean distance to the points of another class:

.. math:: s(i) = \\frac{b(i) - a(i)}{\\max(a(i), b(i))} \\in [-1, 1]

near 1: well inside its class; near 0: between two classes; negative: closer to another class.
It is computed in the original feature space (not in the t-SNE map, whose distances are distorted).
"""
from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .collect import PrototypeSet

__all__ = ["MARKERS", "embed", "plot_embedding", "silhouette_by_class", "tsne"]

_METRICS = ("cosine", "euclidean")


def _prepare(vectors: np.ndarray, metric: str) -> np.ndarray:
    if metric not in _METRICS:
        raise ValueError(f"metric must be one of {_METRICS}, got {metric!r}")
    vectors = np.asarray(vectors, dtype=np.float64)
    if vectors.ndim != 2:
        raise ValueError(f"vectors must be [N, C], got shape {vectors.shape}")
    if metric == "cosine":
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = vectors / np.maximum(norms, 1e-12)  # a zero vector stays zero
    return vectors


def tsne(vectors: np.ndarray, perplexity: float = 30.0, seed: int = 0, pca_components: int | None = 50,
         metric: str = "cosine", init: str = "pca") -> np.ndarray:
    """2-D t-SNE map ``[N, 2]`` of ``vectors`` ``[N, C]``: PCA first, then scikit-learn's TSNE.

    Args:
        perplexity: effective number of neighbours; must be below ``N``.
        seed: ``random_state`` of PCA and t-SNE; the same seed gives the same map.
        pca_components: PCA dimensions before t-SNE (at most ``min(N, C)``); None skips PCA.
        metric: ``"cosine"`` (vectors scaled to unit length first) or ``"euclidean"`` (as given).
        init: ``"pca"`` (scikit-learn's default: the map starts from the first two principal
            components, which keeps more of the global layout; the result then hardly depends on
            ``seed``) or ``"random"`` (a seeded random start: compare seeds to see which
            features of a map are stable).
    """
    from sklearn.decomposition import PCA  # scikit-learn is imported on first use (seconds)
    from sklearn.manifold import TSNE

    x = _prepare(vectors, metric)
    if not 0 < perplexity < len(x):
        raise ValueError(f"perplexity must be in (0, N) = (0, {len(x)}), got {perplexity}; "
                         "use fewer neighbours or more points")
    if pca_components is not None and min(x.shape) > pca_components:
        x = PCA(n_components=pca_components, random_state=seed).fit_transform(x)
    return TSNE(n_components=2, perplexity=perplexity, init=init, random_state=seed).fit_transform(x)


def silhouette_by_class(vectors: np.ndarray, labels: Sequence, metric: str = "cosine") -> pd.DataFrame:
    """Mean silhouette per class, and over all points (row ``"all"``), in the original space.

    Args:
        vectors: ``[N, C]``.
        labels: ``N`` class labels (at least two distinct ones).
        metric: ``"cosine"`` (distance ``1 - cos``) or ``"euclidean"``.

    Returns:
        columns ``silhouette`` and ``n`` (points), indexed by class, then ``"all"`` (the mean over
        points, scikit-learn's ``silhouette_score``).
    """
    from sklearn.metrics import silhouette_samples

    if metric not in _METRICS:
        raise ValueError(f"metric must be one of {_METRICS}, got {metric!r}")
    labels = np.asarray(labels)
    scores = silhouette_samples(np.asarray(vectors, dtype=np.float64), labels, metric=metric)
    table = pd.DataFrame({"class": labels, "silhouette": scores}).groupby("class")["silhouette"].agg(["mean", "size"])
    table = table.rename(columns={"mean": "silhouette", "size": "n"})
    table.loc["all"] = [scores.mean(), len(scores)]
    table["n"] = table["n"].astype(int)
    return table


def embed(prototypes: PrototypeSet, perplexity: float = 30.0, seed: int = 0, pca_components: int | None = 50,
          metric: str = "cosine", init: str = "pca") -> pd.DataFrame:
    """The metadata of ``prototypes`` with the t-SNE coordinates ``x``, ``y`` of each (one joint map)."""
    xy = tsne(prototypes.vectors, perplexity, seed, pca_components, metric, init)
    return prototypes.meta.assign(x=xy[:, 0], y=xy[:, 1])


#: Marker of each prototype role in :func:`plot_embedding`.
MARKERS = {"support": "o", "query_gt": "^", "query_pred": "s", "self_support": "*"}
ROLE_NAMES = {"support": "support", "query_gt": "query (ground truth)", "query_pred": "query (prediction)",
              "self_support": "self-support (SSP)"}


def plot_embedding(ax: plt.Axes, points: pd.DataFrame, class_name=str, title: str | None = None,
                   size: float = 22, legend: bool = True, classes: Sequence[int] | None = None) -> None:
    """Draw an :func:`embed` map: colour = class, marker = role, filled = novel, hollow = base class.

    Args:
        class_name: class id -> legend text.
        legend: draw the legends (classes; roles and novel/base) to the right of the axes.
        classes: fixes the colour of each class (pass the same list to every panel of a figure);
            default: the classes present, sorted.
    """
    present = set(points["class"])
    classes = sorted(present) if classes is None else list(classes)
    if len(classes) > 10:  # tab20 holds 10 dark/light pairs: the dark ones first, for distinct colours
        palette = [plt.get_cmap("tab20")(i) for i in (*range(0, 20, 2), *range(1, 20, 2))]
    else:
        palette = [plt.get_cmap("tab10")(i) for i in range(10)]
    colour = {c: palette[i % len(palette)] for i, c in enumerate(classes)}
    for (role, kind), group in points.groupby(["role", "classes"], sort=False):
        colours = [colour[c] for c in group["class"]]
        marker = MARKERS[role]
        ax.scatter(group["x"], group["y"], marker=marker, s=size * (2.2 if marker == "*" else 1), linewidths=0.9,
                   c=colours if kind == "novel" else "none", edgecolors=colours, alpha=0.8)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    if not legend:
        return
    handles = [plt.Line2D([], [], ls="", marker="o", color=colour[c], label=class_name(c))
               for c in classes if c in present]
    first = ax.legend(handles=handles, fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    ax.add_artist(first)
    roles = [r for r in MARKERS if r in set(points["role"])]
    kinds = [k for k in ("novel", "base") if k in set(points["classes"])]
    style = [plt.Line2D([], [], ls="", marker=MARKERS[r], color="0.3", label=ROLE_NAMES[r]) for r in roles]
    style += [plt.Line2D([], [], ls="", marker="o", color="0.3", markerfacecolor="0.3" if k == "novel" else "none",
                         label=f"{k} class") for k in kinds]
    ax.legend(handles=style, fontsize=6, loc="lower left", bbox_to_anchor=(1.0, 0.0), frameon=False)
