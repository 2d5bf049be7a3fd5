"""The embedded synthetic benchmark (v3): a procedural stand-in for PASCAL-5i that runs on a laptop CPU.

A class is a **shape structure**, not a colour: a fixed arrangement of 2-3 parts (a core and
one or two satellites, each a disc, square, triangle or bar, at fixed offsets, sizes and angles),
drawn at any rotation and scale. Colour and texture come from one palette shared by all classes,
so a colour prototype cannot tell classes apart; what a few-shot method must match is structure.

Each knob (a :class:`SyntheticConfig` field) is there for the mechanism of a paper's method that it
exercises; the defaults were fixed by those mechanisms and the 2-core CPU budget before any table
was run (``docs/benchmark-v3-plan.md``), and are not tuned on the methods' scores:

- ``modes_per_class``: every class has 3 appearance modes (a palette hue and a texture), drawn
  independently per class. One support may show another mode than the query, so a single shot
  can be ambiguous and more shots help (prototype averaging, and logit averaging).
- ``photometric``: a per-image colour cast, gamma and blur of strength ``s ~ U(0, photometric)``.
  The premise of self-support (Fan et al., SSP): a query is more like itself than like any support.
- ``main_size``: the main object's size (the square root of its area, pixels) is log-uniform over a
  wide range, drawn independently for support and query: the intra-class scale differences that
  multi-scale priors (MSPF, PFENet) address. Its lower end, 32 px, is 16 cells of the stride-8
  features (a support's minimum); sizing by area rather than by extent keeps sparse classes
  (a core with a long thin part) from being specks. The extent is capped at ``max_extent``.
- ``hard_negative``: with this probability an image also holds an object of another class drawn
  in the main object's appearance mode: a colour prototype fires on it, a structure-aware head
  (priors, learned decoders) need not.
- ``clutter``: 0-6 background blobs textured from the same palette: a cluttered background is not
  one prototype, which SSP's adaptive background prototypes are built for.
- thin parts: 5 of the 20 classes (at least one per fold) have a bar 3-6 px wide, finer than a
  feature cell: what multi-scale decoders (MSDNet's high-resolution path) recover.
- ``distractors``: up to 2 small instances (20-48 px) of the main class: the query's class is
  sometimes a small object, and the factor "main object vs distractor instance" separates them.
- ``MIN_PIXELS``: an image is a support only with >= 16 feature cells (1024 px) of its class, so
  5-shot prototypes are not diluted by specks (PASCAL-5i's 2 x 32 x 32 pixels, scaled).

Every factor is recorded per object beside each image (:meth:`SyntheticSource.factors`), so any
evaluation can be split by factor (``python -m fsslib factors``). Folds are contiguous like
PASCAL-5i (fold ``f`` = classes ``5f+1..5f+5``); a fold's training images contain no object of its
novel classes, not even as a hard negative (``novel_in_train_images = False``).

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
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from .folds import NUM_FOLDS, fold_classes
from .sources import IGNORE, DatasetError, Pair, VOCLayoutSource, index_from_label, read_index, write_index

NUM_CLASSES = 20
FORMAT_VERSION = 3
SPLIT_IDS = {"train": 0, "val": 1}
# An image serves as a support with at least 16 stride-8 feature cells of its class.
MIN_PIXELS = 16 * 8 * 8
CHUNK = 250
META_FILE = "synthetic.json"
FACTORS_DIR = "Factors"

PRIMITIVES = ("disc", "square", "triangle", "bar")
CORE_PRIMITIVES = ("disc", "square", "triangle")
TEXTURES = ("stripes", "dots", "checker", "blotches")
HUES = 8
#: One class per fold plus one more have a thin part (fold f holds classes 5f+1..5f+5).
THIN_CLASSES = (1, 6, 11, 16, 20)
#: Sparsest arrangement allowed (unit-radius area; a disc is pi): sparser ones cannot reach a
#: support's 1024 pixels within the image.
MIN_UNIT_AREA = 0.4


@dataclass(frozen=True)
class SyntheticConfig:
    """Size, randomness and knobs of the benchmark. Different configs must live in different folders."""

    image_size: int = 128
    train_per_class: int = 400
    val_per_class: int = 300
    seed: int = 0
    modes_per_class: int = 3
    #: Largest photometric strength s (colour-cast gain 1 +- s, gamma 2^(+-s), blur sigma up to 2s px).
    photometric: float = 0.3
    #: Main object's size range (square root of its area, pixels), log-uniform.
    main_size: tuple[float, float] = (32.0, 64.0)
    distractor_size: tuple[float, float] = (12.0, 28.0)
    #: Largest extent (diameter, pixels) an object may take to reach its size.
    max_extent: float = 120.0
    max_distractors: int = 2
    hard_negative: float = 0.3
    max_clutter: int = 6
    thin_width: tuple[float, float] = (3.0, 6.0)

    @classmethod
    def fast(cls) -> "SyntheticConfig":
        """A tiny version for tests and ``FSSLIB_FAST=1`` (seconds to generate)."""
        return cls(train_per_class=16, val_per_class=16)

    def per_class(self, split: str) -> int:
        return self.train_per_class if split == "train" else self.val_per_class


# ----------------------------------------------------------------------------- classes

@dataclass(frozen=True)
class Part:
    """One part of a class's arrangement, in object units (the arrangement fits the unit circle)."""

    primitive: str  # one of PRIMITIVES, or "thin" (a bar of fixed pixel width)
    offset: tuple[float, float]
    size: float
    angle: float  # radians


