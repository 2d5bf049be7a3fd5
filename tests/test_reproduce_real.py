"""The real-data configuration set: ``reproduce --profile pascal5i`` runs the same pipeline on a
PASCAL-5i layout (a tiny fixture here, with the small backbone instead of ImageNet weights)."""
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image
from test_real_loaders import band_label, save_label, voc_classes, voc_stem  # tests/test_real_loaders.py

from fsslib.data import DatasetError
from fsslib.experiments import reproduce as reproduce_module
from fsslib.experiments.ablation import train_config
from fsslib.experiments.configs import real_data_recipe
from fsslib.experiments.reproduce import PROFILES, tables
from fsslib.experiments.tables.main import MAIN_VARIANTS

IMAGES = 40  # per split: every class in 8 images, enough for 5-shot episodes
SIZE = 160  # bands of 30 x 158 pixels: above the loader's 2048-pixel support threshold


def make_pascal(root):
    rng = np.random.default_rng(0)
    for sub in ("JPEGImages", "SegmentationClassAug", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for split, listing in (("train", "train_aug.txt"), ("val", "val.txt")):
        stems = [voc_stem(split, j) for j in range(IMAGES)]
        for j, stem in enumerate(stems):
            image = rng.integers(0, 256, size=(SIZE, SIZE, 3), dtype=np.uint8)
            Image.fromarray(image).save(root / "JPEGImages" / f"{stem}.jpg", quality=90)
            save_label(band_label(SIZE, SIZE, voc_classes(j)), root / "SegmentationClassAug" / f"{stem}.png",
                       palette=False)
        (root / "ImageSets" / "Segmentation" / listing).write_text("".join(f"{s}\n" for s in stems))


def test_real_recipes_follow_the_papers_and_drop_the_synthetic_head_sizes(monkeypatch):
    monkeypatch.delenv("FSSLIB_FAST", raising=False)
    panet = real_data_recipe("panet", "pascal5i", par_weight=1.0)
    assert (panet.model_args["backbone"], panet.model_args["weights"], panet.image_size) == ("vgg16", "imagenet", 417)
    assert (panet.optimizer, panet.lr, panet.weight_decay, panet.steps, panet.batch_size) == ("sgd", 1e-3, 5e-4, 30_000, 1)
    assert (panet.schedule, panet.step_size, panet.gamma) == ("step", 10_000, 0.1)
    ssp = real_data_recipe("ssp", "coco20i")
    assert (ssp.model_args["backbone"], ssp.steps, ssp.batch_size, ssp.step_size, ssp.weight_decay) == \
        ("resnet50", 6_000, 4, 2_000, 5e-4)

    # Epochs become steps: 200 epochs over a fold's (image, class) pairs, in batches of 4.
    monkeypatch.setattr("fsslib.experiments.configs.training_queries", lambda source, fold: 4_000)
    mspf = next(v for v in MAIN_VARIANTS if v.model == "mspf")
    config = real_data_recipe("mspf", "pascal5i", source=object(), **mspf.model_args)
    assert config.steps == 200 * 4_000 // 4 and config.model_args["width"] == 256  # not the synthetic 64
    assert "support_resize" not in config.model_args and config.model_args["backbone"] == "resnet50"
    with pytest.raises(ValueError, match="benchmark must be one of"):
        real_data_recipe("ssp", "fss1000")


def test_reproduce_runs_the_same_pipeline_on_a_pascal5i_layout(tmp_path, monkeypatch):
    make_pascal(tmp_path / "data" / "VOCdevkit" / "VOC2012")
    monkeypatch.setenv("FSSLIB_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("FSSLIB_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("FSSLIB_FIGURES", str(tmp_path / "figures"))
    monkeypatch.setenv("FSSLIB_FAST", "1")
    # No ImageNet weights offline: the small backbone stands in; the recipes are otherwise the papers'.
    small = {"model_args": {"backbone": "smallcnn", "weights": None}}
    profile = replace(PROFILES["pascal5i"], folds=(0,), episodes=4, image_size=96, recipe=small)
    monkeypatch.setitem(reproduce_module.PROFILES, "pascal5i", profile)
    main_table = next(t for t in tables("pascal5i") if t.key == "main")  # DINOv2-proto included
    monkeypatch.setattr(reproduce_module, "tables", lambda benchmark="synthetic": [main_table])

    assert reproduce_module.reproduce("pascal5i") == []
    text = (tmp_path / "results" / "pascal5i" / "tables.md").read_text()
    assert "pascal5i, the papers' recipes" in text and "a different dataset" not in text
    for variant in main_table.variants:
        assert f"| {variant.name} |" in text
        config = train_config(variant, 0, 0, recipe_args=profile.recipe, benchmark="pascal5i")
        run = tmp_path / "runs" / "ablation" / "pascal5i"
        assert config.benchmark == "pascal5i" and config.model_args["backbone"] == "smallcnn"
        assert any(run.glob(f"{variant.model}-*-fold0-seed0/model.pt")), variant.name
    for figure in ("table_main.png", "learning_curves.png", "qualitative_predictions.png"):
        assert (tmp_path / "figures" / "pascal5i" / figure).exists()


def test_a_missing_dataset_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("FSSLIB_DATA", str(tmp_path / "nothing"))
    monkeypatch.setenv("FSSLIB_RUNS", str(tmp_path / "runs"))
    with pytest.raises(DatasetError, match="VOC2012"):
        reproduce_module.reproduce("pascal5i")
