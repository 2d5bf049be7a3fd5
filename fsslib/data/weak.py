"""Weak support annotations derived from dense masks (PANet, Wang et al. ICCV 2019, section 4.4).

PANet tests how far a model degrades when the support is annotated cheaply:

- ``box``: the bounding box of one randomly chosen instance (connected component) of the
  class is foreground, everything outside it background;
- ``scribble``: a few pixel-wide strokes inside the object (foreground) and inside the
  background; every other pixel is unlabelled, coded ``EXCLUDED`` (254), so prototypes average
  the strokes only.

Both take a coded support mask ``long [H, W]`` (1 / 0 / ``IGNORE`` 255 void / ``EXCLUDED`` 254,
see :mod:`fsslib.data.episodes`) and return one in the same coding. Outside the box, void stays
void and ``EXCLUDED`` stays ``EXCLUDED``, so N-way exclusions of the episode's other classes
survive. The box overwrites whatever lies inside it.

What the authors' code does with weak supports (``test.py``, ``dataloaders/customized.py`` and
``util/utils.py`` of PANet's public code), and how the choice of background carries over:

- scribbles: the foreground is the class's strokes, the background the strokes drawn on the
  background; every other pixel, void included, is in neither. Unlabelled pixels are therefore
  ``EXCLUDED``, not void, and no background rule of :mod:`fsslib.models.panet` uses them.
- boxes: the foreground is the box of the largest instance; the background is every pixel
  outside the boxes of all the class's instances, void included. Here void outside the box stays
  void, so under PANet's default rule it is background there too. Two differences remain, shared
  by every method: the box is drawn around a random instance rather than the largest, and the
  class's other instances outside it are background rather than in neither.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from .sources import EXCLUDED

WEAK_ANNOTATIONS = ("dense", "scribble", "box")


def box_annotation(mask: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    fg = (mask == 1).cpu().numpy()
    components, count = ndimage.label(fg)
    out = mask.clone()
    out[mask == 1] = 0
    if count == 0:
        return out
    rows, cols = np.nonzero(components == rng.integers(1, count + 1))
    out[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = 1
    return out


def _stroke(region: np.ndarray, rng: np.random.Generator, length: int, width: int) -> np.ndarray:
    """A random walk with momentum that stays inside ``region``, drawn ``width`` pixels wide."""
    ys, xs = np.nonzero(region)
    stroke = np.zeros_like(region)
    if len(ys) == 0:
        return stroke
    start = rng.integers(len(ys))
    y, x = float(ys[start]), float(xs[start])
    heading = rng.uniform(0, 2 * np.pi)
    h, w = region.shape
    for _ in range(length):
        stroke[int(y), int(x)] = True
        for _attempt in range(8):
            turn = heading + rng.normal(0, 0.35)
            ny, nx = y + np.sin(turn), x + np.cos(turn)
            if 0 <= ny < h and 0 <= nx < w and region[int(ny), int(nx)]:
                y, x, heading = ny, nx, turn
                break
            heading = rng.uniform(0, 2 * np.pi)
    if width > 1:
        stroke = ndimage.binary_dilation(stroke, iterations=width // 2) & region
    return stroke


def scribble_annotation(mask: torch.Tensor, rng: np.random.Generator, strokes: int = 2) -> torch.Tensor:
    """Foreground and background scribbles, kept away from the boundary by an erosion."""
    m = mask.cpu().numpy()
    size = max(m.shape)
    width = max(1, size // 64)
    out = np.full(m.shape, EXCLUDED, dtype=np.int64)  # unlabelled: neither foreground nor background
    for value in (1, 0):
        region = m == value
        inner = ndimage.binary_erosion(region, iterations=max(1, size // 64))
        inner = inner if inner.any() else region
        length = int(2 * np.sqrt(inner.sum()))
        for _ in range(strokes):
            out[_stroke(inner, rng, length, width)] = value
    return torch.from_numpy(out).to(mask.device)


def weak_annotation(mask: torch.Tensor, kind: str, rng: np.random.Generator) -> torch.Tensor:
    if kind == "dense":
        return mask
    if kind == "box":
        return box_annotation(mask, rng)
    if kind == "scribble":
        return scribble_annotation(mask, rng)
    raise ValueError(f"weak annotation must be one of {WEAK_ANNOTATIONS}, got {kind!r}")