@lru_cache(maxsize=None)
def class_parts(class_id: int) -> tuple[Part, ...]:
    """The fixed arrangement of ``class_id``: a core part at the centre and 1-2 satellites touching it.

    Drawn once from a fixed generator (the same on every machine); no two classes share their
    primitives (core, satellites), so every class differs in structure, not only in geometry.
    """
    return _arrangements()[class_id - 1]


@lru_cache(maxsize=None)
def _arrangements() -> tuple[tuple[Part, ...], ...]:
    rng = np.random.default_rng(20261201)
    seen, classes = set(), []
    while len(classes) < NUM_CLASSES:
        class_id = len(classes) + 1
        core = CORE_PRIMITIVES[rng.integers(len(CORE_PRIMITIVES))]
        satellites = [PRIMITIVES[i] for i in rng.integers(len(PRIMITIVES), size=rng.integers(1, 3))]
        if class_id in THIN_CLASSES:
            satellites[0] = "thin"
        signature = (core, tuple(sorted(satellites)))
        if signature in seen:
            continue
        core_size = rng.uniform(0.45, 0.6)
        parts = [Part(core, (0.0, 0.0), core_size, rng.uniform(0, 2 * np.pi))]
        first = rng.uniform(0, 2 * np.pi)
        for k, primitive in enumerate(satellites):
            direction = first + (0 if k == 0 else rng.uniform(0.6, 1.4) * np.pi)
            size = rng.uniform(0.4, 0.5) if primitive == "thin" else rng.uniform(0.25, 0.45)
            # Satellites overlap the core (one connected object); bars point away from it.
            distance = 0.85 * core_size + (0.9 if primitive == "bar" else 0.6) * size
            angle = direction if primitive in ("bar", "thin") else rng.uniform(0, 2 * np.pi)
            parts.append(Part(primitive, (distance * np.cos(direction), distance * np.sin(direction)), size, angle))
        reach = max(np.hypot(*p.offset) + p.size for p in parts)
        parts = tuple(Part(p.primitive, (p.offset[0] / reach, p.offset[1] / reach), p.size / reach, p.angle)
                      for p in parts)
        if _area(parts) < MIN_UNIT_AREA:  # too sparse to reach a support's size inside the image
            continue
        seen.add(signature)
        classes.append(parts)
    return tuple(classes)


@lru_cache(maxsize=None)
def unit_area(class_id: int) -> float:
    """Area of ``class_id``'s arrangement in unit-radius coordinates (thin parts at zero width):
    an object ``e`` pixels across covers about ``unit_area * (e / 2) ** 2`` pixels."""
    return _area(class_parts(class_id))


