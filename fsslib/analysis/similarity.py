"""How similar are pixel features within an object, across objects of a class, and in the background?

SSP (Fan et al., ECCV 2022, section 3.1 and Table 1) motivates self-support matching with
statistics of this kind, measured with an ImageNet ResNet-50 on PASCAL VOC: pixels of one object
are far more similar to each other than to pixels of another object of the same class, and
background pixels of one image are more similar to each other than to background pixels of
other images. If that holds, a prototype pooled from the query itself matches the query better
than any support prototype can.

**Pixels and objects.** A *pixel feature* is one position of a backbone stage's feature map
(``[C, h, w]``, stride 8 here). The label map (dataset class ids; 0 background; ``LABEL_IGNORE``
ignore) at the network input size is resized to ``h x w`` by nearest (pixel-centre) sampling.
An *object* is a connected component (8-connectivity, ``scipy.ndimage.label``) of one class in
the full-resolution label, so images with several instances, as in real datasets, give several
objects; the synthetic images hold one object of each class they show. *Background* is label 0
(no object of any class). Ignored pixels, and objects of classes not asked for, are in neither.

**Statistics** (cosine similarity of two pixel features ``cos(f_i, f_j)``), for each class ``c``,
each a distribution over random pairs drawn as follows (uniform at every step, so every object
or image weighs the same whatever its size):

==========================  ===============================================================
``within_object``           an object of class c; two distinct pixels of it
``between_objects``         two objects of class c in different images; a pixel of each
``fg_vs_bg``                an object of class c; a pixel of it and a background pixel of its image
``bg_within_image``         an image with an object of class c; two distinct background pixels
``bg_across_images``        two different such images; a background pixel of each
==========================  ===============================================================

Every class contributes the same number of pairs, so the overall mean is the mean of the class
means. To bound memory, at most ``pixels_per_region`` feature cells of each object and of each
image's background are kept (drawn uniformly without replacement), and pairs are drawn among
them: a uniformly random pair of kept pixels is a uniformly random pair of the region's pixels.

**Prototype-level statistics** (:func:`prototype_similarity_pairs`): the same question as a
prototype method meets it. An object's prototype is the mean feature of all its cells (masked
average pooling at feature resolution); ``own_object`` compares a pixel with its own object's
prototype (what a perfect self-support prototype gives), ``other_object`` with the prototype of
another object of the class in another image (what a support prototype gives), and
``bg_vs_other_object`` a background pixel with that same support-like prototype (the false
positives a support prototype invites).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor, nn

from ..data import eval_transform
from ..data.sources import LABEL_IGNORE
from ..engine.protocol import EvalProtocol
from ..models.backbones import Backbone
from ..models.ops import resize_to
from ..runtime import default_device

__all__ = ["PROTOTYPE_STATISTICS", "STATISTICS", "PixelSample", "class_images", "class_similarity_matrix",
           "object_map", "pixel_similarity_pairs", "prototype_similarity_pairs", "sample_pixel_features",
           "sample_pixels", "similarity_table"]

#: Pixel-pair statistics, in table order, with their display names.
STATISTICS = {
    "within_object": "within one object",
    "between_objects": "between objects of the class (other images)",
    "fg_vs_bg": "object vs background (same image)",
    "bg_within_image": "background within an image",
    "bg_across_images": "background across images",
}
#: Pixel-to-prototype statistics (see the module docstring).
PROTOTYPE_STATISTICS = {
    "own_object": "pixel vs its own object's prototype",
    "other_object": "pixel vs another object's prototype (same class, other image)",
    "bg_vs_other_object": "background pixel vs that other object's prototype",
}
#: 8-connectivity: pixels touching at a corner belong to one object.
CONNECTIVITY = np.ones((3, 3), dtype=bool)
NEITHER, BACKGROUND = -2, -1


def object_map(label: np.ndarray | Tensor, classes: Sequence[int] | None = None) -> tuple[np.ndarray, list[int]]:
    """Objects of one label map: connected components of each class.

    Args:
        label: ``[H, W]`` dataset class ids (0 background, ``LABEL_IGNORE`` ignore).
        classes: the classes whose objects count; None = every class present. Pixels of other
            classes are in neither objects nor background.

    Returns:
        ``(regions, object_classes)``: ``regions`` int64 ``[H, W]`` holds the object index
        ``0..n-1``, ``-1`` for background (label 0) and ``-2`` for neither; ``object_classes[k]``
        is the class of object ``k``. Objects are numbered by class, then in scan order.
    """
    label = label.cpu().numpy() if isinstance(label, Tensor) else np.asarray(label)
    regions = np.full(label.shape, NEITHER, dtype=np.int64)
    regions[label == 0] = BACKGROUND
    present = sorted(int(c) for c in np.unique(label) if c not in (0, LABEL_IGNORE))
    wanted = present if classes is None else [c for c in present if c in set(int(k) for k in classes)]
    object_classes: list[int] = []
    for c in wanted:
        components, n = ndimage.label(label == c, structure=CONNECTIVITY)
        inside = components > 0
        regions[inside] = components[inside] - 1 + len(object_classes)
        object_classes += [c] * n
    return regions, object_classes


@dataclass
class PixelSample:
    """Sampled pixel features of a set of images, with the objects and backgrounds they come from.

    Attributes:
        vectors: float32 ``[M, C]``, unit length (``F.normalize``; a zero feature stays zero).
        pixel_image: int64 ``[M]``, the image of each sampled pixel.
        pixel_object: int64 ``[M]``, its object, or -1 for a background pixel.
        object_class, object_image: int64 ``[n_objects]``.
        object_cells: int64 ``[n_objects]``, feature cells of each object (all, not only sampled).
        object_prototypes: float32 ``[n_objects, C]``, the mean feature of all the object's cells.
        background_cells: int64 ``[n_images]``, background cells of each image.
        background_prototypes: float32 ``[n_images, C]``, mean background feature (0 if none).
        stems: the image names, when known.
    """

    vectors: np.ndarray
    pixel_image: np.ndarray
    pixel_object: np.ndarray
    object_class: np.ndarray
    object_image: np.ndarray
    object_cells: np.ndarray
    object_prototypes: np.ndarray
    background_cells: np.ndarray
    background_prototypes: np.ndarray
    stems: list[str] | None = None

    @property
    def n_images(self) -> int:
        return len(self.background_cells)

    @property
    def n_objects(self) -> int:
        return len(self.object_class)

    @staticmethod
    def concat(samples: Sequence["PixelSample"]) -> "PixelSample":
        """One sample from samples of disjoint image sets (image and object indices renumbered)."""
        image_offsets = np.cumsum([0] + [s.n_images for s in samples])[:-1]
        object_offsets = np.cumsum([0] + [s.n_objects for s in samples])[:-1]

        def cat(name: str) -> np.ndarray:
            return np.concatenate([getattr(s, name) for s in samples])

        stems = None if any(s.stems is None for s in samples) else [x for s in samples for x in s.stems]
        return PixelSample(
            vectors=cat("vectors"),
            pixel_image=np.concatenate([s.pixel_image + o for s, o in zip(samples, image_offsets)]),
            pixel_object=np.concatenate([np.where(s.pixel_object >= 0, s.pixel_object + o, -1)
                                         for s, o in zip(samples, object_offsets)]),
            object_class=cat("object_class"),
            object_image=np.concatenate([s.object_image + o for s, o in zip(samples, image_offsets)]),
            object_cells=cat("object_cells"), object_prototypes=cat("object_prototypes"),
            background_cells=cat("background_cells"), background_prototypes=cat("background_prototypes"),
            stems=stems)


def sample_pixels(features: Tensor, labels: Tensor, classes: Sequence[int] | None = None,
                  pixels_per_region: int = 64, seed: int | np.random.Generator = 0,
                  stems: Sequence[str] | None = None) -> PixelSample:
    """Sample pixel features of each object and of each image's background.

    Args:
        features: ``[N, C, h, w]``, one stage's features of ``N`` images.
        labels: ``[N, H, W]`` dataset class ids at the network input size (0 background,
            ``LABEL_IGNORE`` ignore); resized to ``h x w`` by nearest (pixel-centre) sampling
            after the objects have been found at full resolution.
        classes: classes whose objects count (None: all).
        pixels_per_region: at most this many cells are kept per object and per background.
        seed: an int or a ``numpy.random.Generator``.

    Returns:
        a :class:`PixelSample`. Objects with no cell at feature resolution are dropped.
    """
    rng = np.random.default_rng(seed)
    n, c, h, w = features.shape
    maps, classes_of = zip(*(object_map(label, classes) for label in labels))
    counts = [len(k) for k in classes_of]
    offsets = np.cumsum([0] + counts)[:-1]
    n_objects = int(sum(counts))
    # Region key of every cell: global object index, n_objects + image for background, -1 neither.
    regions = torch.from_numpy(np.stack(maps))
    regions = resize_to(regions, (h, w), "nearest").numpy().reshape(n, h * w)
    image_of_cell = np.repeat(np.arange(n), h * w).reshape(n, h * w)
    background_key = np.where(regions == BACKGROUND, n_objects + image_of_cell, -1)
    key = np.where(regions >= 0, regions + offsets[:, None], background_key)
    key = key.reshape(-1)
    cells = features.detach().float().permute(0, 2, 3, 1).reshape(-1, c).cpu()

    # Prototypes (means over every cell) and cell counts of each region.
    valid = key >= 0
    index = torch.from_numpy(key[valid])
    sums = torch.zeros(n_objects + n, c).index_add_(0, index, cells[torch.from_numpy(valid)])
    cell_counts = np.bincount(key[valid], minlength=n_objects + n)
    means = (sums / torch.from_numpy(cell_counts).clamp(min=1).unsqueeze(1).float()).numpy()

    # Renumber the objects that have cells at feature resolution.
    kept = cell_counts[:n_objects] > 0
    new_index = np.cumsum(kept) - 1
    object_class = np.asarray([k for per_image in classes_of for k in per_image], dtype=np.int64)
    object_image = np.repeat(np.arange(n), counts)

    # Keep at most pixels_per_region cells per region: a random order within each region.
    cell_index = np.flatnonzero(valid)
    order = np.lexsort((rng.random(len(cell_index)), key[cell_index]))
    sorted_keys = key[cell_index][order]
    first = np.searchsorted(sorted_keys, sorted_keys, side="left")
    take = cell_index[order[np.arange(len(order)) - first < pixels_per_region]]
    region = key[take]
    pixel_object = np.full(len(take), -1, dtype=np.int64)
    is_object = region < n_objects
    pixel_object[is_object] = new_index[region[is_object]]
    return PixelSample(
        vectors=F.normalize(cells[torch.from_numpy(take)], dim=1).numpy().astype(np.float32),
        pixel_image=take // (h * w),
        pixel_object=pixel_object,
        object_class=object_class[kept], object_image=object_image[kept],
        object_cells=cell_counts[:n_objects][kept], object_prototypes=means[:n_objects][kept].astype(np.float32),
        background_cells=cell_counts[n_objects:], background_prototypes=means[n_objects:].astype(np.float32),
        stems=list(stems) if stems is not None else None)


def class_images(source, classes: Sequence[int], per_class: int, split: str = "val", seed: int = 0) -> list[str]:
    """Up to ``per_class`` images of ``split`` holding each class (drawn with ``seed``), all of them, sorted."""
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[str]] = {int(c): [] for c in classes}
    for pair in source.index(split):
        if pair.class_id in by_class:
            by_class[pair.class_id].append(pair.stem)
    stems: set[str] = set()
    for c, candidates in by_class.items():
        candidates = sorted(candidates)
        pick = rng.choice(len(candidates), size=min(per_class, len(candidates)), replace=False)
        stems.update(candidates[i] for i in pick)
    return sorted(stems)


@torch.inference_mode()
def sample_pixel_features(model: nn.Module, source, stems: Sequence[str], stage: str,
                          classes: Sequence[int] | None = None, image_size: int | None = None,
                          pixels_per_region: int = 64, batch_size: int = 32, seed: int = 0,
                          device=None) -> PixelSample:
    """Run the images through a backbone, chunk by chunk, and :func:`sample_pixels` their features.

    Only the samples and the per-region means are kept, so memory does not grow with the
    feature maps (ResNet-50 layer3 at 473 px: 15 MB per image).

    Args:
        model: a :class:`~fsslib.models.backbones.Backbone` or a few-shot model (its ``backbone``).
        stems: the images (e.g. :func:`class_images`).
        stage: the backbone stage (``"layer3"``: SSP's matching features).
        image_size: network input size (default: the benchmark's).
    """
    device = default_device(device)
    backbone = model if isinstance(model, Backbone) else model.backbone
    backbone = backbone.to(device).eval()
    size = image_size or EvalProtocol().size(source.benchmark)
    transform = eval_transform(size)
    rng = np.random.default_rng(seed)
    stems = list(stems)
    samples = []
    for start in range(0, len(stems), batch_size):
        chunk = stems[start:start + batch_size]
        images, labels = zip(*(transform(*source.load(stem)) for stem in chunk))
        features = backbone(torch.stack(images).to(device), upto=stage)[stage]
        samples.append(sample_pixels(features, torch.stack(labels), classes, pixels_per_region, rng, chunk))
    return PixelSample.concat(samples)


# ---------------------------------------------------------------------- pair statistics
def _groups(ids: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of each group ``0..n-1`` (ids < 0 belong to none): ``(order, start, count)``;
    the ``k``-th row of group ``g`` is ``order[start[g] + k]``."""
    member = np.flatnonzero(ids >= 0)
    order = member[np.argsort(ids[member], kind="stable")]
    count = np.bincount(ids[member], minlength=n)
    return order, np.cumsum(count) - count, count


def _one(rng, order, start, count, groups) -> np.ndarray:
    """A uniformly random row of each of ``groups``."""
    return order[start[groups] + (rng.random(len(groups)) * count[groups]).astype(np.int64)]


def _two(rng, order, start, count, groups) -> tuple[np.ndarray, np.ndarray]:
    """Two distinct uniformly random rows of each of ``groups`` (each needs count >= 2)."""
    a = (rng.random(len(groups)) * count[groups]).astype(np.int64)
    b = (a + 1 + (rng.random(len(groups)) * (count[groups] - 1)).astype(np.int64)) % count[groups]
    return order[start[groups] + a], order[start[groups] + b]


def _distinct_pairs(rng, items: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` ordered pairs of distinct entries of ``items``, uniformly."""
    a = rng.integers(len(items), size=n)
    b = (a + 1 + rng.integers(len(items) - 1, size=n)) % len(items)
    return items[a], items[b]


def _pairs_of_objects_in_different_images(rng, objects: np.ndarray, image: np.ndarray, n: int):
    """``n`` ordered pairs of the given objects lying in different images, uniformly (rejection)."""
    if len(np.unique(image[objects])) < 2:
        return None
    first, second = [], []
    while sum(len(f) for f in first) < n:
        a, b = rng.choice(objects, size=2 * n), rng.choice(objects, size=2 * n)
        ok = image[a] != image[b]
        first.append(a[ok])
        second.append(b[ok])
    return np.concatenate(first)[:n], np.concatenate(second)[:n]


def _class_list(sample: PixelSample, classes) -> list[int]:
    return sorted(set(sample.object_class.tolist())) if classes is None else [int(c) for c in classes]


def pixel_similarity_pairs(sample: PixelSample, pairs: int = 2000, seed: int = 0,
                           classes: Sequence[int] | None = None) -> pd.DataFrame:
    """Cosine similarities of random pixel pairs for each statistic of :data:`STATISTICS` and class.

    Returns:
        rows ``statistic``, ``class``, ``similarity``: ``pairs`` rows per (statistic, class), or
        none where the sample holds no such pair (e.g. a class seen in a single image has no
        ``between_objects`` pair).
    """
    rng = np.random.default_rng(seed)
    x = sample.vectors
    sampled = np.bincount(sample.pixel_object[sample.pixel_object >= 0], minlength=sample.n_objects)
    obj = _groups(sample.pixel_object, sample.n_objects)
    bg = _groups(np.where(sample.pixel_object < 0, sample.pixel_image, -1), sample.n_images)
    bg_count = bg[2]
    frames = []

    def emit(statistic, c, i, j):
        frames.append(pd.DataFrame({"statistic": statistic, "class": c,
                                    "similarity": np.einsum("nc,nc->n", x[i], x[j])}))

    for c in _class_list(sample, classes):
        objects = np.flatnonzero((sample.object_class == c) & (sampled > 0))
        if not len(objects):
            continue
        images = np.unique(sample.object_image[objects])
        two = objects[sampled[objects] >= 2]
        if len(two):
            emit("within_object", c, *_two(rng, *obj, rng.choice(two, size=pairs)))
        drawn = _pairs_of_objects_in_different_images(rng, objects, sample.object_image, pairs)
        if drawn is not None:
            emit("between_objects", c, _one(rng, *obj, drawn[0]), _one(rng, *obj, drawn[1]))
        with_bg = objects[bg_count[sample.object_image[objects]] >= 1]
        if len(with_bg):
            o = rng.choice(with_bg, size=pairs)
            emit("fg_vs_bg", c, _one(rng, *obj, o), _one(rng, *bg, sample.object_image[o]))
        bg_two = images[bg_count[images] >= 2]
        if len(bg_two):
            emit("bg_within_image", c, *_two(rng, *bg, rng.choice(bg_two, size=pairs)))
        bg_one = images[bg_count[images] >= 1]
        if len(bg_one) >= 2:
            first, second = _distinct_pairs(rng, bg_one, pairs)
            emit("bg_across_images", c, _one(rng, *bg, first), _one(rng, *bg, second))
    columns = ["statistic", "class", "similarity"]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def prototype_similarity_pairs(sample: PixelSample, pairs: int = 2000, seed: int = 0,
                               classes: Sequence[int] | None = None) -> pd.DataFrame:
    """Cosine similarities of pixels with object prototypes, per :data:`PROTOTYPE_STATISTICS` and class.

    For each draw: an object ``o`` of class c and another object ``o'`` of c in a different
    image; ``own_object`` = cos(pixel of o, prototype of o), ``other_object`` = cos(pixel of o,
    prototype of o'), ``bg_vs_other_object`` = cos(background pixel of o's image, prototype of o').
    """
    rng = np.random.default_rng(seed)
    x = sample.vectors
    protos = F.normalize(torch.from_numpy(sample.object_prototypes), dim=1).numpy()
    sampled = np.bincount(sample.pixel_object[sample.pixel_object >= 0], minlength=sample.n_objects)
    obj = _groups(sample.pixel_object, sample.n_objects)
    bg = _groups(np.where(sample.pixel_object < 0, sample.pixel_image, -1), sample.n_images)
    frames = []
    for c in _class_list(sample, classes):
        objects = np.flatnonzero((sample.object_class == c) & (sampled > 0))
        drawn = _pairs_of_objects_in_different_images(rng, objects, sample.object_image, pairs)
        if drawn is None:
            continue
        o, other = drawn
        pixel = _one(rng, *obj, o)
        for statistic, values in (("own_object", np.einsum("nc,nc->n", x[pixel], protos[o])),
                                  ("other_object", np.einsum("nc,nc->n", x[pixel], protos[other]))):
            frames.append(pd.DataFrame({"statistic": statistic, "class": c, "similarity": values}))
        has_bg = bg[2][sample.object_image[o]] >= 1
        if has_bg.any():
            bg_pixel = _one(rng, *bg, sample.object_image[o][has_bg])
            frames.append(pd.DataFrame({"statistic": "bg_vs_other_object", "class": c,
                                        "similarity": np.einsum("nc,nc->n", x[bg_pixel], protos[other[has_bg]])}))
    columns = ["statistic", "class", "similarity"]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def similarity_table(pairs: pd.DataFrame, per_class: bool = False, names: dict[str, str] | None = None) -> pd.DataFrame:
    """Summary of :func:`pixel_similarity_pairs` (or :func:`prototype_similarity_pairs`) rows.

    ``per_class=False``: one row per statistic, the ``mean``, ``std`` and ``pairs`` over all
    classes (equal pairs per class: the mean of class means). ``per_class=True``: the mean of each
    (statistic, class), statistics as rows and classes as columns. Rows follow :data:`STATISTICS`
    (or ``names``), labelled by their display names.
    """
    names = names or (STATISTICS if set(pairs["statistic"]) <= set(STATISTICS) else PROTOTYPE_STATISTICS)
    present = [s for s in names if s in set(pairs["statistic"])]
    if per_class:
        table = pairs.pivot_table(index="statistic", columns="class", values="similarity", aggfunc="mean")
    else:
        table = pairs.groupby("statistic")["similarity"].agg(["mean", "std", "size"]).rename(columns={"size": "pairs"})
    table = table.reindex(present)
    table.index = [names[s] for s in present]
    return table


def class_similarity_matrix(vectors: np.ndarray, classes: Sequence[int], groups: Sequence[int] | None = None,
                            order: Sequence[int] | None = None) -> pd.DataFrame:
    """Mean cosine similarity between the vectors of every two classes (e.g. object prototypes).

    Entry ``(a, b)`` averages ``cos(v_i, v_j)`` over ``i`` of class a and ``j`` of class b, leaving
    out ``i = j`` and, with ``groups`` (e.g. the image of each object), pairs from the same
    group. The diagonal is then the similarity of *different* instances of a class. Classes
    without a valid pair are NaN.

    Args:
        vectors: ``[N, C]``; classes, groups: ``N`` labels each; order: row/column order.
    """
    v = F.normalize(torch.as_tensor(np.asarray(vectors), dtype=torch.float64), dim=1)
    classes = np.asarray(classes)
    order = list(order) if order is not None else sorted(set(classes.tolist()))
    onehot = torch.from_numpy((classes[:, None] == np.asarray(order)[None, :]).astype(np.float64))  # [N, K]
    valid = ~torch.eye(len(v), dtype=torch.bool)
    if groups is not None:
        g = torch.as_tensor(np.asarray(groups))
        valid &= g[:, None] != g[None, :]
    gram = (v @ v.T) * valid
    sums, counts = onehot.T @ gram @ onehot, onehot.T @ valid.double() @ onehot
    matrix = (sums / counts).numpy()  # 0 / 0 = NaN where no pair exists
    return pd.DataFrame(matrix, index=order, columns=order)
