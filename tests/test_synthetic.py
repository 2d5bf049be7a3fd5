import numpy as np
import pytest

from fsslib.data import DatasetError, EpisodePool, SyntheticConfig, fold_classes, generate
from fsslib.data.sources import LABEL_IGNORE
from fsslib.data.synthetic import NUM_CLASSES, generate_image, read_meta


def test_images_are_a_pure_function_of_seed_split_index():
    config = SyntheticConfig.fast()
    stem, image, label = generate_image(config, "train", 7)
    stem2, image2, label2 = generate_image(config, "train", 7)
    assert stem == stem2 and np.array_equal(image, image2) and np.array_equal(label, label2)
    _, other, _ = generate_image(SyntheticConfig(seed=1, train_per_class=16, val_per_class=12), "train", 7)
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