def _area(parts: tuple[Part, ...]) -> float:
    """Area of an arrangement on a fine grid over [-1, 1]^2."""
    grid = np.linspace(-1, 1, 401, dtype=np.float64)
    u, v = np.meshgrid(grid, grid)
    mask = np.zeros(u.shape, dtype=bool)
    for part in parts:
        if part.primitive != "thin":
            mask |= primitive_mask(part.primitive, *part_coordinates(part, u, v))
    return float(mask.mean() * 4)


def part_coordinates(part: Part, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Object coordinates ``(u, v)`` in the frame of ``part`` (its centre, angle and size)."""
    du, dv = u - part.offset[0], v - part.offset[1]
    return ((du * np.cos(part.angle) + dv * np.sin(part.angle)) / part.size,
            (-du * np.sin(part.angle) + dv * np.cos(part.angle)) / part.size)


def extent_for(class_id: int, size: float, max_extent: float) -> float:
    """The extent (diameter, pixels) at which ``class_id`` covers ``size ** 2`` pixels, capped."""
    return min(2 * size / np.sqrt(unit_area(class_id)), max_extent)


def synthetic_class_name(class_id: int) -> str:
    """``"3:square+disc+bar"``: the class id and its parts (core first)."""
    return f"{class_id}:" + "+".join(p.primitive for p in class_parts(class_id))


@lru_cache(maxsize=None)
def class_modes(class_id: int, modes: int = 3) -> tuple[int, ...]:
    """The appearance modes of ``class_id``: palette entries (``hue * len(TEXTURES) + texture``),
    drawn independently per class from the palette that every class shares."""
    rng = np.random.default_rng([20261201, class_id])
    return tuple(int(m) for m in rng.choice(HUES * len(TEXTURES), size=modes, replace=False))


# ----------------------------------------------------------------------------- colours

def hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.asarray(colorsys.hsv_to_rgb(h % 1.0, float(np.clip(s, 0, 1)), float(np.clip(v, 0, 1))), np.float32)


def palette_colours(entry: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, str]:
    """(on colour, off colour, texture) of palette ``entry``, jittered per instance."""
    hue, tex = divmod(entry, len(TEXTURES))
    h = hue / HUES + rng.uniform(-0.02, 0.02)
    on = hsv(h, 0.8 + rng.uniform(-0.1, 0.1), 0.9 + rng.uniform(-0.08, 0.08))
    off = hsv(h + 0.04, 0.5 + rng.uniform(-0.1, 0.1), 0.45 + rng.uniform(-0.08, 0.08))
    return on, off, TEXTURES[tex]


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


def primitive_mask(primitive: str, p: np.ndarray, q: np.ndarray, half_width: float = 0.35) -> np.ndarray:
    """Membership of part coordinates ``(p, q)`` (unit size) in a primitive."""
    if primitive == "disc":
        return p * p + q * q < 1.0
    if primitive == "square":
        return (np.abs(p) < 0.8) & (np.abs(q) < 0.8)
    if primitive == "triangle":  # circumradius 1: inradius 0.5 along three edge normals
        inside = np.ones_like(p, dtype=bool)
        for k in range(3):
            a = np.pi / 2 + 2 * np.pi * k / 3
            inside &= (p * np.cos(a) + q * np.sin(a)) > -0.5
        return inside
    if primitive in ("bar", "thin"):
        return (np.abs(p) < 1.0) & (np.abs(q) < half_width)
    raise ValueError(f"unknown primitive {primitive!r}")


def texture(name: str, x: np.ndarray, y: np.ndarray, period: float, rng: np.random.Generator) -> np.ndarray:
    """Binary texture on object-aligned pixel coordinates ``(x, y)`` with the given period (pixels).
    Periods of 9-15 px stay above the feature stride (a finer texture averages into a flat colour)."""
    if name == "stripes":
        return np.sin(2 * np.pi * x / period) > 0
    if name == "dots":
        dx, dy = (x % period) - period / 2, (y % period) - period / 2
        return dx * dx + dy * dy < (0.33 * period) ** 2
    if name == "checker":
        cell = 0.6 * period
        return (np.floor(x / cell) + np.floor(y / cell)) % 2 == 0
    if name == "blotches":
        return smooth_noise(rng, x.shape, 0.8 * period) > 0.5
    raise ValueError(f"unknown texture {name!r}")


def object_frame(rng: np.random.Generator, size: int, radius: float, center):
    """Object coordinates of every pixel: rotated, mildly anisotropic and warped (unit = ``radius``)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    aspect = np.exp(rng.uniform(-0.15, 0.15))
    dx, dy = xx - center[0], yy - center[1]
    x_rot = dx * np.cos(angle) + dy * np.sin(angle)
    y_rot = -dx * np.sin(angle) + dy * np.cos(angle)
    u, v = x_rot / (radius * aspect), y_rot / (radius / aspect)
    amplitude, freq = rng.uniform(0.0, 0.06), rng.uniform(0.5, 1.2)
    u = u + amplitude * np.sin(2 * np.pi * freq * v + rng.uniform(0, 2 * np.pi))
    v = v + amplitude * np.sin(2 * np.pi * freq * u + rng.uniform(0, 2 * np.pi))
    return u, v, x_rot, y_rot


@dataclass
class Layer:
    """One drawn object or clutter blob: its mask and colours on the image grid, and its factors."""

    mask: np.ndarray
    colour: np.ndarray
    class_id: int  # 0 for clutter (background)
    record: dict = field(default_factory=dict)


def paint(rng, mask, x_rot, y_rot, entry: int) -> np.ndarray:
    on, off, name = palette_colours(entry, rng)
    period = rng.uniform(9.0, 15.0)
    pattern = texture(name, x_rot + rng.uniform(0, period), y_rot, period, rng)
    return np.where(pattern[..., None], on, off)


def draw_object(rng: np.random.Generator, size: int, class_id: int, extent: float, center, mode: int,
                entry: int, role: str, thin_width: tuple[float, float]) -> Layer:
    """An instance of ``class_id``: its parts at a random rotation, ``extent`` px across, painted
    with palette ``entry`` (the class's appearance ``mode``, or another class's for a hard negative)."""
    radius = extent / 2
    u, v, x_rot, y_rot = object_frame(rng, size, radius, center)
    mask = np.zeros((size, size), dtype=bool)
    thin = False
    for part in class_parts(class_id):
        p, q = part_coordinates(part, u, v)
        half_width = 0.35
        if part.primitive == "thin":  # a fixed width in pixels, whatever the object's scale
            half_width = rng.uniform(*thin_width) / 2 / (part.size * radius)
            thin = True
        mask |= primitive_mask(part.primitive, p, q, half_width)
    record = dict(cls=class_id, role=role, mode=mode, palette=entry, extent=round(float(extent), 1), thin=thin)
    return Layer(mask, paint(rng, mask, x_rot, y_rot, entry), class_id, record)


def draw_clutter(rng: np.random.Generator, size: int) -> Layer:
    """A blob of irregular outline textured with a palette entry (the palette every class uses)."""
    radius = 0.5 * rng.uniform(20, 45)
    center = rng.uniform(0, size, 2)
    u, v, x_rot, y_rot = object_frame(rng, size, radius, center)
    mask = np.hypot(u, v) < 0.7 + 0.6 * smooth_noise(rng, (size, size), radius)
    entry = int(rng.integers(HUES * len(TEXTURES)))
    return Layer(mask, paint(rng, mask, x_rot, y_rot, entry), 0)


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth low-saturation colour field: four corner colours, bilinearly blended."""
    corners = np.stack([hsv(rng.random(), rng.uniform(0.05, 0.35), rng.uniform(0.3, 0.9)) for _ in range(4)])
    t = np.linspace(0, 1, size, dtype=np.float32)
    ty, tx = t[:, None, None], t[None, :, None]
    return (corners[0] * (1 - tx) + corners[1] * tx) * (1 - ty) + (corners[2] * (1 - tx) + corners[3] * tx) * ty


def photometric_shift(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Colour cast (per-channel gain 1 +- s), gamma 2^(+-s) and Gaussian blur (sigma up to 2s px)."""
    gain = 1 + rng.uniform(-strength, strength, 3).astype(np.float32)
    gamma = 2.0 ** rng.uniform(-strength, strength)
    image = np.clip(image * gain, 0, 1) ** gamma
    sigma = rng.uniform(0, 2 * strength)
    return gaussian_filter(image, sigma=(sigma, sigma, 0)) if sigma > 0.3 else image


def border_ignore(label: np.ndarray) -> np.ndarray:
    """Mark object pixels that touch a different label (4-neighbourhood) as 255, like VOC's borders."""
    pad = np.pad(label, 1, mode="edge")
    differs = np.zeros(label.shape, dtype=bool)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        differs |= pad[dy:dy + label.shape[0], dx:dx + label.shape[1]] != label
    out = label.copy()
    out[differs & (label > 0)] = IGNORE
    return out


def log_uniform(rng: np.random.Generator, low_high: tuple[float, float]) -> float:
    return float(np.exp(rng.uniform(np.log(low_high[0]), np.log(low_high[1]))))


# ----------------------------------------------------------------------------- one image

def image_plan(config: SyntheticConfig, split: str, index: int) -> tuple[str, np.random.Generator, int]:
    """Stem, random generator and main class of image ``index`` of ``split`` (class-balanced)."""
    rng = np.random.default_rng([config.seed, SPLIT_IDS[split], index])
    return f"{split}_{index:06d}", rng, 1 + index % NUM_CLASSES


def generate_image(config: SyntheticConfig, split: str, index: int) -> tuple[str, np.ndarray, np.ndarray, dict]:
    """``(stem, image uint8 [S, S, 3], label uint8 [S, S], factors)``.

    Drawing order (later layers occlude earlier ones): clutter, the hard negative, distractor
    instances, the main object. ``factors`` holds the image's photometric strength and clutter
    count, and per object its class, role (main / distractor / hard_negative), mode, palette entry,
    extent, thin-part flag and visible pixels.
    """
    stem, rng, main_class = image_plan(config, split, index)
    size = config.image_size
    modes = class_modes(main_class, config.modes_per_class)
    mode = int(rng.integers(len(modes)))
    layers = [draw_clutter(rng, size) for _ in range(int(rng.integers(0, config.max_clutter + 1)))]
    if rng.random() < config.hard_negative:
        other = int(rng.choice([c for c in range(1, NUM_CLASSES + 1) if c != main_class]))
        extent = extent_for(other, log_uniform(rng, config.main_size), config.max_extent)
        layers.append(draw_object(rng, size, other, extent, rng.uniform(0, size, 2), -1, modes[mode],
                                  "hard_negative", config.thin_width))
    for _ in range(int(rng.integers(0, config.max_distractors + 1))):
        m = int(rng.integers(len(modes)))
        extent = extent_for(main_class, log_uniform(rng, config.distractor_size), config.max_extent)
        layers.append(draw_object(rng, size, main_class, extent, rng.uniform(0, size, 2), m, modes[m],
                                  "distractor", config.thin_width))
    extent = extent_for(main_class, log_uniform(rng, config.main_size), config.max_extent)
    margin = 0.3 * extent
    layers.append(draw_object(rng, size, main_class, extent, rng.uniform(margin, size - margin, 2), mode,
                              modes[mode], "main", config.thin_width))

    image = background(rng, size)
    label = np.zeros((size, size), dtype=np.uint8)
    owner = np.full((size, size), -1)
    for i, layer in enumerate(layers):
        image = np.where(layer.mask[..., None], layer.colour, image)
        label[layer.mask] = layer.class_id
        owner[layer.mask] = i
    # Lighting gradient, the per-image photometric shift, sensor noise.
    angle, gradient = rng.uniform(0, 2 * np.pi), rng.uniform(0.0, 0.3)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    image = image * (1 + gradient * (xx * np.cos(angle) + yy * np.sin(angle)))[..., None]
    strength = float(rng.uniform(0, config.photometric))
    image = photometric_shift(np.clip(image, 0, 1), strength, rng)
    image = image + rng.normal(0, 0.015, image.shape).astype(np.float32)

    objects = [dict(layer.record, pixels=int((owner == i).sum())) for i, layer in enumerate(layers) if layer.record]
    factors = dict(stem=stem, photometric=round(strength, 3), clutter=sum(not layer.record for layer in layers),
                   objects=objects)
    return stem, (np.clip(image, 0, 1) * 255).round().astype(np.uint8), border_ignore(label), factors


# ----------------------------------------------------------------------------- dataset files

def _write_chunk(root: str, config: SyntheticConfig, split: str, start: int, stop: int) -> None:
    """Write images ``start..stop-1``, their index lines and factor records; the index file is
    written last and marks the chunk complete."""
    root = Path(root)
    pairs: list[Pair] = []
    records = []
    for index in range(start, stop):
        stem, image, label, factors = generate_image(config, split, index)
        Image.fromarray(image).save(root / "JPEGImages" / f"{stem}.jpg", quality=95)
        Image.fromarray(label, mode="L").save(root / "SegmentationClassAug" / f"{stem}.png")
        pairs += index_from_label(stem, label)
        records.append(json.dumps(factors, separators=(",", ":")))
    (root / "chunks" / f"{split}_{start:06d}.jsonl").write_text("\n".join(records) + "\n")
    write_index(root / "chunks" / f"{split}_{start:06d}.tsv", pairs)


def read_meta(root: Path) -> dict | None:
    path = root / META_FILE
    if not path.exists():
        return None
    with open(path) as f:
        return json.load(f)


def expected_meta(config: SyntheticConfig) -> dict:
    return {"format_version": FORMAT_VERSION, "config": json.loads(json.dumps(asdict(config)))}


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
                f"(format {meta.get('format_version')}), not the requested {asdict(config)} "
                f"(format {FORMAT_VERSION}); pass another root or delete that folder"
            )
        return root

    for sub in ("JPEGImages", "SegmentationClassAug", "ImageSets/Segmentation", FACTORS_DIR, "chunks"):
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
        pairs, records = [], []
        for start in range(0, total, CHUNK):
            pairs += read_index(root / "chunks" / f"{split}_{start:06d}.tsv")
            records.append((root / "chunks" / f"{split}_{start:06d}.jsonl").read_text())
        write_index(root / "ImageSets" / "FewShot" / f"{split}_index.tsv", pairs)
        (root / FACTORS_DIR / f"{split}.jsonl").write_text("".join(records))
        with open(root / "ImageSets" / "Segmentation" / list_name, "w") as f:
            f.writelines(f"{stem}\n" for stem, _, _ in (image_plan(config, split, i) for i in range(total)))
    shutil.rmtree(root / "chunks")
    meta = expected_meta(config) | {
        "classes": {c: synthetic_class_name(c) for c in range(1, NUM_CLASSES + 1)},
        "modes": {c: class_modes(c, config.modes_per_class) for c in range(1, NUM_CLASSES + 1)},
        "folds": {f: fold_classes("synthetic", f) for f in range(NUM_FOLDS)},
    }
    with open(root / META_FILE, "w") as f:  # written last: its presence means "complete"
        json.dump(meta, f, indent=1)
    return root


