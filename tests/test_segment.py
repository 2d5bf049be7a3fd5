"""`python -m fsslib segment`: your own images, a trained run or training-free prototype matching."""
import numpy as np
import pytest
import torch
from PIL import Image

from fsslib.__main__ import main
from fsslib.analysis.segment import (
    Support,
    box_mask,
    read_image,
    read_mask,
    run_segmenter,
    segment,
    training_free_segmenter,
    write_example,
)
from fsslib.data import EpisodePool
from fsslib.engine.episodic import train_fewshot
from fsslib.engine.trainer import TrainConfig


@pytest.fixture
def example(synthetic_source, tmp_path):
    return write_example(synthetic_source, tmp_path / "mine", fold=0, queries=2)


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_example_files_are_plain_images_of_one_novel_class(example, synthetic_source):
    image = read_image(example["support"])
    mask = read_mask(example["support_mask"], image.shape[:2])
    first = sorted(EpisodePool.for_fold(synthetic_source, 0, "val").queries[example["class_id"]])[0]
    stored_image, label = synthetic_source.load(first)
    assert np.array_equal(image, stored_image) and np.array_equal(mask, label == example["class_id"])
    assert len(example["queries"]) == 2 and all(p.exists() for p in example["queries"])


def test_box_is_a_slice_and_must_fit_its_image():
    mask = box_mask((1, 2, 4, 3), (5, 6))
    assert mask.sum() == 3 and mask[2, 1:4].all() and not mask[2, 4] and not mask[3].any()
    with pytest.raises(ValueError, match=r"does not fit the support image \(6x5 pixels\)"):
        box_mask((0, 0, 7, 3), (5, 6))
    with pytest.raises(ValueError, match="x0 < x1"):
        box_mask((3, 0, 3, 3), (5, 6))


def test_masks_are_checked_against_their_image(tmp_path):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "empty.png")
    Image.fromarray(np.full((8, 8), 7, np.uint8)).save(tmp_path / "full.png")
    Image.fromarray(np.eye(8, 9, dtype=np.uint8)).save(tmp_path / "wide.png")
    part = np.zeros((8, 8, 4), np.uint8)
    part[2:4, 2:4, 0] = 200
    Image.fromarray(part, mode="RGBA").save(tmp_path / "rgba.png")
    assert read_mask(tmp_path / "rgba.png", (8, 8)).sum() == 4  # any non-zero colour is object
    assert read_mask("0,0,2,2", (8, 8)).sum() == 4
    with pytest.raises(ValueError, match="empty.png marks no object pixel"):
        read_mask(tmp_path / "empty.png", (8, 8))
    with pytest.raises(ValueError, match="full.png marks every pixel .* as object"):
        read_mask(tmp_path / "full.png", (8, 8))
    with pytest.raises(ValueError, match=r"wide.png: 9x8 pixels, but the support image is 8x8"):
        read_mask(tmp_path / "wide.png", (8, 8))
    assert not read_mask(tmp_path / "empty.png", (8, 8), allow_empty=True).any()  # a query's truth may be empty
    with pytest.raises(FileNotFoundError, match="nothing.png: no such file .*box x0,y0,x1,y1"):
        read_mask(tmp_path / "nothing.png", (8, 8))


def test_unreadable_images_are_named(tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ValueError, match="notes.png: not a readable image file"):
        read_image(tmp_path / "notes.png")
    with pytest.raises(FileNotFoundError, match="missing.jpg: no such file"):
        read_image(tmp_path / "missing.jpg")


def test_prediction_has_the_query_size_and_matching_finds_the_support_itself(example):
    """Training-free matching of a support with itself: whatever the weights, the object's own
    cells are nearest its prototype, so the prediction covers the object far more than the background
    (measured over 4 classes x 3 weight seeds: object 0.77-0.97 covered, background 0.07-0.28)."""
    torch.manual_seed(0)
    segmenter = training_free_segmenter(weights=None, image_size=128, device="cpu")
    image = read_image(example["support"])
    mask = read_mask(example["support_mask"], image.shape[:2])
    query = np.ascontiguousarray(image[:100, :90])  # a query of another size than the support
    (itself, cropped) = segment(segmenter, [Support(image, mask)], [image, query])
    assert cropped.mask.shape == (100, 90) and cropped.mask.dtype == bool
    object_hit, background_hit = itself.mask[mask].mean(), itself.mask[~mask].mean()
    assert object_hit - background_hit > 0.4, (object_hit, background_hit)
    assert set(itself.output) >= {"logits", "prototypes"} and itself.batch["support_masks"].shape == (1, 1, 128, 128)


def test_a_region_that_vanishes_at_the_network_size_is_an_error(example):
    segmenter = training_free_segmenter(weights=None, image_size=32, device="cpu")
    image = read_image(example["support"])
    tiny = box_mask((10, 10, 11, 11), image.shape[:2])
    with pytest.raises(ValueError, match="vanishes when the image is resized to 32x32"):
        segment(segmenter, [Support(image, tiny, "support.png")], [image])


