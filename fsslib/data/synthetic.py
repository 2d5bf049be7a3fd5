"""The embedded synthetic benchmark: a procedural stand-in for PASCAL-5i that runs on a laptop CPU.

Twenty classes are the combinations of five shapes and four surface appearances
(``fsslib.data.folds``). Folds form a Latin square, so every novel class is a new
combination of a shape and an appearance that the base classes already show; a model can
only segment it by matching the support, not by remembering the class.

Why each design choice (the prototypes in ``shared/notes/synthetic-benchmark.md``):

- *Intra-class variation* is what SSP and MSPF exploit: each instance has its own scale,
  rotation, aspect ratio, a mild sinusoidal warp, texture period and phase, a lighting
  gradient and jittered colours, and every class has two palette *variants* so that two
  instances of one class can look clearly different (the support-query appearance gap).
- *Backgrounds cannot be solved by colour or texture alone*: a smooth low-saturation colour
  field plus clutter blobs textured with the same vocabulary in random colours, and 0-2
  distractor objects of other classes, which are background for the episode's class.
- *Every class is separable at stride 8*: texture periods are 9-15 px (a period below the
  feature stride averages into a flat colour), and class hues are saturated while
  background hues are not.
- *Less lopsided than a 96 px version*: 128 px images, objects 0.25-0.55 of the side, thin
  shapes drawn larger, at most two clutter blobs.
- *Novel classes stay unseen*: a fold's training images contain no object of its novel
  classes, not even as a distractor (``novel_in_train_images = False``).

Files are written in the PASCAL VOC layout (``JPEGImages``, ``SegmentationClassAug`` with 255
on object borders, ``ImageSets``), so :class:`~fsslib.data.sources.VOCLayoutSource` reads them.
Every image is a pure function of ``(seed, split, index)``: generation is deterministic,
parallel over processes, and resumes chunk by chunk after an interruption.
"""
from __future__ import annotations

import colorsys
import json
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .folds import NUM_FOLDS, SYNTHETIC_APPEARANCES, SYNTHETIC_SHAPES, fold_classes, synthetic_class_name
from .sources import IGNORE, DatasetError, Pair, VOCLayoutSource, index_from_label, read_index, write_index

NUM_CLASSES = len(SYNTHETIC_SHAPES) * len(SYNTHETIC_APPEARANCES)
FORMAT_VERSION = 1
SPLIT_IDS = {"train": 0, "val": 1}
# Thin shapes cover less of their bounding circle; drawing them larger evens out class sizes.
SHAPE_SIZE_BOOST = {"disc": 1.0, "triangle": 1.25, "star": 1.25, "ring": 1.1, "cross": 1.2}
# Pixels of a class an image needs to serve as a support (PASCAL-5i's 2*32*32 scaled to 128x128).
MIN_PIXELS = 160
CHUNK = 250
META_FILE = "synthetic.json"


@dataclass(frozen=True)
class SyntheticConfig:
    """Size and randomness of the benchmark. Different configs must live in different folders."""

    image_size: int = 128
    train_per_class: int = 400
    val_per_class: int = 300
    seed: int = 0
    min_scale: float = 0.25
    max_scale: float = 0.55
    max_distractors: int = 2
    max_clutter: int = 2

    @classmethod
    def fast(cls) -> "SyntheticConfig":
        """A tiny version for tests and ``FSSLIB_FAST=1`` (seconds to generate)."""
        return cls(train_per_class=16, val_per_class=12)

    def per_class(self, split: str) -> int:
        return self.train_per_class if split == "train" else self.val_per_class


# ----------------------------------------------------------------------------- colours

def class_palette(class_id: int) -> np.ndarray:
    """Two palette variants per class, each an (on, off) colour pair: ``float [2, 2, 3]`` in 0..1.

    Hues are spread over the circle in an order unrelated to shape or appearance, so colour
    does not leak the shape/appearance structure of the folds. Variant 1 shifts the hue and
    swaps brightness, which creates the intra-class appearance gap.
    """
    order = np.random.default_rng(12345).permutation(NUM_CLASSES)
    hue = order[class_id - 1] / NUM_CLASSES
    variants = []
    for shift, (v_on, v_off) in ((0.0, (0.92, 0.45)), (0.07, (0.50, 0.90))):
        h = (hue + shift) % 1.0
        variants.append([colorsys.hsv_to_rgb(h, 0.85, v_on), colorsys.hsv_to_rgb((h + 0.04) % 1.0, 0.55, v_off)])
    return np.asarray(variants, dtype=np.float32)


def hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.asarray(colorsys.hsv_to_rgb(h % 1.0, float(np.clip(s, 0, 1)), float(np.clip(v, 0, 1))), np.float32)