class SyntheticSource(VOCLayoutSource):
    """Reads a generated synthetic benchmark (VOC layout, 20 classes, no novel objects in training)."""

    def __init__(self, root: str | os.PathLike):
        root = Path(root)
        meta = read_meta(root)
        if meta is None:
            raise DatasetError(
                f"no complete synthetic benchmark at {root} ({META_FILE} missing); "
                "generate it with `python -m fsslib prepare synthetic` or fsslib.data.synthetic.generate(root)"
            )
        if meta.get("format_version") != FORMAT_VERSION:
            raise DatasetError(f"{root} holds a synthetic benchmark of format {meta.get('format_version')}, "
                               f"this fsslib reads format {FORMAT_VERSION}; delete that folder to regenerate it")
        super().__init__(root, benchmark="synthetic", num_classes=NUM_CLASSES, image_ext=".jpg",
                         min_pixels=MIN_PIXELS, novel_in_train_images=False)
        self._factors: dict[str, dict[str, dict]] = {}

    def factors(self, split: str) -> dict[str, dict]:
        """``{stem: record}`` of ``split``: the factors the generator drew for each image (see
        :func:`generate_image`), read once."""
        if split not in self._factors:
            self.check_split(split)
            with open(self.root / FACTORS_DIR / f"{split}.jsonl") as f:
                self._factors[split] = {r["stem"]: r for r in map(json.loads, filter(str.strip, f))}
        return self._factors[split]
