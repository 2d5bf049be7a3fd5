"""Segment your own images: support images with a mask or a box, then any number of queries.

Two kinds of segmenter, one call:

- **a trained run** (``--run RUN_DIR``): the method the run trained, at the run's input size;
- **training-free** (``--method protonet``, the default): a pre-trained backbone followed by
  prototype matching (masked average pooling of the support's object and background, cosine
  similarity with every query cell, softmax; Wang et al., "PANet: Few-Shot Image Semantic
  Segmentation with Prototype Alignment", ICCV 2019, section 3.2). Nothing is trained for it
  but the backbone: on the synthetic benchmark, the fold's backbone pre-trained on its base
  classes; on photos, ImageNet weights (``weights="imagenet"``, from the torch hub cache) or a
  checkpoint of your own.

A support mask is a PNG file whose non-zero pixels are the object, or a box ``x0,y0,x1,y1`` in
pixels of the support image (``x0, y0`` the first object column and row, ``x1, y1`` one past the
last, like a Python slice). Images are resized to the network's square input as in evaluation
(:func:`fsslib.data.eval_transform`); each prediction is resized back to its query's own size.

Bad input stops with a message that names the file and what was expected: an unreadable image, a
mask of another size than its image, a mask or box with no object pixel or no background pixel.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from ..data import DEFAULT_SIZES, eval_transform
from ..engine.episodic import load_run
from ..engine.evaluator import episode_iou
from ..models import build_model
from ..models.base import FewShotSegmenter
from ..models.ops import hard_labels
from ..models.registry import REFERENCE_METHOD
from ..runtime import default_device
from .plotting import tint

#: Input size of the training-free segmenter by backbone: the synthetic benchmark's for the small
#: CNN, the papers' crop sizes for the ImageNet backbones (PANet's 417 for VGG-16, 473 otherwise).
TRAINING_FREE_SIZES = {"smallcnn": DEFAULT_SIZES["synthetic"], "vgg16": 417}
_BOX = re.compile(r"^\s*(-?\d+)\s*,\s*(-?\d+)\s*,\s*(-?\d+)\s*,\s*(-?\d+)\s*$")


@dataclass
class Support:
    """One support image ``uint8 [H, W, 3]`` and its object mask ``bool [H, W]``."""

    image: np.ndarray
    mask: np.ndarray
    name: str = "support"


@dataclass
class Segmenter:
    """A model ready for :func:`segment`, the square input size it expects and what it is."""

    model: FewShotSegmenter
    image_size: int
    description: str
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


@dataclass
class Segmentation:
    """The result for one query: the object mask at the query's own size, and what the model
    computed at its input size (``output``: the method's output dict, e.g. ``"prior"`` of PFENet,
    ``"logits_plain"`` / ``"logits_out1"`` of SSP) with the network inputs it saw (``batch``)."""

    image: np.ndarray
    mask: np.ndarray
    output: dict
    batch: dict
    name: str = "query"

    @property
    def object_fraction(self) -> float:
        return float(self.mask.mean())


def read_image(path: str | Path) -> np.ndarray:
    """``uint8 [H, W, 3]`` of an image file (any format Pillow reads; grey and RGBA become RGB)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {path}: no such file")
    try:
        with Image.open(path) as image:
            return np.array(image.convert("RGB"))  # a writable copy: torch warns on read-only arrays
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"image {path}: not a readable image file ({error})") from error


def parse_box(text: str) -> tuple[int, int, int, int] | None:
    """``(x0, y0, x1, y1)`` if ``text`` reads as four comma-separated integers, else None."""
    match = _BOX.match(text)
    return tuple(int(v) for v in match.groups()) if match else None