def jitter(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, s, v = colorsys.rgb_to_hsv(*rgb)
    return hsv(h + rng.uniform(-0.02, 0.02), s + rng.uniform(-0.1, 0.1), v + rng.uniform(-0.1, 0.1))


# ----------------------------------------------------------------------------- geometry

def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell: float) -> np.ndarray:
    """Value noise in [0, 1]: a random grid with spacing ``cell`` pixels, bilinearly interpolated."""
    h, w = shape
    gh, gw = int(np.ceil(h / cell)) + 2, int(np.ceil(w / cell)) + 2
    grid = rng.random((gh, gw), dtype=np.float32)
    y = np.arange(h, dtype=np.float32) / cell + rng.random()
    x = np.arange(w, dtype=np.float32) / cell + rng.random()
    y0, x0 = y.astype(int), x.astype(int)
    fy, fx = (y - y0)[:, None], (x - x0)[None, :]
    fy, fx = fy * fy * (3 - 2 * fy), fx * fx * (3 - 2 * fx)  # smoothstep hides the grid
    g00, g01 = grid[y0][:, x0], grid[y0][:, x0 + 1]
    g10, g11 = grid[y0 + 1][:, x0], grid[y0 + 1][:, x0 + 1]
    return (g00 * (1 - fx) + g01 * fx) * (1 - fy) + (g10 * (1 - fx) + g11 * fx) * fy


def shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Membership of object coordinates ``(u, v)`` (unit circumradius) in one of the five shapes."""
    r = np.hypot(u, v)
    if shape == "disc":
        return r < 1.0
    if shape == "ring":
        return (r < 1.0) & (r > 0.55)
    if shape == "triangle":
        # Equilateral triangle with circumradius 1: inradius 0.5 along three edge normals.
        inside = np.ones_like(u, dtype=bool)
        for k in range(3):
            a = np.pi / 2 + 2 * np.pi * k / 3
            inside &= (u * np.cos(a) + v * np.sin(a)) > -0.5
        return inside
    if shape == "star":
        theta = np.arctan2(v, u)
        sector = np.pi / 5
        phi = np.abs((theta + np.pi / 2) % (2 * sector) - sector) / sector  # 0 at a tip, 1 between tips
        return r < 1.0 - 0.58 * phi
    if shape == "cross":
        return ((np.abs(u) < 0.32) & (np.abs(v) < 1.0)) | ((np.abs(v) < 0.32) & (np.abs(u) < 1.0))
    raise ValueError(f"unknown shape {shape!r}")


def texture(appearance: str, x: np.ndarray, y: np.ndarray, period: float, rng: np.random.Generator) -> np.ndarray:
    """Binary texture on object-aligned pixel coordinates ``(x, y)`` with the given period (pixels)."""
    if appearance == "stripes":
        return np.sin(2 * np.pi * x / period) > 0
    if appearance == "dots":
        dx, dy = (x % period) - period / 2, (y % period) - period / 2
        return dx * dx + dy * dy < (0.33 * period) ** 2
    if appearance == "checker":
        cell = 0.6 * period
        return (np.floor(x / cell) + np.floor(y / cell)) % 2 == 0
    if appearance == "blotches":
        noise = smooth_noise(rng, x.shape, 0.8 * period)
        return noise > 0.5
    raise ValueError(f"unknown appearance {appearance!r}")


@dataclass
class Layer:
    """One drawn object or clutter blob: its mask and colours on the image grid."""

    mask: np.ndarray
    colour: np.ndarray
    class_id: int  # 0 for clutter (background)


def object_frame(rng: np.random.Generator, size: int, radius: float, center: tuple[float, float]):
    """Object coordinates for every pixel: rotated, anisotropically scaled and mildly warped."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    aspect = np.exp(rng.uniform(-0.3, 0.3))
    dx, dy = xx - center[0], yy - center[1]
    x_rot = dx * np.cos(angle) + dy * np.sin(angle)
    y_rot = -dx * np.sin(angle) + dy * np.cos(angle)
    u, v = x_rot / (radius * aspect), y_rot / (radius / aspect)
    amplitude, freq = rng.uniform(0.0, 0.12), rng.uniform(0.5, 1.2)
    u = u + amplitude * np.sin(2 * np.pi * freq * v + rng.uniform(0, 2 * np.pi))
    v = v + amplitude * np.sin(2 * np.pi * freq * u + rng.uniform(0, 2 * np.pi))
    return u, v, x_rot, y_rot


