import numpy as np
import pytest

from fsslib.data import DatasetError, EpisodePool, SyntheticConfig, fold_classes, generate
from fsslib.data.factors import FACTOR_BINS, FACTORS, episode_factors
from fsslib.data.sources import LABEL_IGNORE
from fsslib.data.synthetic import MIN_PIXELS, NUM_CLASSES, class_modes, generate_image, read_meta


def test_images_are_a_pure_function_of_seed_split_index():
    config = SyntheticConfig.fast()
    stem, image, label, factors = generate_image(config, "train", 7)
    stem2, image2, label2, factors2 = generate_image(config, "train", 7)
    assert stem == stem2 and np.array_equal(image, image2) and np.array_equal(label, label2) and factors == factors2
    _, other, _, _ = generate_image(SyntheticConfig(seed=1, train_per_class=16, val_per_class=12), "train", 7)
    assert not np.array_equal(image, other)


def test_layout_is_read_by_the_voc_loader(synthetic_source):
    image, label = synthetic_source.load(synthetic_source.index("train")[0].stem)
    assert image.shape == (128, 128, 3) and image.dtype == np.uint8
    assert label.shape == (128, 128)
    values = set(np.unique(label).tolist())
    assert values <= set(range(NUM_CLASSES + 1)) | {LABEL_IGNORE}
    assert LABEL_IGNORE in values  # object borders are ignored, as in VOC
    assert (synthetic_source.root / "ImageSets" / "Segmentation" / "train_aug.txt").exists()


def test_every_class_has_balanced_main_objects(synthetic_source):
    counts = np.bincount([p.class_id for p in synthetic_source.index("val")], minlength=NUM_CLASSES + 1)[1:]
    assert counts.min() >= SyntheticConfig.fast().val_per_class  # main object of val_per_class images each


@pytest.mark.parametrize("fold", range(4))
def test_training_images_never_show_a_novel_class(synthetic_source, fold):
    novel = set(fold_classes("synthetic", fold))
    pool = EpisodePool.for_fold(synthetic_source, fold, "train")
    train_stems = {s for stems in pool.queries.values() for s in stems}
    for stem in list(train_stems)[:60]:
        _, label = synthetic_source.load(stem)
        assert novel.isdisjoint(np.unique(label).tolist()), stem
    assert set(pool.classes).isdisjoint(novel)
    assert set(EpisodePool.for_fold(synthetic_source, fold, "val").classes) == novel


def test_regeneration_after_an_interruption_is_identical(tmp_path):
    config = SyntheticConfig(train_per_class=3, val_per_class=2)
    root = generate(tmp_path / "s", config, workers=1, progress=False)
    index = (root / "ImageSets" / "FewShot" / "train_index.tsv").read_text()
    # Simulate an interruption: the completion marker and one finished chunk are gone.
    (root / "synthetic.json").unlink()
    (root / "chunks").mkdir()
    generate(root, config, workers=1, progress=False)
    assert (root / "ImageSets" / "FewShot" / "train_index.tsv").read_text() == index
    assert read_meta(root)["config"]["train_per_class"] == 3


def test_a_folder_with_another_config_is_not_overwritten(tmp_path):
    generate(tmp_path / "s", SyntheticConfig(train_per_class=2, val_per_class=2), workers=1, progress=False)
    with pytest.raises(DatasetError, match="not the requested"):
        generate(tmp_path / "s", SyntheticConfig(train_per_class=3, val_per_class=2), workers=1, progress=False)


def test_factor_records_describe_every_object():
    config = SyntheticConfig()
    roles = {"main": 0, "distractor": 0, "hard_negative": 0}
    for index in range(60):
        stem, _, label, factors = generate_image(config, "val", index)
        main_class = 1 + index % NUM_CLASSES
        assert factors["stem"] == stem and 0 <= factors["photometric"] <= config.photometric
        assert 0 <= factors["clutter"] <= config.max_clutter
        main = [o for o in factors["objects"] if o["role"] == "main"]
        assert len(main) == 1 and main[0]["cls"] == main_class
        assert main[0]["palette"] == class_modes(main_class)[main[0]["mode"]]
        assert main[0]["extent"] <= config.max_extent
        for obj in factors["objects"]:
            roles[obj["role"]] += 1
            if obj["role"] == "hard_negative":  # another class, in the main object's appearance
                assert obj["cls"] != main_class and obj["palette"] == main[0]["palette"]
            if obj["role"] == "distractor":
                assert obj["cls"] == main_class and obj["extent"] < main[0]["extent"] * 2
        # recorded visible pixels cover the label (which marks object borders 255)
        for c in {o["cls"] for o in factors["objects"]}:
            visible = sum(o["pixels"] for o in factors["objects"] if o["cls"] == c)
            assert (label == c).sum() <= visible
    assert all(roles.values()), roles  # every role occurs in 60 images


def test_supports_hold_at_least_sixteen_feature_cells(synthetic_source):
    for split in ("train", "val"):
        pool = EpisodePool.for_fold(synthetic_source, 0, split)
        held = {(p.stem, p.class_id): p.pixels for p in synthetic_source.index(split)}
        assert all(held[(s, c)] >= MIN_PIXELS for c, stems in pool.supports.items() for s in stems)
    assert set(synthetic_source.factors("val")) == {p.stem for p in synthetic_source.index("val")}


def _record(stem, photometric, clutter, *objects):
    return {"stem": stem, "photometric": photometric, "clutter": clutter,
            "objects": [dict(cls=c, role=r, mode=0, palette=p, extent=60.0, thin=False, pixels=n)
                        for c, r, p, n in objects]}


def test_episode_factors_from_records():
    records = {"q": _record("q", 0.25, 5, (3, "hard_negative", 7, 500), (9, "main", 7, 1200), (3, "distractor", 2, 80)),
               "s1": _record("s1", 0.0, 0, (3, "main", 2, 2000)),
               "s2": _record("s2", 0.0, 1, (3, "main", 4, 2000), (3, "distractor", 7, 90))}
    one = episode_factors(records, "q", ["s1"], 3)
    # the query's instance of class 3 is its largest: the hard negative of class 9 (500 px)
    assert one == {"appearance match": "no support matches", "scale ratio": "query < 1/2 support",
                   "photometric": "s >= 0.2", "hard negative": "present", "clutter": "4-6 blobs",
                   "query instance": "in another class's appearance", "thin part": "no"}
    assert episode_factors(records, "q", ["s2"], 3)["appearance match"] == "no support matches"  # s2's largest is 4
    assert episode_factors(records, "s2", ["s1"], 3)["scale ratio"] == "1-2"  # log2(2000/2000) = 0
    assert episode_factors(records, "s2", ["s1"], 3)["query instance"] == "main + distractor instances"
    assert episode_factors(records, "s1", ["s2"], 3)["query instance"] == "main object alone"
    for factor, value in one.items():
        assert value in FACTOR_BINS[factor][1] and factor in FACTORS
    with pytest.raises(ValueError, match="no visible object of class 5"):
        episode_factors(records, "q", ["s1"], 5)