def box_mask(box: tuple[int, int, int, int], shape: tuple[int, int], name: str = "the support image") -> np.ndarray:
    """``bool [H, W]``: True inside the box ``x0 <= x < x1, y0 <= y < y1``."""
    x0, y0, x1, y1 = box
    height, width = shape
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise ValueError(f"box {x0},{y0},{x1},{y1} does not fit {name} ({width}x{height} pixels): expected "
                         f"0 <= x0 < x1 <= {width} and 0 <= y0 < y1 <= {height}")
    mask = np.zeros(shape, dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def read_mask(spec: str | Path | np.ndarray, image_shape: tuple[int, int],
              name: str = "the support image", allow_empty: bool = False) -> np.ndarray:
    """The object mask ``bool [H, W]`` of a support from a PNG path (non-zero = object), a box
    string ``"x0,y0,x1,y1"`` or an array; checked against its image's ``(H, W)``. A support's
    mask needs object and background pixels; a query's true mask (``allow_empty``) may have none."""
    label = "given as an array" if isinstance(spec, np.ndarray) else str(spec)
    if isinstance(spec, np.ndarray):
        mask = spec != 0
    elif parse_box(str(spec)) is not None:
        mask = box_mask(parse_box(str(spec)), image_shape, name)
    else:
        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"mask {path}: no such file (a mask is a PNG file or a box x0,y0,x1,y1)")
        try:
            with Image.open(path) as image:
                values = np.asarray(image.convert("RGB") if image.mode in ("RGBA", "LA", "CMYK", "YCbCr") else image)
        except (UnidentifiedImageError, OSError) as error:
            raise ValueError(f"support mask {path}: not a readable image file ({error})") from error
        mask = values.any(axis=-1) if values.ndim == 3 else values != 0
        label = str(path)
    if mask.shape != tuple(image_shape):
        raise ValueError(f"support mask {label}: {mask.shape[1]}x{mask.shape[0]} pixels, but {name} is "
                         f"{image_shape[1]}x{image_shape[0]}; a mask must have its image's size")
    if allow_empty:
        return mask
    if not mask.any():
        raise ValueError(f"support mask {label} marks no object pixel in {name}: mark the object (non-zero pixels "
                         "or a box around it)")
    if mask.all():
        raise ValueError(f"support mask {label} marks every pixel of {name} as object: matching needs background "
                         "pixels too (a tighter mask or box)")
    return mask


def training_free_segmenter(backbone: str = "smallcnn", weights: str | Path | None = "synthetic", fold: int = 0,
                            image_size: int | None = None, device: str | torch.device | None = None) -> Segmenter:
    """ProtoNet (masked average pooling + cosine) on a pre-trained backbone, no episodic training.

    ``weights``: ``"synthetic"`` the small CNN pre-trained on ``fold``'s base classes of the
    synthetic benchmark (trained on first use, announced); ``"imagenet"`` torchvision's weights;
    a path to a backbone checkpoint; ``None`` random weights (to test the plumbing only).
    """
    described = weights
    if weights == "synthetic":
        if backbone != "smallcnn":
            raise ValueError(f"weights='synthetic' pre-trains the small CNN only; for backbone {backbone!r} pass "
                             "weights='imagenet' or the path of a checkpoint")
        from ..engine.pretrain import pretrained_backbone

        weights = str(pretrained_backbone(fold))
        described = f"pre-trained on fold {fold}'s base classes of the synthetic benchmark"
    # The reference method is the prototype baseline: masked average pooling and cosine, nothing learned.
    model = build_model(REFERENCE_METHOD, backbone=backbone, weights=None if weights is None else str(weights))
    device = default_device(device)
    size = image_size or TRAINING_FREE_SIZES.get(backbone, 473)
    text = f"training-free ProtoNet on {backbone} ({'random weights' if weights is None else described}), {size}px"
    return Segmenter(model.to(device).eval(), size, text, device)


def run_segmenter(run_dir: str | Path, image_size: int | None = None,
                  device: str | torch.device | None = None) -> Segmenter:
    """The trained model of a finished run, at the input size it was trained at."""
    device = default_device(device)
    model, config = load_run(run_dir, device)
    size = image_size or config.image_size or DEFAULT_SIZES[config.benchmark]
    text = f"{config.model} trained in {Path(run_dir).name} ({config.benchmark}, fold {config.fold}), {size}px"
    return Segmenter(model.eval(), size, text, device)


def network_batch(supports: list[Support], query: np.ndarray, image_size: int) -> dict:
    """One 1-way K-shot episode as the models take it: ``query_img [1, 3, S, S]``,
    ``support_imgs [1, K, 3, S, S]``, ``support_masks long [1, K, S, S]`` (1 object, 0 background)."""
    transform = eval_transform(image_size)
    images, masks = [], []
    for support in supports:
        image, mask = transform(support.image, support.mask.astype(np.uint8))
        if not (mask == 1).any():
            raise ValueError(f"the object of {support.name} vanishes when the image is resized to {image_size}x"
                             f"{image_size}: mark a larger region")
        images.append(image)
        masks.append(mask)
    query_img, _ = transform(query, np.zeros(query.shape[:2], dtype=np.uint8))
    return {"query_img": query_img[None], "support_imgs": torch.stack(images)[None],
            "support_masks": torch.stack(masks)[None]}