def draw_object(rng: np.random.Generator, size: int, class_id: int, scale: float, center) -> Layer:
    shape_idx, app_idx = divmod(class_id - 1, len(SYNTHETIC_APPEARANCES))
    shape, appearance = SYNTHETIC_SHAPES[shape_idx], SYNTHETIC_APPEARANCES[app_idx]
    radius = 0.5 * scale * size * SHAPE_SIZE_BOOST[shape]
    u, v, x_rot, y_rot = object_frame(rng, size, radius, center)
    mask = shape_mask(shape, u, v)
    on, off = class_palette(class_id)[rng.integers(2)]
    period = rng.uniform(9.0, 15.0)
    pattern = texture(appearance, x_rot + rng.uniform(0, period), y_rot, period, rng)
    colour = np.where(pattern[..., None], jitter(on, rng), jitter(off, rng))
    return Layer(mask, colour, class_id)


def draw_clutter(rng: np.random.Generator, size: int) -> Layer:
    """A blob of irregular outline textured with the class vocabulary in random colours."""
    radius = 0.5 * rng.uniform(0.15, 0.35) * size
    center = rng.uniform(0, size, 2)
    u, v, x_rot, y_rot = object_frame(rng, size, radius, center)
    wobble = smooth_noise(rng, (size, size), radius)
    mask = np.hypot(u, v) < 0.7 + 0.6 * wobble
    appearance = SYNTHETIC_APPEARANCES[rng.integers(len(SYNTHETIC_APPEARANCES))]
    pattern = texture(appearance, x_rot, y_rot, rng.uniform(9.0, 15.0), rng)
    hue = rng.random()
    on = hsv(hue, rng.uniform(0.3, 0.75), rng.uniform(0.5, 0.95))
    off = hsv(hue + rng.uniform(-0.15, 0.15), rng.uniform(0.2, 0.6), rng.uniform(0.3, 0.8))
    return Layer(mask, np.where(pattern[..., None], on, off), 0)


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth low-saturation colour field: four corner colours, bilinearly blended."""
    corners = np.stack([hsv(rng.random(), rng.uniform(0.05, 0.35), rng.uniform(0.3, 0.9)) for _ in range(4)])
    t = np.linspace(0, 1, size, dtype=np.float32)
    ty, tx = t[:, None, None], t[None, :, None]
    return (corners[0] * (1 - tx) + corners[1] * tx) * (1 - ty) + (corners[2] * (1 - tx) + corners[3] * tx) * ty


def border_ignore(label: np.ndarray) -> np.ndarray:
    """Mark object pixels that touch a different label (4-neighbourhood) as 255, like VOC's borders."""
    pad = np.pad(label, 1, mode="edge")
    differs = np.zeros(label.shape, dtype=bool)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        differs |= pad[dy:dy + label.shape[0], dx:dx + label.shape[1]] != label
    out = label.copy()
    out[differs & (label > 0)] = IGNORE
    return out