def test_cli_writes_a_mask_and_an_overlay_per_query(example, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["segment", "--support", str(example["support"]), "--support-mask", str(example["support_mask"]),
            "--query", str(example["queries"][0]), "--query", str(example["queries"][1]),
            "--weights", "random", "--device", "cpu", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "training-free ProtoNet on smallcnn (random weights), 128px, 1-shot, on cpu" in printed
    for query in example["queries"]:
        mask = np.asarray(Image.open(out / f"{query.stem}-mask.png"))
        overlay = np.asarray(Image.open(out / f"{query.stem}-overlay.png"))
        assert mask.shape == read_image(query).shape[:2] and set(np.unique(mask)) <= {0, 255}
        assert overlay.shape == read_image(query).shape
        assert f"{query}: object" in printed
    panel = np.asarray(Image.open(out / "overview.png"))
    assert panel.shape[0] == 160 and panel.shape[1] == 3 * 160 + 2 * 8  # support, two queries (square images)


def test_cli_takes_a_box_and_two_shots(example, tmp_path):
    out = tmp_path / "out"
    argv = ["segment", "--support", str(example["support"]), "--support-mask", "10,10,60,60",
            "--support", str(example["queries"][1]), "--support-mask", "5,5,50,40",
            "--query", str(example["queries"][0]), "--weights", "random", "--device", "cpu", "--out", str(out)]
    assert main(argv) == 0
    assert (out / "query-1-overlay.png").exists()


@pytest.mark.parametrize("change, message", [
    (lambda a, e, t: a.__setitem__(a.index("--support-mask") + 1, "0,0,999,10"), "does not fit support image"),
    (lambda a, e, t: a.__setitem__(a.index("--query") + 1, str(t / "none.png")), "none.png: no such file"),
    (lambda a, e, t: a.__setitem__(a.index("--device") + 1, "cuda" if not torch.cuda.is_available() else "cpux"),
     "device"),
    (lambda a, e, t: a.extend(["--support", str(e["support"])]), "each --support needs its --support-mask"),
    (lambda a, e, t: a.extend(["--run", str(t / "no-run")]), "no run at"),
])
def test_cli_bad_input_gets_one_clear_line(example, tmp_path, capsys, change, message):
    argv = ["segment", "--support", str(example["support"]), "--support-mask", str(example["support_mask"]),
            "--query", str(example["queries"][0]), "--weights", "random", "--device", "cpu",
            "--out", str(tmp_path / "out")]
    change(argv, example, tmp_path)
    assert main(argv) == 2
    assert message in error_line(capsys)


def test_a_trained_run_segments_at_its_own_size(example, synthetic_source, tmp_path, monkeypatch):
    monkeypatch.setenv("FSSLIB_FAST", "1")
    config = TrainConfig(model="pfenet", steps=2, batch_size=2, image_size=64)
    train_fewshot(config, tmp_path / "run", progress=False, source=synthetic_source)
    segmenter = run_segmenter(tmp_path / "run", device="cpu")
    assert segmenter.image_size == 64 and "pfenet" in segmenter.description
    image = read_image(example["support"])
    (result,) = segment(segmenter, [Support(image, read_mask(example["support_mask"], image.shape[:2]))],
                        [read_image(example["queries"][0])])
    prior = result.output["prior"]  # PFENet's prior mask, for notebook 11 to show
    assert prior.shape[:2] == (1, 1) and 0 <= prior.min() and prior.max() <= 1
    assert result.mask.shape == read_image(example["queries"][0]).shape[:2]


def test_prepare_writes_example_files_that_segment_reads(synthetic_source, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FSSLIB_FAST", "1")
    monkeypatch.setenv("FSSLIB_DATA", str(synthetic_source.root.parent))
    assert main(["prepare", "synthetic", "--examples", str(tmp_path / "ex")]) == 0
    assert "as plain image files" in capsys.readouterr().out
    argv = ["segment", "--support", str(tmp_path / "ex/support.png"), "--support-mask", str(tmp_path / "ex/support-mask.png"),
            "--query", str(tmp_path / "ex/query-1.png"), "--query-mask", str(tmp_path / "ex/query-1-truth.png"),
            "--weights", "random", "--out", str(tmp_path / "out")]
    assert main(argv) == 0 and (tmp_path / "out/query-1-mask.png").exists()
    printed = capsys.readouterr().out
    predicted = np.asarray(Image.open(tmp_path / "out/query-1-mask.png")) > 0
    truth = np.asarray(Image.open(tmp_path / "ex/query-1-truth.png")) > 0
    expected = (predicted & truth).sum() / (predicted | truth).sum()
    assert f"IoU with its true mask {expected:.2f}" in printed
