"""The real dataset loaders (PASCAL-5i, COCO-20i, FSS-1000) on tiny fixture trees built in tmp_path.

No downloads: every test writes a handful of small images, labels, list files and annotation
JSONs in the on-disk layout of the real dataset, then runs the loader, the fold pools, the
episode sampler and the episode dataset on them end to end.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fsslib.data import (
    COCOSource,
    DatasetError,
    Episode,
    EpisodeDataset,
    EpisodePool,
    FSS1000Source,
    VOCLayoutSource,
    base_classes,
    eval_transform,
    fold_classes,
    load_episodes,
    sample_episodes,
    save_episodes,
)
from fsslib.data import sources as sources_module
from fsslib.data.fss1000 import fss1000_class_names
from fsslib.data.sources import IGNORE, LABEL_IGNORE

# pycocotools' C extension warns about numpy 2's copy keyword; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

# --------------------------------------------------------------------------------------------
# PASCAL-5i: VOC layout
# --------------------------------------------------------------------------------------------

VOC_SIZES = [(60, 50), (50, 60), (64, 48)]  # (width, height): varied, as in VOC
VOC_MIN_PIXELS = 200  # every band below holds >= 336 pixels of its class; the small squares 16
N_VOC = 20  # images per split; image j holds classes (3j + i) % 20 + 1, i = 0..3 (each class 4 times)

# A few VOC colours; the rest of the palette is grey. The palette does not matter to the loader:
# palette indices are the class ids.
_PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0, 0, 0, 128] + [100] * (3 * 250) + [224, 224, 192]


def _rgb(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def band_label(width: int, height: int, classes: list[int]) -> np.ndarray:
    """Horizontal bands, one per class, each outlined in 255 (VOC's object borders); 0 elsewhere."""
    label = np.zeros((height, width), np.uint8)
    band = height // 5
    for i, c in enumerate(classes):
        y0, y1 = i * band, (i + 1) * band
        label[y0:y1, 0:width] = IGNORE
        label[y0 + 1:y1 - 1, 1:width - 1] = c
    return label


def save_label(label: np.ndarray, path: Path, palette: bool) -> None:
    """A palette ('P') PNG as VOC ships them, or a greyscale ('L') one as SBD-aug copies often are."""
    im = Image.fromarray(label)  # uint8 [H, W] -> mode 'L'
    if palette:
        im.putpalette(_PALETTE)  # -> mode 'P', indices unchanged
    im.save(path)


def voc_stem(split: str, j: int) -> str:
    return f"{2007 if split == 'train' else 2008}_{j:06d}"


def voc_classes(j: int) -> list[int]:
    return [(3 * j + i) % 20 + 1 for i in range(4)]


def make_voc(root: Path) -> Path:
    """A VOC2012 + SBD layout: 20 train and 20 val images (+ one 'small object' image each)."""
    rng = np.random.default_rng(0)
    for sub in ("JPEGImages", "SegmentationClassAug", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    lists = {"train": [], "val": []}
    for split in ("train", "val"):
        for j in range(N_VOC):
            stem = voc_stem(split, j)
            width, height = VOC_SIZES[j % len(VOC_SIZES)]
            Image.fromarray(_rgb(rng, width, height)).save(root / "JPEGImages" / f"{stem}.jpg", quality=90)
            save_label(band_label(width, height, voc_classes(j)), root / "SegmentationClassAug" / f"{stem}.png",
                       palette=j % 2 == 0)
            lists[split].append(stem)
    # One image per split whose first class covers only 16 < VOC_MIN_PIXELS pixels.
    for split, stem, small, large in (("train", "2007_small", 7, 8), ("val", "2008_small", 3, 10)):
        label = band_label(60, 50, [0, large])
        label[2:6, 2:6] = small
        Image.fromarray(_rgb(rng, 60, 50)).save(root / "JPEGImages" / f"{stem}.jpg", quality=90)
        save_label(label, root / "SegmentationClassAug" / f"{stem}.png", palette=False)
        lists[split].append(stem)
    seg = root / "ImageSets" / "Segmentation"
    (seg / "train_aug.txt").write_text("".join(f"{s}\n" for s in lists["train"]))
    (seg / "val.txt").write_text("".join(f"{s}\n" for s in lists["val"]))
    return root


@pytest.fixture
def voc_root(tmp_path) -> Path:
    return make_voc(tmp_path / "VOCdevkit" / "VOC2012")


@pytest.fixture
def voc(voc_root) -> VOCLayoutSource:
    return VOCLayoutSource(voc_root, min_pixels=VOC_MIN_PIXELS)


def test_voc_load_returns_image_and_dataset_ids(voc):
    for j in (0, 1, 2):  # palette PNG, greyscale PNG, another size
        stem = voc_stem("train", j)
        image, label = voc.load(stem)
        width, height = VOC_SIZES[j]
        assert image.shape == (height, width, 3) and image.dtype == np.uint8
        assert label.shape == (height, width) and label.dtype == np.int32
        assert set(np.unique(label).tolist()) == {0, LABEL_IGNORE, *voc_classes(j)}  # 255 -> -1


def test_voc_index_is_built_once_and_reused(voc, voc_root, monkeypatch):
    path = voc.index_path("train")
    assert not path.exists()
    pairs = voc.index("train")
    assert path.exists() and path == voc_root / "ImageSets" / "FewShot" / "train_index.tsv"
    by_stem = {}
    for p in pairs:
        by_stem.setdefault(p.stem, {})[p.class_id] = p.pixels
    assert set(by_stem[voc_stem("train", 0)]) == set(voc_classes(0))
    assert by_stem["2007_small"] == {7: 16, 8: 8 * 58}
    assert all(c not in (0, IGNORE, LABEL_IGNORE) for d in by_stem.values() for c in d)

    # A fresh source reads the saved index and never opens a label file.
    def no_label_reads(path):
        raise AssertionError(f"label {path} read although the index exists")

    monkeypatch.setattr(sources_module, "read_label", no_label_reads)
    again = VOCLayoutSource(voc_root, min_pixels=VOC_MIN_PIXELS)
    assert again.index("train") == pairs


def test_voc_lists_in_sbd_aug_format(voc, voc_root):
    """The widely shared train_aug.txt lists image and label paths, not stems."""
    path = voc_root / "ImageSets" / "Segmentation" / "train_aug.txt"
    stems = voc.stems("train")
    path.write_text("".join(f"/JPEGImages/{s}.jpg /SegmentationClassAug/{s}.png\n" for s in stems))
    fresh = VOCLayoutSource(voc_root, min_pixels=VOC_MIN_PIXELS)
    assert fresh.stems("train") == stems
    assert {p.stem for p in fresh.index("train")} == set(stems)


@pytest.mark.parametrize("fold", range(4))
def test_voc_folds_are_disjoint(voc, fold):
    novel = fold_classes("pascal5i", fold)
    assert novel == list(range(5 * fold + 1, 5 * fold + 6))
    train = EpisodePool.for_fold(voc, fold, "train")
    test = EpisodePool.for_fold(voc, fold, "val")
    assert train.classes == base_classes("pascal5i", fold)
    assert set(train.classes).isdisjoint(novel)
    assert test.classes == novel
    assert set(train.classes) | set(test.classes) == set(range(1, 21))
    # Every listed image really holds its class (per the index), training ones with min_pixels.
    held = {(p.stem, p.class_id): p.pixels for split in ("train", "val") for p in voc.index(split)}
    for pool, split in ((train, "train"), (test, "val")):
        for c in pool.classes:
            assert pool.queries[c] and pool.supports[c]
            for s in pool.queries[c]:
                assert (s, c) in held
            for s in pool.supports[c]:
                assert held[(s, c)] >= VOC_MIN_PIXELS
    for e in sample_episodes(train, 30, seed=fold):
        assert set(e.classes) <= set(base_classes("pascal5i", fold))
    for e in sample_episodes(test, 30, seed=fold):
        assert set(e.classes) <= set(novel)


def test_voc_small_objects_are_test_queries_but_never_supports(voc):
    train = EpisodePool.for_fold(voc, 0, "train")  # class 7 (base in fold 0) has 16 px in 2007_small
    assert "2007_small" not in train.queries[7] and "2007_small" not in train.supports[7]
    assert "2007_small" in train.queries[8] and "2007_small" in train.supports[8]
    test = EpisodePool.for_fold(voc, 0, "val")  # class 3 (novel in fold 0) has 16 px in 2008_small
    assert "2008_small" in test.queries[3]
    assert "2008_small" not in test.supports[3]
    for e in sample_episodes(test, 200, seed=1):
        assert "2008_small" not in e.supports


def test_voc_novel_pixels_are_background_in_training_episodes(voc):
    fold = 0
    novel = fold_classes("pascal5i", fold)
    query = voc_stem("train", 1)  # classes 4, 5 (novel in fold 0) and 6, 7 (base)
    assert set(voc_classes(1)) == {4, 5, 6, 7}
    pool = EpisodePool.for_fold(voc, fold, "train")
    assert query in pool.queries[6] and query in pool.queries[7]
    support = next(s for s in pool.supports[6] if s != query)
    dataset = EpisodeDataset(pool, eval_transform(32), shot=1, episodes=[Episode(query, (support,), (6,))])
    item = dataset[0]
    _, label = voc.load(query)
    orig = item["query_mask_orig"]
    assert torch.equal(orig == 1, torch.from_numpy(label == 6))
    assert torch.equal(orig == IGNORE, torch.from_numpy(label == LABEL_IGNORE))
    for c in novel:
        if (label == c).any():
            assert (orig[torch.from_numpy(label == c)] == 0).all()
    assert set(torch.unique(item["query_mask"]).tolist()) <= {0, 1, IGNORE}
    assert 1 in item["query_mask"] and 1 in item["support_masks"]
    assert item["query_img"].shape == (3, 32, 32) and item["support_imgs"].shape == (1, 3, 32, 32)
    assert item["support_masks"].shape == (1, 32, 32) and int(item["class_id"]) == 6
    assert item["query_name"] == query and item["support_names"] == [support]


@pytest.mark.parametrize("shot", [1, 2])
def test_voc_support_never_equals_query(voc, shot):
    for split in ("train", "val"):
        pool = EpisodePool.for_fold(voc, 1, split)
        for e in sample_episodes(pool, 100, shot=shot, seed=5):
            assert e.query not in e.supports
            assert len(set(e.supports)) == len(e.supports) == shot
            c = e.classes[0]
            assert e.query in pool.queries[c] and all(s in pool.supports[c] for s in e.supports)


def test_voc_episodes_are_deterministic(voc, voc_root, tmp_path):
    pool = EpisodePool.for_fold(voc, 2, "val")
    a = sample_episodes(pool, 50, shot=1, seed=7)
    b = sample_episodes(pool, 50, shot=1, seed=7)
    assert a == b
    # A fresh source (index read back from disk) gives the same list.
    fresh = EpisodePool.for_fold(VOCLayoutSource(voc_root, min_pixels=VOC_MIN_PIXELS), 2, "val")
    assert sample_episodes(fresh, 50, shot=1, seed=7) == a
    assert sample_episodes(pool, 50, shot=1, seed=8) != a
    save_episodes(tmp_path / "a.json", a)
    save_episodes(tmp_path / "b.json", b)
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert load_episodes(tmp_path / "a.json") == a
    # The dataset items are reproducible too.
    d1 = EpisodeDataset(pool, eval_transform(24), episodes=a[:3])
    d2 = EpisodeDataset(fresh, eval_transform(24), episodes=a[:3])
    for i in range(3):
        x, y = d1[i], d2[i]
        assert torch.equal(x["query_img"], y["query_img"]) and torch.equal(x["support_masks"], y["support_masks"])


# --- PASCAL-5i errors ------------------------------------------------------------------------


def test_voc_missing_root_names_path_layout_and_readme(tmp_path):
    root = tmp_path / "nowhere" / "VOC2012"
    with pytest.raises(DatasetError) as err:
        VOCLayoutSource(root)
    msg = str(err.value)
    assert str(root) in msg and "does not exist" in msg
    assert "JPEGImages" in msg and "SegmentationClassAug" in msg and "train_aug.txt" in msg
    assert "README" in msg


def test_voc_incomplete_root_names_missing_list(voc_root):
    (voc_root / "ImageSets" / "Segmentation" / "val.txt").unlink()
    with pytest.raises(DatasetError) as err:
        VOCLayoutSource(voc_root)
    msg = str(err.value)
    assert str(voc_root) in msg and "ImageSets/Segmentation/val.txt" in msg and "README" in msg
    assert "lacks ImageSets/Segmentation/val.txt" in msg  # only the missing part is reported as missing


def test_voc_missing_folder_is_named(voc_root):
    shutil.rmtree(voc_root / "SegmentationClassAug")
    with pytest.raises(DatasetError, match="lacks SegmentationClassAug"):
        VOCLayoutSource(voc_root)


@pytest.mark.parametrize("corruption", ["garbage", "truncated", "empty"])
def test_voc_corrupt_jpeg_names_the_file(voc, corruption):
    stem = voc_stem("val", 3)
    path = voc.image_path(stem)
    data = path.read_bytes()
    path.write_bytes({"garbage": b"this is not a jpeg" * 10, "truncated": data[: len(data) // 2],
                      "empty": b""}[corruption])
    with pytest.raises(DatasetError, match=re.escape(str(path))):
        voc.load(stem)


def test_voc_missing_image_names_the_file(voc):
    stem = voc_stem("val", 4)
    path = voc.image_path(stem)
    path.unlink()
    with pytest.raises(DatasetError, match=re.escape(str(path))):
        voc.load(stem)


def test_voc_missing_label_names_the_file(voc):
    path = voc.label_path(voc_stem("train", 5))
    path.unlink()
    with pytest.raises(DatasetError, match=re.escape(str(path))):
        voc.index("train")


def test_voc_label_image_size_mismatch_names_the_label(voc):
    stem = voc_stem("train", 2)
    path = voc.label_path(stem)
    save_label(band_label(40, 30, [1, 2]), path, palette=False)
    with pytest.raises(DatasetError) as err:
        voc.load(stem)
    msg = str(err.value)
    assert str(path) in msg and "40x30" in msg and "64x48" in msg


def test_voc_rgb_label_is_rejected(voc):
    stem = voc_stem("train", 0)
    path = voc.label_path(stem)
    Image.fromarray(np.zeros((50, 60, 3), np.uint8)).save(path)
    with pytest.raises(DatasetError, match=re.escape(str(path))):
        voc.load(stem)


def test_voc_out_of_range_class_is_rejected_not_remapped(voc, voc_root):
    stem = voc_stem("train", 6)
    path = voc.label_path(stem)
    label = band_label(60, 50, [1, 27])
    save_label(label, path, palette=True)
    with pytest.raises(DatasetError) as err:
        voc.index("train")
    msg = str(err.value)
    assert str(path) in msg and "27" in msg
    assert not voc.index_path("train").exists()  # no index is written from bad labels
    with pytest.raises(DatasetError, match="27"):
        voc.load(stem)


# --------------------------------------------------------------------------------------------
# COCO-20i: official 2014 annotation files, read with pycocotools
# --------------------------------------------------------------------------------------------

COCO_GAPS = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)
COCO_CATEGORY_IDS = [i for i in range(1, 91) if i not in COCO_GAPS]
COCO_MIN_PIXELS = 100
COCO_W, COCO_H = 40, 30  # every image (width, height) but the detail image


def rect(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE (column-major run lengths, starting with zeros)."""
    flat = mask.flatten(order="F").astype(np.uint8)
    counts, current, run = [], 0, 0
    for v in flat:
        if v == current:
            run += 1
        else:
            counts.append(run)
            current, run = v, 1
    counts.append(run)
    return {"counts": counts, "size": list(mask.shape)}


def coco_file_name(split: str, image_id: int) -> str:
    return f"COCO_{split}2014_{image_id:012d}.jpg"


def make_coco(root: Path) -> Path:
    """Both COCO 2014 splits, each with 8 images that together hold all 80 classes twice,
    plus (train) one detail image with a crowd region and known areas."""
    rng = np.random.default_rng(1)
    categories = [{"id": c, "name": {1: "person", 90: "toothbrush"}.get(c, f"category{c}"), "supercategory": "x"}
                  for c in COCO_CATEGORY_IDS]
    (root / "annotations").mkdir(parents=True)
    for split in ("train", "val"):
        (root / f"{split}2014").mkdir()
        images, annotations = [], []

        def add_image(image_id, width=COCO_W, height=COCO_H):
            name = coco_file_name(split, image_id)
            Image.fromarray(_rgb(rng, width, height)).save(root / f"{split}2014" / name, quality=90)
            images.append({"id": image_id, "file_name": name, "width": width, "height": height})

        def add_ann(image_id, category, segmentation, area, iscrowd=0):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                                "segmentation": segmentation, "area": float(area), "bbox": [0, 0, 1, 1],
                                "iscrowd": iscrowd})

        # Image j (1..8) holds the classes k with (k - 1) % 4 == (j - 1) % 4: 20 small rectangles.
        for j in range(1, 9):
            add_image(j)
            classes = [k for k in range(1, 81) if (k - 1) % 4 == (j - 1) % 4]
            for n, k in enumerate(classes):
                x, y = 2 * (n % 10) * 2, 2 + 12 * (n // 10)
                add_ann(j, COCO_CATEGORY_IDS[k - 1], rect(x, y, x + 3, y + 8), area=500)
        if split == "train":
            # Detail image: category 90 (class 80) twice, category 13 (class 12) once, a crowd of persons.
            add_image(100)
            add_ann(100, 90, rect(2, 2, 12, 12), area=777)
            add_ann(100, 90, rect(14, 2, 18, 6), area=223)
            add_ann(100, 13, rect(22, 4, 34, 14), area=150)
            crowd = np.zeros((COCO_H, COCO_W), bool)
            crowd[20:28, 4:36] = True
            add_ann(100, 1, uncompressed_rle(crowd), area=int(crowd.sum()), iscrowd=1)
            # An image with only a crowd: it holds no class.
            add_image(101)
            add_ann(101, 1, uncompressed_rle(crowd), area=int(crowd.sum()), iscrowd=1)
        doc = {"info": {"description": "fsslib test fixture"}, "licenses": [], "images": images,
               "annotations": annotations, "categories": categories}
        (root / "annotations" / f"instances_{split}2014.json").write_text(json.dumps(doc))
    return root


@pytest.fixture
def coco_root(tmp_path) -> Path:
    return make_coco(tmp_path / "COCO2014")


@pytest.fixture
def coco(coco_root) -> COCOSource:
    return COCOSource(coco_root, min_pixels=COCO_MIN_PIXELS)


def test_coco_fixture_uses_the_real_category_ids():
    assert len(COCO_CATEGORY_IDS) == 80 and COCO_CATEGORY_IDS[-1] == 90


def test_coco_class_is_position_in_ascending_category_id(coco):
    coco.api("train")
    mapping = coco.category_to_class
    assert mapping[1] == 1 and mapping[11] == 11 and mapping[13] == 12 and mapping[90] == 80
    assert sorted(mapping.values()) == list(range(1, 81))
    assert all(gap not in mapping for gap in COCO_GAPS)


def test_coco_load_rasterises_polygons_and_ignores_crowds(coco):
    stem = Path(coco_file_name("train", 100)).stem
    image, label = coco.load(stem)
    assert image.shape == (COCO_H, COCO_W, 3) and image.dtype == np.uint8
    assert label.shape == (COCO_H, COCO_W) and label.dtype == np.int32
    assert (label[4:11, 4:11] == 80).all()  # category 90 -> class 80
    assert (label[3:5, 15:17] == 80).all()
    assert (label[6:13, 24:33] == 12).all()  # category 13 -> class 12
    assert (label[20:28, 4:36] == LABEL_IGNORE).all()  # crowd: ignore, not class 1, not background
    assert label[0, 39] == 0 and label[29, 0] == 0 and label[16, 20] == 0
    assert set(np.unique(label).tolist()) == {LABEL_IGNORE, 0, 12, 80}
    # Val images are found too.
    _, val_label = coco.load(Path(coco_file_name("val", 2)).stem)
    assert 2 in val_label


def test_coco_index_counts_pixels_from_the_area_field(coco):
    pairs = coco.index("train")
    detail = {p.class_id: p.pixels for p in pairs if p.stem == Path(coco_file_name("train", 100)).stem}
    assert detail == {80: 777 + 223, 12: 150}  # areas summed per class; the crowd is not counted
    assert not [p for p in pairs if p.stem == Path(coco_file_name("train", 101)).stem]
    assert {p.class_id for p in pairs} == set(range(1, 81))
    assert {p.class_id for p in coco.index("val")} == set(range(1, 81))


@pytest.mark.parametrize("convention", ["interleaved", "contiguous"])
@pytest.mark.parametrize("fold", range(4))
def test_coco_fold_pools_follow_the_convention(coco, convention, fold):
    novel = fold_classes("coco20i", fold, convention)
    expected = [4 * k + fold + 1 for k in range(20)] if convention == "interleaved" else \
        list(range(20 * fold + 1, 20 * fold + 21))
    assert novel == expected
    test = EpisodePool.for_fold(coco, fold, "val", convention=convention)
    train = EpisodePool.for_fold(coco, fold, "train", convention=convention)
    assert test.classes == novel
    assert train.classes == base_classes("coco20i", fold, convention) and set(train.classes).isdisjoint(novel)
    held = {(p.stem, p.class_id) for p in coco.index("val")}
    for c in test.classes:
        assert test.queries[c] and all((s, c) in held for s in test.queries[c])
    for e in sample_episodes(test, 40, seed=fold):
        assert e.classes[0] in novel and e.query not in e.supports
    for e in sample_episodes(train, 40, seed=fold):
        assert e.classes[0] in train.classes and e.query not in e.supports
    # The same pools through the explicit constructor.
    assert EpisodePool(coco, "val", novel).queries == test.queries


def test_coco_detail_image_qualifies_by_area(coco):
    pool = EpisodePool(coco, "train", [12, 80], min_query_pixels=COCO_MIN_PIXELS)
    detail = Path(coco_file_name("train", 100)).stem
    assert detail in pool.supports[80] and detail in pool.supports[12]
    strict = COCOSource(coco.root, min_pixels=200)
    pool = EpisodePool(strict, "train", [12, 80], min_query_pixels=1)
    assert detail in pool.queries[12] and detail not in pool.supports[12]  # area 150 < 200


def test_coco_episode_masks_ignore_crowds(coco):
    detail = Path(coco_file_name("train", 100)).stem
    pool = EpisodePool(coco, "train", [80])
    support = next(s for s in pool.supports[80] if s != detail)
    item = EpisodeDataset(pool, eval_transform(20), episodes=[Episode(detail, (support,), (80,))])[0]
    orig = item["query_mask_orig"]
    assert (orig[20:28, 4:36] == IGNORE).all()
    assert (orig[6:13, 24:33] == 0).all()  # another class is background
    assert (orig[4:11, 4:11] == 1).all()


def test_coco_missing_root_and_annotation_file(coco_root, tmp_path):
    with pytest.raises(DatasetError) as err:
        COCOSource(tmp_path / "nope")
    msg = str(err.value)
    assert str(tmp_path / "nope") in msg and "instances_train2014.json" in msg and "README" in msg
    (coco_root / "annotations" / "instances_val2014.json").unlink()
    with pytest.raises(DatasetError) as err:
        COCOSource(coco_root)
    msg = str(err.value)
    assert str(coco_root) in msg and "lacks annotations/instances_val2014.json" in msg and "README" in msg


def test_coco_corrupt_annotation_file_is_named(coco_root):
    path = coco_root / "annotations" / "instances_train2014.json"
    path.write_text('{"images": [')
    with pytest.raises(DatasetError, match=re.escape(str(path))):
        COCOSource(coco_root).index("train")


def test_coco_wrong_category_count_is_rejected(coco_root):
    path = coco_root / "annotations" / "instances_val2014.json"
    doc = json.loads(path.read_text())
    doc["categories"] = doc["categories"][:79]
    doc["annotations"] = [a for a in doc["annotations"] if a["category_id"] != 90]
    path.write_text(json.dumps(doc))
    with pytest.raises(DatasetError, match="79 categories"):
        COCOSource(coco_root).index("val")


def test_coco_unknown_category_is_rejected_not_remapped(coco_root):
    path = coco_root / "annotations" / "instances_train2014.json"
    doc = json.loads(path.read_text())
    doc["annotations"][0]["category_id"] = 12  # one of COCO's gaps
    path.write_text(json.dumps(doc))
    source = COCOSource(coco_root)
    with pytest.raises(DatasetError) as err:
        source.index("train")
    assert str(path) in str(err.value) and "12" in str(err.value)


def test_coco_image_annotation_size_mismatch_names_the_file(coco, coco_root):
    path = coco_root / "train2014" / coco_file_name("train", 3)
    Image.fromarray(np.zeros((20, 25, 3), np.uint8)).save(path)
    with pytest.raises(DatasetError) as err:
        coco.load(path.stem)
    msg = str(err.value)
    assert str(path) in msg and "25x20" in msg and f"{COCO_W}x{COCO_H}" in msg


def test_coco_corrupt_or_missing_image_names_the_file(coco, coco_root):
    path = coco_root / "val2014" / coco_file_name("val", 5)
    path.write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(DatasetError, match=re.escape(str(path))):
        coco.load(path.stem)
    path.unlink()
    with pytest.raises(DatasetError, match=re.escape(str(path))):
        coco.load(path.stem)
    with pytest.raises(DatasetError, match="neither COCO annotation file"):
        coco.load("COCO_val2014_000000999999")


# --------------------------------------------------------------------------------------------
# FSS-1000: one folder per class
# --------------------------------------------------------------------------------------------

FSS_SIZE = 8


def write_fss_pair(folder: Path, n: int, mask: np.ndarray, rng: np.random.Generator, mode: str = "RGB") -> None:
    """``n.jpg`` and ``n.png``; masks are stored as the real dataset does (RGB, 0 / 255) or greyscale."""
    folder.mkdir(parents=True, exist_ok=True)
    h, w = mask.shape
    Image.fromarray(_rgb(rng, w, h)).save(folder / f"{n}.jpg", quality=90)
    value = (mask * 255).astype(np.uint8)
    if mode == "RGB":
        Image.fromarray(np.stack([value] * 3, axis=-1)).save(folder / f"{n}.png")
    else:
        Image.fromarray(value).save(folder / f"{n}.png")


def fss_mask(n: int) -> np.ndarray:
    mask = np.zeros((FSS_SIZE, FSS_SIZE), bool)
    mask[1 + n % 2:6, 2:7] = True
    return mask


CLASS_255 = fss1000_class_names("train")[254]  # the 255th train class has id 255


def make_fss(root: Path) -> Path:
    """All 240 test classes with 2 pairs each; empty train/val folders but for the 255th train class."""
    rng = np.random.default_rng(2)
    for i, name in enumerate(fss1000_class_names("test")):
        for n in (1, 2):
            write_fss_pair(root / name, n, fss_mask(n), rng, mode="RGB" if i % 2 == 0 else "L")
    for name in fss1000_class_names("train") + fss1000_class_names("val"):
        (root / name).mkdir()
    for n in (1, 2, 3):
        write_fss_pair(root / CLASS_255, n, fss_mask(n), rng)
    return root


@pytest.fixture(scope="module")
def fss_root(tmp_path_factory) -> Path:
    return make_fss(tmp_path_factory.mktemp("fss") / "FSS-1000")


@pytest.fixture
def fss(fss_root) -> FSS1000Source:
    return FSS1000Source(fss_root)


def test_fss_class_ids_follow_train_val_test_order(fss):
    assert fss.num_classes == 1000
    assert fss.split_classes("train") == list(range(1, 521))
    assert fss.split_classes("val") == list(range(521, 761))
    assert fss.split_classes("test") == list(range(761, 1001))
    assert fss.class_ids[fss1000_class_names("test")[0]] == 761
    assert fss.class_ids[CLASS_255] == 255
    pairs = fss.index("test")
    assert len(pairs) == 2 * 240 and {p.class_id for p in pairs} == set(range(761, 1001))
    for p in pairs:
        assert fss.class_ids[p.stem.split("/")[0]] == p.class_id
    assert fss.index("val") == []  # the folders exist, empty


def test_fss_load_reads_rgb_and_greyscale_masks(fss):
    for i in (0, 1):  # RGB and 'L' masks
        name = fss1000_class_names("test")[i]
        image, label = fss.load(f"{name}/2")
        assert image.shape == (FSS_SIZE, FSS_SIZE, 3) and image.dtype == np.uint8
        assert label.dtype == np.int32
        assert np.array_equal(label, np.where(fss_mask(2), 761 + i, 0))


def test_fss_test_episodes(fss, tmp_path):
    pool = EpisodePool(fss, "test", fss.split_classes("test"))
    episodes = sample_episodes(pool, 20, shot=1, seed=0)
    assert episodes == sample_episodes(pool, 20, shot=1, seed=0)
    save_episodes(tmp_path / "a.json", episodes)
    save_episodes(tmp_path / "b.json", sample_episodes(pool, 20, shot=1, seed=0))
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    dataset = EpisodeDataset(pool, eval_transform(16), episodes=episodes[:4])
    for e, item in zip(episodes, dataset):
        assert e.query not in e.supports
        assert e.query.split("/")[0] == e.supports[0].split("/")[0]
        assert 761 <= int(item["class_id"]) <= 1000
        assert set(torch.unique(item["query_mask_orig"]).tolist()) == {0, 1}
        assert set(torch.unique(item["support_masks"]).tolist()) <= {0, 1}


def test_fss_class_255_is_a_class_not_ignore(fss):
    stem = f"{CLASS_255}/1"
    _, label = fss.load(stem)
    assert label.max() == 255 and LABEL_IGNORE not in label
    pool = EpisodePool(fss, "train", [255])
    assert sorted(pool.queries[255]) == [f"{CLASS_255}/{n}" for n in (1, 2, 3)]
    item = EpisodeDataset(pool, eval_transform(FSS_SIZE), episodes=[Episode(stem, (f"{CLASS_255}/2",), (255,))])[0]
    assert torch.equal(item["query_mask_orig"], torch.from_numpy(fss_mask(1)).long())
    assert IGNORE not in item["query_mask"] and IGNORE not in item["support_masks"]
    assert torch.equal(item["query_mask"], torch.from_numpy(fss_mask(1)).long())
    assert torch.equal(item["support_masks"][0], torch.from_numpy(fss_mask(2)).long())
    assert int(item["class_id"]) == 255


def test_fss_missing_root(tmp_path):
    with pytest.raises(DatasetError) as err:
        FSS1000Source(tmp_path / "FSS-1000")
    msg = str(err.value)
    assert str(tmp_path / "FSS-1000") in msg and "README" in msg


def test_fss_missing_class_folders_are_listed(tmp_path):
    root = tmp_path / "FSS-1000"
    names = fss1000_class_names("test")
    for name in names:
        (root / name).mkdir(parents=True)
    shutil.rmtree(root / names[5])
    shutil.rmtree(root / names[100])
    with pytest.raises(DatasetError) as err:
        FSS1000Source(root).index("test")
    msg = str(err.value)
    assert str(root) in msg and "lacks 2 class folders" in msg and "test" in msg
    assert names[5] in msg and names[100] in msg and "README" in msg


def test_fss_bad_files_are_named(tmp_path):
    root = tmp_path / "FSS-1000"
    rng = np.random.default_rng(3)
    name = fss1000_class_names("val")[0]
    write_fss_pair(root / name, 1, fss_mask(1), rng)
    source = FSS1000Source(root)
    # Mask of another size than its image.
    Image.fromarray(np.zeros((5, 6), np.uint8)).save(root / name / "1.png")
    with pytest.raises(DatasetError, match=re.escape(str(root / name / "1.png"))):
        source.load(f"{name}/1")
    # Corrupt mask, missing mask, corrupt image.
    (root / name / "1.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=re.escape(str(root / name / "1.png"))):
        source.load(f"{name}/1")
    (root / name / "1.png").unlink()
    with pytest.raises(DatasetError, match=re.escape(str(root / name / "1.png"))):
        source.load(f"{name}/1")
    (root / name / "1.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match=re.escape(str(root / name / "1.jpg"))):
        source.load(f"{name}/1")
    with pytest.raises(DatasetError, match="not an FSS-1000 class"):
        source.load("no_such_class/1")