def render(rng: np.random.Generator, size: int, main_class: int, distractors: list[int], n_clutter: int,
           min_scale: float, max_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Draw one image: background, clutter, distractors, then the main object on top."""
    image = background(rng, size)
    label = np.zeros((size, size), dtype=np.uint8)
    layers = [draw_clutter(rng, size) for _ in range(n_clutter)]
    for class_id in distractors:
        scale = rng.uniform(0.6 * min_scale, 0.8 * max_scale)
        layers.append(draw_object(rng, size, class_id, scale, rng.uniform(0, size, 2)))
    scale = rng.uniform(min_scale, max_scale)
    margin = 0.3 * scale * size
    layers.append(draw_object(rng, size, main_class, scale, rng.uniform(margin, size - margin, 2)))
    for layer in layers:
        image = np.where(layer.mask[..., None], layer.colour, image)
        label[layer.mask] = layer.class_id

    # Lighting gradient and sensor noise, shared by objects and background.
    angle, strength = rng.uniform(0, 2 * np.pi), rng.uniform(0.0, 0.35)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    image = image * (1 + strength * (xx * np.cos(angle) + yy * np.sin(angle)))[..., None]
    image = image + rng.normal(0, 0.015, image.shape).astype(np.float32)
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8), border_ignore(label)


# ----------------------------------------------------------------------------- dataset files

def image_plan(config: SyntheticConfig, split: str, index: int) -> tuple[str, np.random.Generator, int]:
    """Stem, random generator and main class of image ``index`` of ``split`` (class-balanced)."""
    rng = np.random.default_rng([config.seed, SPLIT_IDS[split], index])
    return f"{split}_{index:06d}", rng, 1 + index % NUM_CLASSES


def generate_image(config: SyntheticConfig, split: str, index: int) -> tuple[str, np.ndarray, np.ndarray]:
    stem, rng, main_class = image_plan(config, split, index)
    n_distractors = rng.choice(config.max_distractors + 1, p=_distractor_probs(config.max_distractors))
    others = [c for c in range(1, NUM_CLASSES + 1) if c != main_class]
    distractors = [int(c) for c in rng.choice(others, size=n_distractors, replace=False)]
    n_clutter = int(rng.integers(1, config.max_clutter + 1)) if config.max_clutter else 0
    image, label = render(rng, config.image_size, main_class, distractors, n_clutter,
                          config.min_scale, config.max_scale)
    return stem, image, label


def _distractor_probs(max_distractors: int) -> np.ndarray:
    weights = np.array([0.4, 0.4, 0.2, 0.1, 0.05][: max_distractors + 1])
    return weights / weights.sum()


def _write_chunk(root: str, config: SyntheticConfig, split: str, start: int, stop: int) -> None:
    """Write images ``start..stop-1`` and their index lines; the chunk file marks it complete."""
    root = Path(root)
    pairs: list[Pair] = []
    for index in range(start, stop):
        stem, image, label = generate_image(config, split, index)
        Image.fromarray(image).save(root / "JPEGImages" / f"{stem}.jpg", quality=95)
        Image.fromarray(label, mode="L").save(root / "SegmentationClassAug" / f"{stem}.png")
        pairs += index_from_label(stem, label)
    write_index(root / "chunks" / f"{split}_{start:06d}.tsv", pairs)


def read_meta(root: Path) -> dict | None:
    path = root / META_FILE
    if not path.exists():
        return None
    with open(path) as f:
        return json.load(f)


def expected_meta(config: SyntheticConfig) -> dict:
    return {"format_version": FORMAT_VERSION, "config": asdict(config)}


def generate(root: str | os.PathLike, config: SyntheticConfig = SyntheticConfig(), workers: int | None = None,
             progress: bool = True) -> Path:
    """Generate the benchmark into ``root`` (reused when already complete with the same config).

    An interrupted run continues with the chunks it has not finished. A folder holding a
    benchmark with a different config is never overwritten: that raises :class:`DatasetError`.
    """
    root = Path(root)
    meta = read_meta(root)
    if meta is not None:
        if {k: meta.get(k) for k in ("format_version", "config")} != expected_meta(config):
            raise DatasetError(
                f"{root} holds a synthetic benchmark generated with {meta.get('config')} "
                f"(format {meta.get('format_version')}), not the requested {asdict(config)}; "
                "pass another root or delete that folder"
            )
        return root

    for sub in ("JPEGImages", "SegmentationClassAug", "ImageSets/Segmentation", "chunks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    jobs = []
    for split in SPLIT_IDS:
        total = config.per_class(split) * NUM_CLASSES
        for start in range(0, total, CHUNK):
            if not (root / "chunks" / f"{split}_{start:06d}.tsv").exists():
                jobs.append((split, start, min(start + CHUNK, total)))

    workers = workers or min(len(os.sched_getaffinity(0)), 8)
    if jobs:
        from tqdm.auto import tqdm

        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(_write_chunk, str(root), config, *job) for job in jobs]
            for future in tqdm(futures, desc="generating synthetic benchmark", unit="chunk", disable=not progress):
                future.result()

    for split, list_name in VOCLayoutSource.SPLIT_LISTS.items():
        total = config.per_class(split) * NUM_CLASSES
        pairs = []
        for start in range(0, total, CHUNK):
            pairs += read_index(root / "chunks" / f"{split}_{start:06d}.tsv")
        write_index(root / "ImageSets" / "FewShot" / f"{split}_index.tsv", pairs)
        with open(root / "ImageSets" / "Segmentation" / list_name, "w") as f:
            f.writelines(f"{stem}\n" for stem, _, _ in (image_plan(config, split, i) for i in range(total)))
    shutil.rmtree(root / "chunks")
    meta = expected_meta(config) | {
        "classes": {c: synthetic_class_name(c) for c in range(1, NUM_CLASSES + 1)},
        "folds": {f: fold_classes("synthetic", f) for f in range(NUM_FOLDS)},
    }
    with open(root / META_FILE, "w") as f:  # written last: its presence means "complete"
        json.dump(meta, f, indent=1)
    return root


class SyntheticSource(VOCLayoutSource):
    """Reads a generated synthetic benchmark (VOC layout, 20 classes, no novel objects in training)."""

    def __init__(self, root: str | os.PathLike):
        root = Path(root)
        if read_meta(root) is None:
            raise DatasetError(
                f"no complete synthetic benchmark at {root} ({META_FILE} missing); "
                "generate it with `python -m fsslib prepare synthetic` or fsslib.data.synthetic.generate(root)"
            )
        super().__init__(root, benchmark="synthetic", num_classes=NUM_CLASSES, image_ext=".jpg",
                         min_pixels=MIN_PIXELS, novel_in_train_images=False)