@torch.no_grad()
def segment(segmenter: Segmenter, supports: list[Support], queries: list[np.ndarray],
            names: list[str] | None = None) -> list[Segmentation]:
    """Segment each query with the same supports (one 1-way episode per query)."""
    if not supports:
        raise ValueError("segment needs at least one support image with its mask")
    names = names or [f"query {i}" for i in range(len(queries))]
    results = []
    for query, name in zip(queries, names):
        batch = network_batch(supports, query, segmenter.image_size)
        on_device = {k: v.to(segmenter.device) for k, v in batch.items()}
        output = segmenter.model(on_device)
        logits = F.interpolate(output["logits"].float(), size=query.shape[:2], mode="bilinear", align_corners=False)
        mask = hard_labels(logits)[0].eq(1).cpu().numpy()
        output = {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in output.items()}
        results.append(Segmentation(query, mask, output, batch, name))
    return results


def overlay_image(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``uint8 [H, W, 3]``: the object tinted and outlined in red."""
    return (tint(image.astype(np.float64) / 255, mask.astype(np.int64)) * 255).round().astype(np.uint8)


def overview(supports: list[Support], results: list[Segmentation], height: int = 160) -> np.ndarray:
    """``uint8 [height, W, 3]``: the supports with their marked object, then each query's overlay,
    side by side at one height with a white gap between them."""
    panels = [overlay_image(s.image, s.mask) for s in supports] + [overlay_image(r.image, r.mask) for r in results]
    resized = [np.asarray(Image.fromarray(p).resize((max(1, round(p.shape[1] * height / p.shape[0])), height)))
               for p in panels]
    gap = np.full((height, 8, 3), 255, dtype=np.uint8)
    return np.concatenate([x for panel in resized for x in (panel, gap)][:-1], axis=1)


def write_segmentations(results: list[Segmentation], out: str | Path,
                        supports: list[Support] | None = None) -> dict:
    """Write ``<name>-mask.png`` (255 = object) and ``<name>-overlay.png`` per query under ``out``,
    and with ``supports`` an ``overview.png`` (:func:`overview`); returns their paths
    (``masks``, ``overlays``: one per query; ``overview``: a path or None)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stems = [Path(r.name).stem for r in results]
    written = {"masks": [], "overlays": [], "overview": None}
    for i, (result, stem) in enumerate(zip(results, stems)):
        if stems.count(stem) > 1:  # two queries of the same name from different folders
            stem = f"{stem}-{i}"
        written["masks"].append(out / f"{stem}-mask.png")
        written["overlays"].append(out / f"{stem}-overlay.png")
        Image.fromarray(result.mask.astype(np.uint8) * 255).save(written["masks"][-1])
        Image.fromarray(overlay_image(result.image, result.mask)).save(written["overlays"][-1])
    if supports:
        written["overview"] = out / "overview.png"
        Image.fromarray(overview(supports, results)).save(written["overview"])
    return written


def write_example(source, folder: str | Path, fold: int = 0, queries: int = 2, choice: int = 0) -> dict:
    """Write a novel-class example of ``source`` as plain image files, as a user's own would be:
    ``support.png``, ``support-mask.png`` (255 = object), ``query-1.png``... and the queries' true
    masks ``query-1-truth.png``... Returns their paths (``support``, ``support_mask``, ``queries``,
    ``query_truths``) and the class id (``class_id``).

    The class is the ``choice``-th novel class of ``fold`` with enough images; the support is its
    first image, the queries the next ones.
    """
    from ..data import EpisodePool

    pool = EpisodePool.for_fold(source, fold, "val")
    candidates = [c for c in sorted(pool.queries) if len(pool.queries[c]) > queries]
    if not candidates:
        raise ValueError(f"no novel class of fold {fold} has {queries + 1} images in {source.root}")
    class_id = candidates[choice % len(candidates)]
    stems = sorted(pool.queries[class_id])[: queries + 1]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    image, label = source.load(stems[0])
    paths = {"support": folder / "support.png", "support_mask": folder / "support-mask.png", "class_id": class_id}
    Image.fromarray(image).save(paths["support"])
    Image.fromarray((label == class_id).astype(np.uint8) * 255).save(paths["support_mask"])
    paths["queries"], paths["query_truths"] = [], []
    for i, stem in enumerate(stems[1:], start=1):
        image, label = source.load(stem)
        paths["queries"].append(folder / f"query-{i}.png")
        paths["query_truths"].append(folder / f"query-{i}-truth.png")
        Image.fromarray(image).save(paths["queries"][-1])
        Image.fromarray((label == class_id).astype(np.uint8) * 255).save(paths["query_truths"][-1])
    return paths


def iou(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Foreground IoU of one predicted mask against its true mask, both ``bool [H, W]`` (the
    evaluator's per-episode IoU, as a fraction)."""
    as_labels = [torch.from_numpy(np.asarray(m, dtype=np.int64))[None] for m in (prediction, truth)]
    return float(episode_iou(*as_labels)[0]) / 100
